"""Sentence-embedding models on every CPU engine a user would pick, in interleaved rounds: STS-B test
Spearman (cosine), bytes on disk, encode throughput (batch 32 of real sentences) and batch-1 latency.

Rows:

* ``st-fp32``: sentence-transformers' own PyTorch path (``SentenceTransformer(folder).encode``) on
  the dense all-MiniLM-L6-v2;
* ``ort-int8``: the dense model exported to ONNX (token states out) and quantized by ONNX Runtime's
  dynamic int8 (per-channel int8 weights, uint8 activations per call): what sentence-transformers'
  ``export_dynamic_quantized_onnx_model`` does through optimum (optimum is not installed here: it
  would replace this environment's torch and transformers, so the same quantization runs directly);
* ``ov-int8``: the ONNX model through OpenVINO with NNCF post-training static int8 calibrated on 300
  STS-B training sentences: what ``export_static_quantized_openvino_model`` does through
  optimum-intel (same reason);
* ``ov-default``: the dense ONNX model on OpenVINO at its default precision for this CPU;
* every ``--packed`` directory through ``compactbert.load(DIR).encode`` (its fastest backend, or
  ``--backend``), the dense model packed (``compactbert export minilm-l6``) always among them.

Every engine tokenizes, sorts by length, pads to the longest in the batch, pools over the attention
mask and L2-normalises, as sentence-transformers does; the timings include all of that. Each round
measures every engine once (order rotated per round); figures are medians with their min-max and
the ratios are taken round by round against the fastest sentence-transformers-style baseline.

Usage (from the repository root)::

    .venv/bin/python benchmarks/embed_engines.py --packed runs/embed-int8/packed runs/embed-ternary/packed
    .venv/bin/python benchmarks/embed_engines.py --rounds 1 --n-sentences 64 --results ''   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "embed_engines"
BASELINES = ("st-fp32", "ort-int8", "ov-int8", "ov-default")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6", help="the dense sentence-transformers model (folder or alias)")
    p.add_argument("--packed", nargs="*", default=[], help="packed embedding models to measure too")
    p.add_argument("--backend", default="auto", help="backend of the packed models (auto, compactbert, onnxruntime, openvino)")
    p.add_argument("--baselines", default=",".join(BASELINES))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-sentences", type=int, default=512, help="real sentences per throughput measurement")
    p.add_argument("--n-latency", type=int, default=40)
    p.add_argument("--max-eval-samples", type=int, default=None, help="STS-B test pairs to score (default: all)")
    p.add_argument("--results", default=str(RESULTS))
    return p.parse_args(argv)


class OnnxEncoder:
    """Mean-pooled, normalised sentence embeddings from an ONNX / OpenVINO graph with token states out."""

    def __init__(self, run, names: list[str], tokenizer, max_length: int = 256):
        self.run, self.names, self.tokenizer, self.max_length = run, names, tokenizer, max_length

    def encode(self, sentences: list[str], batch_size: int = 32) -> np.ndarray:
        lens = [len(x) for x in self.tokenizer(sentences, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(lens, kind="stable")
        out = np.zeros((len(sentences), 0), dtype=np.float32)
        chunks = []
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            feed = self.tokenizer([sentences[i] for i in idx], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="np")
            feed = {k: v.astype(np.int64) for k, v in feed.items() if k in self.names}
            states = self.run(feed)
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (states * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            chunks.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
        out = np.zeros((len(sentences), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)
        return out


def ort_encoder(path: Path, tokenizer, threads: int) -> OnnxEncoder:
    from compactbert.export.onnx import ort_session

    sess = ort_session(path, threads)
    names = [i.name for i in sess.get_inputs()]
    out = sess.get_outputs()[0].name
    return OnnxEncoder(lambda feed: sess.run([out], feed)[0], names, tokenizer)


def ov_encoder(path: Path, tokenizer, threads: int) -> OnnxEncoder:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]
    return OnnxEncoder(lambda feed: np.asarray(request.infer(feed)[compiled.outputs[0]]), names, tokenizer)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else Path(path).stat().st_size


def build_engines(args, tmp: Path, calib: list[str]) -> dict[str, tuple]:
    """name -> (encode function, bytes on disk, what runs)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import compactbert
    from compactbert.export.onnx import export_onnx, quantize_onnx_int8
    from compactbert.models import resolve_model
    from compactbert.workflows.export import export

    torch.set_num_threads(args.threads)
    folder = Path(resolve_model(args.model))
    tok = AutoTokenizer.from_pretrained(folder)
    wanted = [b for b in args.baselines.split(",") if b]
    engines: dict[str, tuple] = {}
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    if "st-fp32" in wanted:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu")
        engines["st-fp32"] = (lambda s, bs: st.encode(s, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True),
                              weights, "sentence-transformers PyTorch FP32 (dense all-MiniLM-L6-v2)")
    onnx_dir = tmp / "onnx"
    fp32 = export_onnx(AutoModel.from_pretrained(folder).eval(), tok, onnx_dir, output="last_hidden_state")
    if "ort-int8" in wanted:
        q = quantize_onnx_int8(fp32, tmp / "model_qint8.onnx")
        enc = ort_encoder(q, tok, args.threads)
        engines["ort-int8"] = (enc.encode, dir_bytes(q), "ONNX Runtime dynamic int8 (per-channel weights)")
    if "ov-int8" in wanted:
        from compactbert.bench.plan import openvino_int8_ir

        feeds = [{k: v.astype(np.int64) for k, v in tok(s, return_tensors="np").items()} for s in calib]
        xml = openvino_int8_ir(fp32, tmp / "ov-int8" / "model.xml", feeds)
        enc = ov_encoder(xml, tok, args.threads)
        engines["ov-int8"] = (enc.encode, dir_bytes(xml.parent), "OpenVINO + NNCF static int8 (300 STS-B train sentences)")
    if "ov-default" in wanted:
        enc = ov_encoder(fp32, tok, args.threads)
        engines["ov-default"] = (enc.encode, dir_bytes(fp32), "OpenVINO, its default precision on this CPU")
    packed = [export(args.model, tmp / "packed-dense")] + [Path(p) for p in args.packed]
    for p in packed:
        m = compactbert.load(p, backend=args.backend, threads=args.threads)
        name = "compactbert dense (fp16)" if p == packed[0] else f"compactbert {p.parent.name if p.name == 'packed' else p.name}"
        engines[name] = (lambda s, bs, m=m: np.asarray(m.encode(s, batch_size=bs)), dir_bytes(p),
                         m.describe())
    return engines


def time_engine(fn, sentences: list[str], single: list[str]) -> tuple[float, float]:
    """(sentences/s at batch 32 over ``sentences``, p50 ms of one sentence)."""
    fn(sentences[:64], 32)
    t0 = time.perf_counter()
    fn(sentences, 32)
    thr = len(sentences) / (time.perf_counter() - t0)
    lat = []
    for s in single:
        t1 = time.perf_counter()
        fn([s], 1)
        lat.append(1e3 * (time.perf_counter() - t1))
    return thr, statistics.median(lat)


def score(fn, examples) -> float:
    from compactbert.embedding.evaluate import similarity_metrics

    texts = list(dict.fromkeys(t for ex in examples for t in (ex.text_a, ex.text_b)))
    emb = np.asarray(fn(texts, 64))
    row = {t: i for i, t in enumerate(texts)}
    a = emb[[row[ex.text_a] for ex in examples]]
    b = emb[[row[ex.text_b] for ex in examples]]
    return similarity_metrics(a, b, [ex.label for ex in examples])["spearman_cosine"]


def run_rounds(engines: dict, sentences: list[str], single: list[str], rounds: int) -> dict[str, dict]:
    names = list(engines)
    res = {n: {"thr": [], "lat": []} for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            thr, lat = time_engine(engines[n][0], sentences, single)
            res[n]["thr"].append(thr)
            res[n]["lat"].append(lat)
            print(f"round {r + 1} {n}: {thr:.1f} sent/s, bs1 {lat:.2f} ms", flush=True)
    return res


def table(engines, res, scores, load, args) -> str:
    base = [n for n in BASELINES if n in res]
    best = max(base, key=lambda n: statistics.median(res[n]["thr"])) if base else None
    lines = ["| model (engine) | STS-B test | size on disk | x smaller | sent/s bs32 | bs1 p50 ms | "
             f"x {best or '-'} (bs32, per round) | x {best or '-'} (bs1) | runs |", "|---|---|---|---|---|---|---|---|---|"]
    dense_bytes = engines["st-fp32"][1] if "st-fp32" in engines else None
    for n, (_, size, what) in engines.items():
        t, lt = res[n]["thr"], res[n]["lat"]
        ratio = lat_ratio = "-"
        if best:
            rs = [a / b for a, b in zip(t, res[best]["thr"])]
            ls = [b / a for a, b in zip(lt, res[best]["lat"])]
            ratio = f"{statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})"
            lat_ratio = f"{statistics.median(ls):.2f}x ({min(ls):.2f}-{max(ls):.2f})"
        smaller = f"{dense_bytes / size:.1f}x" if dense_bytes else "-"
        lines.append(f"| {n} | {scores[n]:.2f} | {size / 1e6:.2f} MB | {smaller} | {statistics.median(t):.1f} "
                     f"({min(t):.1f}-{max(t):.1f}) | {statistics.median(lt):.2f} ({min(lt):.2f}-{max(lt):.2f}) | {ratio} | "
                     f"{lat_ratio} | {what} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from compactbert.data.sources import load_examples

    test = load_examples("stsb", "test", args.data, args.max_eval_samples, 0)
    train = load_examples("stsb", "train", args.data, None, 0)
    calib = [ex.text_a for ex in train[:300]]
    pool = list(dict.fromkeys(t for ex in test for t in (ex.text_a, ex.text_b)))
    sentences = pool[: args.n_sentences]
    single = pool[: args.n_latency]
    load = {"start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="cb-embed-") as tmp:
        engines = build_engines(args, Path(tmp), calib)
        scores = {n: score(lambda s, bs, f=e[0]: f(s, bs), test) for n, e in engines.items()}
        for n, s in scores.items():
            print(f"{n}: STS-B test spearman {s:.2f}", flush=True)
        res = run_rounds(engines, sentences, single, args.rounds)
        load["end"] = os.getloadavg()[0]
        body = [
            "## Sentence-embedding models on every engine, interleaved rounds (`benchmarks/embed_engines.py`)",
            "",
            f"Measured {datetime.now():%Y-%m-%d %H:%M} on {cpu_name()}, {args.threads} threads; 1-minute load "
            f"{load['start']:.2f} before, {load['end']:.2f} after. Command: "
            f"`python benchmarks/embed_engines.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
            f"STS-B test (n={len(test)}) Spearman x 100 of cosine similarities; throughput: {len(sentences)} real STS-B "
            f"sentences encoded at batch 32 (tokenization, length sorting, pooling, normalisation included); latency: "
            f"{len(single)} single sentences; {args.rounds} interleaved rounds, median (min-max), ratios per round.",
            "",
            table(engines, res, scores, load, args),
        ]
    publish("\n".join(body), args.results or None, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
