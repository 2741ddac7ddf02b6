"""Export the SST-2 models to packed directories and measure them side by side in one run.

1. Exports every compressed run under ``--runs`` (made by ``benchmarks/compress_sst2.py``) and the
   teacher itself to packed directories; the XTC 3-layer binary model also with ``--prune-vocab``
   (SST-2 train + dev tokens) and 128 positions, and its first stage (the 3-layer FP32 student).
2. Agreement: the packed runtime's predictions on the full SST-2 dev set against the training-time
   model (the run's ``model/`` in PyTorch, FP32), and both accuracies.
3. ``compactbert bench``: every packed model, the FP32 teacher in PyTorch eager, the teacher in ONNX
   Runtime FP32 and with ONNX Runtime's dynamic int8 quantization: latency at batch 1 (p50/p90),
   throughput at batch 32 x 128 tokens, peak memory, bytes on disk, accuracy — one run, each model
   in its own process, ``--threads`` threads.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_sst2.py --teacher runs/sst2-teacher --runs runs/compress-sst2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "bench_sst2"
SMALLEST = "xtc-layer-reduction-binary"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(REPO / "runs" / "sst2-teacher"))
    p.add_argument("--runs", nargs="+", default=[str(REPO / "runs" / "compress-sst2")],
                   help="folders of compress runs; a run name seen before gets the folder's suffix "
                        "(runs/compress-sst2-full/xtc-ternary -> xtc-ternary-full)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(REPO / "runs" / "packed-sst2"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-latency", type=int, default=50)
    p.add_argument("--n-throughput", type=int, default=10)
    p.add_argument("--results", default=str(RESULTS))
    return p.parse_args(argv)


def agreement(run_model: Path, packed: Path, examples) -> dict[str, float]:
    """Same predicted class, runtime vs training-time model, on ``examples``.

    The training-time model is the run's ``model/`` in PyTorch, evaluated two ways: in FP32, and
    with bf16 autocast as ``compactbert eval RUN`` evaluates it (the run's own setting).
    """
    import numpy as np

    from compactbert.api import load_saved, packed_logits
    from compactbert.data.batching import encode
    from compactbert.train.loop import predict

    net, tok = load_saved(run_model, "model")
    feats = encode(examples, tok, 128)
    labels = np.asarray([e.label for e in examples])
    got = packed_logits(packed, examples, 128).numpy().argmax(1)
    out = {"acc_runtime": float((got == labels).mean())}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        ref = predict(net, feats, batch_size=64, bf16=bf16)
        ref = np.stack([ref[i] for i in range(len(examples))]).argmax(1)
        out[f"agree_{name}"] = float((ref == got).mean())
        out[f"acc_train_time_{name}"] = float((ref == labels).mean())
    return out


_OP_GROUPS = [  # (label, substrings of profiler event names)
    ("linear products (oneDNN bf16, fused bias/GELU/residual)", ("mkldnn::_linear_pointwise",)),
    ("int8 products (oneDNN qlinear)", ("onednn::qlinear",)),
    ("attention (SDPA)", ("scaled_dot_product",)),
    ("LayerNorm", ("layer_norm",)),
    ("compiled epilogues / activation quantization", ("CompiledFxGraph",)),
    ("embedding lookup and sum", ("=aten::index", "=aten::add", "=aten::copy_")),
    ("F.linear (MKL)", ("=aten::addmm", "=aten::mm")),
]  # "=name": that op exactly; otherwise any event whose name contains the text


def profile_shares(packed: Path, batch: int = 32, seq: int = 128) -> list[tuple[str, float]]:
    """Share of one thread's CPU time per kind of op for one forward at (batch, seq)."""
    import torch
    from torch.profiler import profile

    from compactbert.runtime import load

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = load(packed)
        ids = torch.randint(1000, 20000, (batch, seq))
        with torch.inference_mode():
            for _ in range(3):
                m(ids)
            with profile() as prof:
                for _ in range(5):
                    m(ids)
    finally:
        torch.set_num_threads(threads)
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    shares = []
    for label, keys in _OP_GROUPS:
        t = sum(v for k, v in events if any(k == x[1:] if x.startswith("=") else x in k for x in keys))
        if t / total >= 0.01:
            shares.append((label, t / total))
    shares.append(("other", 1.0 - sum(x for _, x in shares)))
    return shares


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import compactbert
    from compactbert import api
    from compactbert.data.sources import load_examples

    teacher, out = Path(args.teacher), Path(args.out)
    dev = load_examples("sst2", "dev", args.data)
    jobs = [("teacher-packed", teacher, {})]
    first = Path(args.runs[0]).name
    for folder in map(Path, args.runs):
        suffix = folder.name[len(first):] if folder.name.startswith(first) else f"-{folder.name}"
        for run in sorted(folder.iterdir()):
            if (run / "model").is_dir() and (run / "eval.json").is_file():
                name = run.name if not any(j[0] == run.name for j in jobs) else run.name + suffix
                jobs.append((name, run, {}))
                if run.name == SMALLEST:
                    jobs.append((f"{name}-vocab", run, {"prune_vocab": True, "max_positions": 128}))
                    stage0 = sorted((run / "stages").glob("0-*"))
                    if stage0 and (stage0[0] / "model").is_dir():  # XTC step 1: the 3-layer FP32 student
                        jobs.append((f"{name}-3L-fp32".replace("-binary", ""), stage0[0] / "model", {}))
    packed, agree, predicted = [], {}, {}
    for name, run, kw in jobs:
        target = out / name
        api.export(run, target, task="sst2", data=args.data, **kw)
        packed.append(str(target))
        agree[name] = agreement(Path(api.model_source(run)), target, dev)
        if not kw:  # what `compactbert size RUN` predicted for the packed directory
            predicted[name] = api.size(run, out=out / f"{name}.size.json")["predicted_files_bytes"]
        print(f"{name}: exported; {agree[name]}", flush=True)

    result = api.bench(packed, str(teacher), task="sst2", data=args.data, threads=args.threads,
                       out=out / "bench.json", n_latency=args.n_latency, n_throughput=args.n_throughput)
    teacher_st = (teacher / "model" / "model.safetensors").stat().st_size
    models = {m["name"]: m for m in result["models"]}
    fp32 = models[result["ratios"]["baselines"]["fp32"]]
    ort8 = models.get(result["ratios"]["baselines"].get("ort_int8") or "")
    rows = ["| model | dev acc (runtime) | same class as training-time model, FP32 / bf16 eval | bytes on disk | "
            "disk / `size` prediction | x smaller than FP32 safetensors | "
            "bs1 p50 / p90 ms | bs32 seq/s | x FP32 eager (bs32 / bs1) | x ORT int8 (bs32) | peak RSS MB | kernels |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in result["models"]:
        pname = Path(m.get("path") or "").name
        a = agree.get(pname)
        pred = f"{m['file_bytes'] / predicted[pname]:.3f}" if pname in predicted else ""
        acc = "" if m.get("accuracy") is None else f"{m['accuracy'] * 100:.2f}%"
        same = "" if a is None else (
            f"{a['agree_fp32'] * 100:.2f}% / {a['agree_bf16'] * 100:.2f}% "
            f"(acc {a['acc_train_time_fp32'] * 100:.2f}% / {a['acc_train_time_bf16'] * 100:.2f}%)"
        )
        vs_ort = "" if ort8 is None else f"{m['throughput_bs32'] / ort8['throughput_bs32']:.2f}x"
        vs_fp32 = (f"{m['throughput_bs32'] / fp32['throughput_bs32']:.2f}x / "
                   f"{fp32['latency_ms_bs1_p50'] / m['latency_ms_bs1_p50']:.2f}x")
        rows.append(
            f"| {m['name']} | {acc} | {same} | {m['file_bytes']:,} | {pred} | {teacher_st / m['file_bytes']:.1f}x | "
            f"{m['latency_ms_bs1_p50']:.1f} / {m['latency_ms_bs1_p90']:.1f} | {m['throughput_bs32']:.1f} | "
            f"{vs_fp32} | {vs_ort} | {m.get('peak_rss_mb', 0):.0f} | {m.get('kernels', '')} |"
        )
    # the fastest packed model within 1 point of the teacher, and where its time goes
    t_acc = models["teacher-fp32"]["accuracy"] if "teacher-fp32" in models else None
    close = [m for m in result["models"] if m.get("path") and m.get("accuracy") is not None
             and t_acc is not None and m["accuracy"] >= t_acc - 0.01 and Path(m["path"]).name != "teacher-packed"]
    profile_text = ""
    if close:
        best = max(close, key=lambda m: m["throughput_bs32"])
        shares = profile_shares(Path(best["path"]))
        profile_text = (
            f"**Fastest model within 1 point of the teacher: {best['name']}** ({best['accuracy'] * 100:.2f}%, "
            f"{best['throughput_bs32'] / fp32['throughput_bs32']:.2f}x the FP32 eager throughput at batch 32, "
            f"{fp32['latency_ms_bs1_p50'] / best['latency_ms_bs1_p50']:.2f}x lower batch-1 latency, "
            + (f"{best['throughput_bs32'] / ort8['throughput_bs32']:.2f}x ONNX Runtime int8). " if ort8 else ". ")
            + "Where its time goes (one forward at batch 32 x 128, one thread, torch.profiler self CPU time): "
            + ", ".join(f"{label} {share * 100:.0f}%" for label, share in shares) + ".\n"
        )
    body = f"""## Packed models: size on disk, speed and agreement on SST-2 (`benchmarks/bench_sst2.py`)

Measured {datetime.now().strftime("%Y-%m-%d")} on {cpu_name()}, {args.threads} threads, torch {torch.__version__},
compactbert {compactbert.__version__}; every model in its own process, one after the other, in one run.
Command: `python benchmarks/bench_sst2.py {" ".join(sys.argv[1:] if argv is None else argv)}`

Latency: batch 1, 128 tokens, {args.n_latency} runs after warm-up; throughput: batch 32 x 128 tokens,
{args.n_throughput} runs. Inputs are real dev sentences joined into 128-token rows (no padding).
Accuracy is on the full SST-2 dev set (872). "x smaller" compares the whole packed directory (weights,
manifest, config, tokenizer) with the FP32 teacher's `model.safetensors` ({teacher_st:,} bytes).
Agreement: the packed runtime's predicted class against the run's model in PyTorch, evaluated in FP32
and with bf16 autocast (as `compactbert eval RUN` does), same dev set; that model's accuracy in brackets.
"disk / `size` prediction": the packed directory's bytes over `compactbert size RUN`'s
`predicted_files_bytes` (weights + xz tokenizer; the JSON files are the rest). The vocabulary-pruned
export has no such prediction (`size` sizes the run, whose vocabulary is whole).

{chr(10).join(rows)}

{profile_text}"""
    (out / "agreement.json").write_text(json.dumps(agree, indent=1))
    publish(body, args.results, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
