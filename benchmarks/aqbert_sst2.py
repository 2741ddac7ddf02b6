"""AQ-BERT on SST-2: per-group mixed precision (DNAS search) vs Hessian allocation vs uniform widths.

For each budget (average bits over the encoder's Linear weights, codes + per-row scales) this runs,
with the same distillation, number of steps and seed:

* ``uniform``: ``recipes/aq-bert-uniform.yaml`` at that many bits (groups of 6 rows, per-row
  asymmetric; its exact targeted bytes become the budget of the two others);
* ``dnas``: ``recipes/aq-bert.yaml`` (search stage, then QAT + KD with the widths fixed) at the
  uniform model's bytes;
* ``hessian``: ``recipes/aq-bert-hessian.yaml`` at the same bytes.

Candidates are {0, 2, 4} up to 3 bits and {0, 2, 4, 8} above (AQ-BERT adds 8 for larger sizes). Each
stage runs ``--steps`` steps; the search's schedule (n0, n1 in epochs, eta per epoch, given by the
recipe for its 3-epoch stage) is rescaled to the epochs those steps make, so that its shape is
the recipe's. The first seed runs every budget, further seeds the smallest budget only. Embeddings,
biases, LayerNorms and the classifier stay float in every row (the packed bytes include them).

``--step-cost`` only measures the cost of one search step (weight step + architecture step)
against one QAT + KD step (uniform 3-bit, same activations and distillation), on the same batches,
1 thread, in interleaved windows (the machine is shared): the issue's limit is 2x.

Usage (from the repository root)::

    .venv/bin/python benchmarks/aqbert_sst2.py --step-cost --teacher runs/sst2-teacher
    .venv/bin/python benchmarks/aqbert_sst2.py --teacher runs/sst2-teacher --budgets 4 3 2 --steps 2000 \\
        --seeds 42 7 --out runs/aqbert-sst2
    # an ablation of the search's settings: DNAS rows only, tagged, beside the others
    .venv/bin/python benchmarks/aqbert_sst2.py --teacher runs/sst2-teacher --budgets 2 --steps 2000 \\
        --methods dnas --set stages.0.methods.0.lambda_size=5 --tag -lambda5 --out runs/aqbert-sst2

Each run's chosen widths are in its ``model/compression.json`` (``widths_from_spec``); the table
summarises them per matrix kind.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "aqbert_sst2"
RECIPES = {"uniform": "aq-bert-uniform", "dnas": "aq-bert", "hessian": "aq-bert-hessian"}
ROW_GROUP = 6
SEARCH_EPOCHS_KEYS = ("n0", "n1")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=str(REPO / "runs" / "sst2-teacher"), help="fine-tuned MiniLM-L6 SST-2 run")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(REPO / "runs" / "aqbert-sst2"), help="parent of the runs (replaced)")
    p.add_argument("--budgets", type=float, nargs="+", default=[4.0, 3.0, 2.0], help="average bits of the uniform rows")
    p.add_argument("--steps", type=int, default=2000, help="steps per stage (two stages per run)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="first: every budget; others: smallest budget")
    p.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--set", dest="extra", action="append", default=[], help="extra override for the dnas runs "
                   "(e.g. stages.0.methods.0.lambda_size=3; the ablation)")
    p.add_argument("--tag", default="", help="suffix of the run folders and table rows (an ablation)")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--table-only", action="store_true", help="run nothing; table the runs already in --out")
    p.add_argument("--note", default="", help="a paragraph printed under the command (how the rows were run)")
    p.add_argument("--widths", nargs="*", default=[], help="widths pictures (PNG, from `compactbert report`) to show")
    p.add_argument("--step-cost", action="store_true", help="only measure a search step against a QAT + KD step")
    p.add_argument("--timing-steps", type=int, default=12)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- runs
def targeted_shapes(teacher: str) -> dict[str, tuple[int, int]]:
    """Shapes of the encoder's Linear weights (what the budgets cover)."""
    from compactbert.api import load_for_task, quiet_transformers
    from compactbert.nn.surgery import encoder_linear_patterns, match_modules

    with quiet_transformers():
        net, _ = load_for_task(teacher, "sst2")
    found = match_modules(net, encoder_linear_patterns(net))
    return {n: (int(m.weight.shape[0]), int(m.weight.shape[1])) for n, m in found.items()}


def uniform_bytes(shapes: dict[str, tuple[int, int]], bits: int) -> float:
    from compactbert.methods.mixed_precision.budget import GroupTable

    table = GroupTable.build(shapes, ROW_GROUP, [bits])
    return float(table.costs.sum())


def run_overrides(method: str, bits: int, budget_bytes: float, steps: int, seed: int, epoch_steps: float,
                  eval_every: int) -> list[str]:
    """``--set`` overrides of one run: steps per stage, seed, budget, candidates, rescaled schedule."""
    from compactbert.api import find_recipe
    from compactbert.recipe import Recipe

    rec = Recipe.load(find_recipe(RECIPES[method]))
    out = [f"seed={seed}"]
    for i in range(len(rec.stages)):
        out += [f"stages.{i}.epochs=", f"stages.{i}.steps={steps}", f"stages.{i}.eval_every={eval_every}"]
    if method == "uniform":
        return out + [f"stages.0.methods.0.bits={bits}"]
    cands = [0, 2, 4] if bits <= 3 else [0, 2, 4, 8]
    out += [f"stages.0.methods.0.budget={{bytes: {budget_bytes:.0f}}}", f"stages.0.methods.0.candidates={cands}"]
    if method == "dnas":
        search = rec.stages[0].methods[0]
        scale = (steps / epoch_steps) / (rec.stages[0].epochs or 1.0)  # the run's epochs / the recipe's
        out += [f"stages.0.methods.0.{k}={getattr(search, k) * scale:.4g}" for k in SEARCH_EPOCHS_KEYS]
        out += [f"stages.0.methods.0.eta={search.eta / scale:.4g}"]
    return out


def one_run(args, method: str, bits: int, budget_bytes: float, seed: int, epoch_steps: float, n_weights: int) -> dict:
    from compactbert import api
    from compactbert.methods.mixed_precision import widths_from_spec

    name = f"{method}-{bits:g}bit-seed{seed}{args.tag}"
    out = Path(args.out) / name
    overrides = run_overrides(method, bits, budget_bytes, args.steps, seed, epoch_steps, args.eval_every)
    if method == "dnas":
        overrides += args.extra
    done = out / "bench_row.json"
    if done.is_file() and json.loads(done.read_text()).get("overrides") == overrides:
        print(f"{name}: finished before with the same settings, kept", flush=True)  # a rerun continues
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    api.compress(RECIPES[method], args.teacher, "sst2", out, data=args.data, overrides=overrides,
                 max_train_samples=args.max_train_samples, overwrite=True, progress=False)
    wall = time.perf_counter() - t0
    size = json.loads((out / "size.json").read_text())
    widths = widths_from_spec(out / "model")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row = dict(
        name=name, method=method, bits=bits, seed=seed, budget_bytes=budget_bytes, wall=wall, overrides=overrides,
        n_weights=n_weights,
        acc=json.loads((out / "eval.json").read_text())["metrics"]["accuracy"],
        packed_bytes=size["compressed_bytes"],
        target_bytes=sum(t["bytes"] for t in size["tensors"] if t["name"].removesuffix(".weight") in widths),
        widths=widths,
        curve=[r["metrics"]["accuracy"] for r in records],
        stage_minutes=[max((r["elapsed"] for r in records if r.get("stage") == i), default=0.0) / 60 for i in (0, 1)],
    )
    (out / "bench_row.json").write_text(json.dumps(row, indent=1))
    print(f"{name}: acc {row['acc']:.4f}, targeted {row['target_bytes']:,} B (budget {budget_bytes:,.0f}), "
          f"{wall / 60:.1f} min", flush=True)
    return row


def run_all(args) -> None:
    from compactbert.data.sources import load_examples

    shapes = targeted_shapes(args.teacher)
    n_train = len(load_examples("sst2", "train", args.data, args.max_train_samples, 0))
    epoch_steps = 0.9 * n_train / 32  # the search holds out 10%; batch 32
    n_weights = sum(r * c for r, c in shapes.values())
    for bits in args.budgets:
        seeds = args.seeds if bits == min(args.budgets) else args.seeds[:1]
        budget = uniform_bytes(shapes, int(bits))
        for seed in seeds:
            for method in args.methods:
                one_run(args, method, int(bits), budget, seed, epoch_steps, n_weights)


# -------------------------------------------------------------------------------------- step cost
def fixed_length_features(features: list[dict], length: int) -> list[dict]:
    """Training features of exactly ``length`` tokens: [CLS] + the next ``length - 2`` tokens of the
    concatenated sentences + [SEP], each with the label of the sentence it starts in. Every batch
    (training and held-out) then has the same shape, so that the step costs compare without the
    noise of length-grouped batches of 5 to 60 tokens."""
    body, labels = [], []
    for f in features:
        ids = f["input_ids"][1:-1]
        body += ids
        labels += [f["labels"]] * len(ids)
    cls, sep, n = features[0]["input_ids"][0], features[0]["input_ids"][-1], length - 2
    out = []
    for start in range(0, len(body) - n + 1, n):
        feat = {"input_ids": [cls] + body[start : start + n] + [sep], "labels": labels[start]}
        if "token_type_ids" in features[0]:
            feat["token_type_ids"] = [0] * length
        out.append(feat)
    return out


def step_cost(teacher: str, data: str, n: int, length: int = 14) -> dict[str, float]:
    """CPU seconds per step (1 thread: insensitive to other processes sharing the cores, unlike wall
    time), QAT + KD (uniform 3 bits) vs search (weights + architecture), on the same
    batches of 32 x ``length`` tokens (14: the mean padded length of SST-2's length-grouped training
    batches); the search with its candidate quantizations compiled (as runs of >= 500 steps do) and
    eager."""
    import torch
    from pydantic import PrivateAttr

    from compactbert.api import load_for_task, quiet_transformers
    from compactbert.data.batching import encode
    from compactbert.data.sources import load_examples
    from compactbert.methods.base import Method, TrainState
    from compactbert.methods.distill import Distillation
    from compactbert.methods.mixed_precision import MixedPrecisionSearch
    from compactbert.methods.quantize import Quantize
    from compactbert.train.loop import TrainConfig, bf16_supported, train

    class StepClock(Method):
        type: Literal["step_clock"] = "step_clock"
        _times: list = PrivateAttr(default_factory=list)

        def _on_step(self, state: TrainState) -> None:
            self._times.append((time.perf_counter(), time.process_time()))

    def methods(label: str) -> list:
        kd = Distillation(alpha=0.0, weights={"logits": 1.0, "hidden": 1.0})
        if label == "qat+kd":
            return [Quantize(weight="groupbits", bits=3, row_group_size=ROW_GROUP, activations="dynamic8"), kd]
        search = MixedPrecisionSearch(budget={"avg_bits": 3}, row_group_size=ROW_GROUP, n0=0.0, n1=0.0,
                                      compile=label == "search")  # a real run compiles (>= 500 steps)
        return [search, Quantize(weight=None, activations="dynamic8"), kd]

    torch.set_num_threads(1)
    examples = load_examples("sst2", "train", data, 4000, 0)
    out: dict[str, float] = {}
    for label in ("qat+kd", "search", "search-eager") * 2:  # interleaved: the machine is shared
        with quiet_transformers():
            student, tok = load_for_task(teacher, "sst2")
            teacher_net, _ = load_for_task(teacher, "sst2")
        clock = StepClock()
        cfg = TrainConfig(max_steps=n + 4, lr=1e-5, batch_size=32, bf16=bf16_supported(), progress=False,
                          save_every=10**9)
        with tempfile.TemporaryDirectory() as d:
            feats = fixed_length_features(encode(examples, tok, 128), length)[: int(32 * (n + 8) / 0.9) + 32]
            train(student, tok, "sst2", feats, None, cfg, d, methods=methods(label) + [clock], teacher=teacher_net)
        t = clock._times
        wall, cpu = ((t[-1][i] - t[3][i]) / (len(t) - 4) for i in (0, 1))
        out[label] = min(out.get(label, float("inf")), cpu)
        out[f"{label} wall"] = min(out.get(f"{label} wall", float("inf")), wall)
        print(f"  {label}: {cpu:.3f} s/step of CPU time ({wall:.3f} s wall)", flush=True)
    out["ratio"] = out["search"] / out["qat+kd"]
    out["ratio_eager"] = out["search-eager"] / out["qat+kd"]
    return out


# ------------------------------------------------------------------------------------------ table
_KINDS = (("attention.self.query", "Q"), ("attention.self.key", "K"), ("attention.self.value", "V"),
          ("attention.output.dense", "O"), ("intermediate.dense", "FFN1"), ("output.dense", "FFN2"))


def width_summary(widths: dict[str, list[int]]) -> str:
    """Average bits per matrix kind over the layers, and the share of pruned groups."""
    by_kind: dict[str, list[int]] = {}
    for name, bits in widths.items():
        label = next((lab for suffix, lab in _KINDS if name.endswith(suffix)), name.rsplit(".", 1)[-1])
        by_kind.setdefault(label, []).extend(bits)
    allbits = [b for bits in widths.values() for b in bits]
    pruned = sum(b == 0 for b in allbits) / max(1, len(allbits))
    kinds = ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in by_kind.items())
    return f"{kinds}; {pruned:.0%} of groups pruned"


def plot(rows: list[dict], teacher_acc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("uniform", "s"), ("hessian", "^"), ("dnas", "o")):
        pts = sorted((r["target_bytes"] / 1e6, r["acc"] * 100) for r in rows if r["method"] == method)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=method)
    ax.axhline(teacher_acc * 100, color="gray", ls="--", lw=1, label="teacher (FP32)")
    ax.set_xlabel("encoder Linear weights, MB (codes + scales)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(args, rows: list[dict], cost: dict[str, float] | None) -> str:
    teacher = Path(args.teacher)
    t_acc = json.loads((teacher / "eval.json").read_text())["metrics"]["accuracy"]
    uni = {(r["bits"], r["seed"]): r["acc"] for r in rows if r["method"] == "uniform"}
    lines = [
        f"## AQ-BERT on SST-2: mixed precision vs Hessian vs uniform ({datetime.now():%Y-%m-%d}, {cpu_name()})",
        "",
        f"Command: `.venv/bin/python benchmarks/aqbert_sst2.py --teacher {args.teacher} --budgets "
        f"{' '.join(f'{b:g}' for b in args.budgets)} --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}`"
        + (f" (max {args.max_train_samples} training examples)" if args.max_train_samples else " (full training set)"),
        "",
        *([args.note, ""] if args.note else []),
        f"Teacher (FP32): {t_acc * 100:.2f}%. Bytes: the encoder's Linear weights (codes + per-row fp16 "
        "scale and minimum), the budget's scope; `packed` adds embeddings, biases, LayerNorms and the head (fp16).",
        "",
        "| run | dev acc | Δ vs uniform | targeted bytes | avg bits | packed bytes | training minutes (stage 1 + 2) | "
        "chosen widths (avg bits per matrix) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (-r["bits"], r["seed"], r["method"])):
        base = uni.get((r["bits"], r["seed"]))
        delta = "" if base is None or r["method"] == "uniform" else f"{(r['acc'] - base) * 100:+.2f}"
        avg = r["target_bytes"] * 8 / r["n_weights"]
        lines.append(f"| {r['name']} | {r['acc'] * 100:.2f}% | {delta} | {r['target_bytes']:,} | {avg:.3f} | "
                     f"{r['packed_bytes']:,} | {' + '.join(f'{m:.1f}' for m in r['stage_minutes'])} | "
                     f"{width_summary(r['widths'])} |")
    if cost:
        lines += ["", f"Step cost (MiniLM-L6, batches of 32 x 14 tokens, the mean padded length of SST-2's grouped "
                  f"batches; 1 thread, CPU time per step, interleaved windows of {args.timing_steps} steps): "
                  f"QAT + KD {cost['qat+kd']:.3f} s, search step (weights + architecture) {cost['search']:.3f} s: "
                  f"**{cost['ratio']:.2f}x** (limit 2x); {cost['ratio_eager']:.2f}x with the candidates quantized "
                  "eagerly (runs under 500 steps)."]
    lines += ["", "![accuracy vs bytes](aqbert_sst2.png)"]
    for png in args.widths:  # where the bits went (compactbert report's widths pictures), copied beside RESULTS
        import shutil

        dest = Path(args.results).parent / f"aqbert_{Path(png).stem}.png"
        shutil.copyfile(png, dest)
        lines += ["", f"![chosen widths]({dest.name})"]
    plot(rows, t_acc, Path(args.results).parent / "aqbert_sst2.png")  # beside the results file
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.step_cost:
        cost = step_cost(args.teacher, args.data, args.timing_steps)
        print(f"step cost (CPU s): QAT+KD {cost['qat+kd']:.3f}, search {cost['search']:.3f} (ratio {cost['ratio']:.2f}), "
              f"search with eager quantization {cost['search-eager']:.3f} (ratio {cost['ratio_eager']:.2f})")
        return 0
    if not args.table_only:
        run_all(args)
    rows = [json.loads(f.read_text()) for f in sorted(Path(args.out).glob("*/bench_row.json"))]
    saved = Path(args.out) / "step_cost.json"
    if args.table_only and saved.is_file():  # the cost measured after the runs (a table rewrite times nothing)
        cost = json.loads(saved.read_text())
    else:
        cost = step_cost(args.teacher, args.data, args.timing_steps)
        saved.write_text(json.dumps(cost, indent=1))
    publish(table(args, rows, cost), args.results, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
