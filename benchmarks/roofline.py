"""Roofline figures for the engine benchmark: the FLOPs of an encoder forward, and the measured peak
of a matrix product on this machine in FP32, bf16 and int8.

A model's achieved rate (its forward FLOPs at batch 32 divided by its measured batch-32 time) set
against the peak of the product its kernels use says how far it is from what the CPU can do, and
whether a speed target is reachable at all: a model that already runs its products near the int8
peak cannot get faster by better kernels, only by doing fewer FLOPs.

``python benchmarks/roofline.py --threads 2`` prints the peaks alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# The product the peaks are measured on: MiniLM-L6's FFN up-projection on 32 x 128 tokens.
PEAK_SHAPE = (4096, 384, 1536)


def encoder_flops(layers: int, hidden: int, intermediate: int, heads_dim: int, seq: int, batch: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of an encoder forward: Q/K/V/O (``4 * hidden * heads_dim``
    per token, ``heads_dim`` = heads x head size), the FFN (``2 * hidden * intermediate``), and the
    attention scores and weighted sum (``2 * seq * heads_dim``) per token and layer."""
    per_token = 4 * hidden * heads_dim + 2 * hidden * intermediate + 2 * seq * heads_dim
    return 2.0 * per_token * layers * seq * batch


def config_flops(model_dir: str | Path, seq: int, batch: int) -> float | None:
    """:func:`encoder_flops` of a Hugging Face model folder, a run or a packed directory (from its
    ``config.json``; pruned heads and neurons of a packed model are counted where its config says
    how many are left, else the full widths)."""
    p = Path(model_dir)
    for cand in (p / "model" / "config.json", p / "config.json"):
        if cand.is_file():
            cfg = json.loads(cand.read_text())
            break
    else:
        return None
    if "heads_per_layer" in cfg:  # a packed directory: what is left of each layer after pruning
        h, d = int(cfg["hidden_size"]), int(cfg["head_dim"])
        return sum(encoder_flops(1, h, int(f), int(n) * d, seq, batch)
                   for n, f in zip(cfg["heads_per_layer"], cfg["ffn_per_layer"]))
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layers") or cfg.get("num_layers")
    hidden = cfg.get("hidden_size") or cfg.get("dim")
    inter = cfg.get("intermediate_size") or cfg.get("hidden_dim") or (4 * hidden if hidden else None)
    if not (layers and hidden and inter):
        return None
    return encoder_flops(int(layers), int(hidden), int(inter), int(hidden), seq, batch)


def _products(threads: int):
    import torch
    from compactbert.runtime.kernels import int8_product

    torch.set_num_threads(threads)
    m, k, n = PEAK_SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    xb, wb = x.bfloat16(), w.bfloat16()
    fns = {"fp32": lambda: torch.nn.functional.linear(x, w), "bf16": lambda: torch.nn.functional.linear(xb, wb)}
    try:
        wpk = torch.ops.mkldnn._reorder_linear_weight(wb, None)
        fns["bf16 (oneDNN)"] = lambda: torch.ops.mkldnn._linear_pointwise(xb, wpk, None, "none", [], "")
    except (RuntimeError, AttributeError):
        pass
    try:
        xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        wq = torch.randint(-1, 2, (n, k), dtype=torch.int8, generator=g)
        packed = torch.ops.onednn.qlinear_prepack(wq, None)
        scales, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)
        fns["int8 (oneDNN)"] = lambda: int8_product(xq, packed, scales, zeros)  # the runtime's call
    except (RuntimeError, AttributeError):
        pass
    return fns


def measure_peaks(threads: int = 2, rounds: int = 5, reps: int = 5) -> dict[str, dict[str, float]]:
    """GFLOP/s of the peak product in each representation: ``rounds`` interleaved rounds (every
    kind once per round), ``reps`` products per timing after one untimed call; median and min-max."""
    fns = _products(threads)
    m, k, n = PEAK_SHAPE
    flops = 2.0 * m * k * n
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t0) / reps)
    out = {}
    for name, ts in times.items():
        rates = [flops / t / 1e9 for t in ts]
        out[name] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    return out


def roofline_lines(peaks: dict[str, dict[str, float]], models: list[dict], seq: int, batch: int = 32) -> list[str]:
    """One line per measured model: achieved GFLOP/s at batch ``batch`` and its share of each peak.
    ``models`` are bench.json rows with ``name``, ``throughput_bs32`` and ``flops`` (a forward of
    ``batch`` rows of ``seq`` tokens)."""
    lines = ["Peaks (GFLOP/s of a " + "x".join(map(str, PEAK_SHAPE)) + " product, median (min-max)): "
             + "; ".join(f"{k} {v['median']:.0f} ({v['min']:.0f}-{v['max']:.0f})" for k, v in peaks.items())]
    for r in models:
        thr, flops = r.get("throughput_bs32"), r.get("flops")
        if not thr or not flops:
            continue
        achieved = flops / (batch / thr) / 1e9
        shares = ", ".join(f"{100 * achieved / v['median']:.0f}% of {k}" for k, v in peaks.items())
        lines.append(f"- `{r['name']}`: {flops / batch / 1e9:.2f} GFLOP per sequence, {achieved:.0f} GFLOP/s achieved "
                     f"({shares})")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    for line in roofline_lines(measure_peaks(args.threads, args.rounds), [], 128):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
