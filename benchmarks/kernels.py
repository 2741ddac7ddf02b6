"""Kernel study: which CPU path runs a BERT-class encoder fastest here?

Runs, in one process and interleaved round by round (other work on the machine slows everything
alike, so ratios stay meaningful), on MiniLM-L6 (6 layers, hidden 384, 12 heads, FFN 1536):

A. single products of MiniLM's shapes at 128 rows (batch 1 x seq 128) and 4096 rows (batch 32 x seq 128):
   FP32 ``F.linear``; bf16 ``F.linear``; bf16 oneDNN with a pre-reordered weight; int8
   ``torch._int_mm`` with dynamic per-token activation quantization and per-row weight scales;
   oneDNN int8 ``qlinear`` (AMX/VNNI) alone and with the same activation quantization, in the form
   the runtime calls it (``runtime.kernels.int8_product``: uint8 codes with a zero point; signed
   sources run on oneDNN's scalar reference kernel on AVX-512 VNNI CPUs without AMX).
B. the whole encoder + classifier at (1, 128) and (32, 128): FP32 eager; bf16 weights; FP32 under
   bf16 autocast; ``torch.compile`` of the bf16 model (compile time reported); int8 ``_int_mm``
   linears; ``torch.ao`` dynamic quantization; ONNX Runtime FP32 and its dynamic int8
   quantization; and compactbert's runtime (packed model, bf16 oneDNN and FP32).

Prints median and minimum latency (ms) and the speed-up over FP32 eager (from the medians; the
minima show the machine's uncontended speed). Usage::

    python benchmarks/kernels.py                 # ~3-4 minutes on 2 cores
    python benchmarks/kernels.py --quick         # fewer rounds, no compile, no ONNX
    python benchmarks/kernels.py --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compactbert.runtime.kernels import int8_product

warnings.filterwarnings("ignore")
logging.getLogger("transformers").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------- timing
CLOCK = time.perf_counter  # --clock cpu: time.thread_time (1 thread), immune to other processes


def timed(fn, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t = CLOCK()
        fn()
        out.append((CLOCK() - t) * 1e3)
    return out


def interleaved(fns: dict[str, callable], rounds: int, iters: int) -> dict[str, list[float]]:
    """Run each function ``iters`` times per round, all functions each round, ``rounds`` rounds."""
    res: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm up
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            res[k].extend(timed(f, iters))
    return res


# ----------------------------------------------------------------------------- int8 helpers
def quant_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 8-bit per-row quantization: codes (rows, k) int8 and scales (rows, 1) float32."""
    s = x.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-8) / 127
    return torch.round(x.float() / s).to(torch.int8), s


class IntMMLinear(nn.Module):
    """int8 x int8 -> int32 with ``torch._int_mm``: dynamic per-token activations, per-row weights."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        self.scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127  # (out,)
        self.wq = torch.round(w / self.scale[:, None]).to(torch.int8).t()  # (in, out): a transposed view
        self.bias = lin.bias.detach().float() if lin.bias is not None else None

    def forward(self, x):  # x: (..., in)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        q, s = quant_per_token(x2)
        if q.shape[0] <= 16:  # _int_mm needs more than 16 rows
            q = torch.cat([q, q.new_zeros(17 - q.shape[0], q.shape[1])])
        y = torch._int_mm(q, self.wq)[: x2.shape[0]].float() * s * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], -1).to(x.dtype)


def swap_linears(model: nn.Module, factory) -> nn.Module:
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and "classifier" not in f"{name}.{cname}":
                setattr(mod, cname, factory(child))
    return model


# ----------------------------------------------------------------------------- part A
def study_products(rounds: int) -> list[dict]:
    shapes = [("QKV", 384, 1152), ("attn out", 384, 384), ("FFN up", 384, 1536), ("FFN down", 1536, 384)]
    rows = []
    for m in (128, 4096):
        for label, k, n in shapes:
            x = torch.randn(m, k)
            w = torch.randn(n, k) * 0.05
            b = torch.randn(n)
            xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
            pw = torch.ops.mkldnn._reorder_linear_weight(wb, None)
            sw = w.abs().amax(1) / 127
            qw = torch.round(w / sw[:, None]).to(torch.int8)
            qwt = qw.t()
            pq = torch.ops.onednn.qlinear_prepack(qw, None)
            wz = torch.zeros(n, dtype=torch.int64)
            qx, sx = quant_per_token(xb)

            def int_mm():
                q, s = quant_per_token(xb)
                return (torch._int_mm(q, qwt).float() * s * sw + b).bfloat16()

            def onednn_q():
                q, s = quant_per_token(xb)
                return (int8_product(q, pq, sw, wz) * s + b).bfloat16()

            fns = {
                "fp32 F.linear": lambda: F.linear(x, w, b),
                "bf16 F.linear": lambda: F.linear(xb, wb, bb),
                "bf16 oneDNN prepacked": lambda: torch.ops.mkldnn._linear_pointwise(xb, pw, bb, "none", [], ""),
                "int8 _int_mm + act quant": int_mm,
                "int8 oneDNN product only": lambda: int8_product(qx, pq, sw, wz),
                "int8 oneDNN + act quant": onednn_q,
                "act quant alone": lambda: quant_per_token(xb),
            }
            res = interleaved(fns, rounds, 3 if m == 4096 else 10)
            for name, ts in res.items():
                med = statistics.median(ts)
                rows.append({"rows": m, "shape": f"{label} {k}x{n}", "kernel": name, "median_ms": med, "min_ms": min(ts),
                             "gop_s": (2 * m * k * n / (min(ts) * 1e-3) / 1e9) if name != "act quant alone" else None})
    return rows


# ----------------------------------------------------------------------------- part B
def build_variants(args, tmp: Path) -> tuple[dict, dict]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compactbert.export.pack import export_packed
    from compactbert.models import embedded_minilm_path
    from compactbert.runtime import load

    path = str(embedded_minilm_path())
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    fp32 = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    notes: dict[str, str] = {}
    models: dict[str, object] = {}

    def hf(m, autocast=False):
        def run(ids, mask, tt):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with torch.inference_mode(), ctx:
                return m(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits
        return run

    models["FP32 eager (HF, SDPA)"] = hf(fp32)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16).eval()
    models["bf16 weights (HF)"] = hf(bf16)
    models["FP32 + bf16 autocast (HF)"] = hf(fp32, autocast=True)
    if not args.no_compile:
        compiled = torch.compile(copy.deepcopy(bf16), dynamic=False)
        models["bf16 torch.compile (HF)"] = hf(compiled)
    int8 = swap_linears(copy.deepcopy(fp32), IntMMLinear).eval()
    models["int8 torch._int_mm (HF)"] = hf(int8)
    ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {nn.Linear}, dtype=torch.qint8)
    models["torch.ao dynamic int8 (HF)"] = hf(ao)

    if not args.no_onnx:
        from compactbert.export.onnx import export_onnx, ort_session, quantize_onnx_int8

        onnx_path = export_onnx(copy.deepcopy(fp32), None, tmp / "onnx", check=False)
        q_path = quantize_onnx_int8(onnx_path, tmp / "onnx" / "model.int8.onnx")
        for label, p in (("ONNX Runtime FP32", onnx_path), ("ONNX Runtime dynamic int8", q_path)):
            sess = ort_session(p, threads=args.threads)
            names = [i.name for i in sess.get_inputs()]

            def run(ids, mask, tt, sess=sess, names=names):
                feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": tt.numpy()}
                return torch.from_numpy(sess.run(["logits"], {n: feed[n] for n in names})[0])
            models[label] = run

    export_packed(fp32, tok, tmp / "packed")
    for dt in ("bf16", "fp32"):
        pm = load(tmp / "packed", dtype=dt)
        models[f"compactbert runtime {dt} ({pm.backend})"] = lambda ids, mask, tt, pm=pm: pm(ids, mask, tt)
    return models, notes


def study_models(args) -> tuple[list[dict], dict]:
    info: dict = {}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        models, _ = build_variants(args, Path(d))
        for bs in (1, 32):
            torch.manual_seed(bs)
            ids = torch.randint(1000, 29000, (bs, 128))
            ids[:, 0], ids[:, -1] = 101, 102
            mask = torch.ones_like(ids)
            tt = torch.zeros_like(ids)
            fns = {}
            ref = None
            for name, run in models.items():
                t0 = time.perf_counter()
                out = run(ids, mask, tt)  # first call (compiles where torch.compile is used)
                first = time.perf_counter() - t0
                if "compile" in name:
                    info[f"compile_s_bs{bs}"] = round(first, 1)
                if ref is None:
                    ref = out.float()
                info[f"max_abs_logit_diff_bs{bs}::{name}"] = float((out.float() - ref).abs().max())
                fns[name] = lambda run=run: run(ids, mask, tt)
            res = interleaved(fns, args.rounds, 2 if bs == 32 else 8)
            base = statistics.median(res["FP32 eager (HF, SDPA)"])
            base_min = min(res["FP32 eager (HF, SDPA)"])
            for name, ts in res.items():
                med = statistics.median(ts)
                rows.append({"batch": bs, "model": name, "median_ms": med, "min_ms": min(ts),
                             "speedup_median": base / med, "speedup_min": base_min / min(ts)})
    return rows, info


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="2 rounds, no torch.compile, no ONNX Runtime")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--skip-products", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time at --threads; cpu: CPU time of the calling thread at 1 thread "
                         "(not inflated when other processes share the cores)")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.no_compile, args.no_onnx = 2, True, True
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.thread_time
        args.threads = 1
    torch.set_num_threads(args.threads)
    t_start = time.time()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}, clock {args.clock}")

    out: dict = {"threads": args.threads, "torch": torch.__version__, "clock": args.clock}
    if not args.skip_products:
        prod = study_products(max(2, args.rounds - 1))
        out["products"] = prod
        print("\nA. single products (ms; GOP/s from the minimum)")
        print(f"{'rows':>5}  {'shape':<20} {'kernel':<28} {'median':>8} {'min':>8} {'GOP/s':>7}")
        for r in prod:
            g = f"{r['gop_s']:7.0f}" if r["gop_s"] else "       "
            print(f"{r['rows']:>5}  {r['shape']:<20} {r['kernel']:<28} {r['median_ms']:8.3f} {r['min_ms']:8.3f} {g}")

    rows, info = study_models(args)
    out["models"], out["info"] = rows, info
    print("\nB. MiniLM-L6 encoder + classifier, seq 128 (ms; speed-up over FP32 eager)")
    print(f"{'batch':>5}  {'model':<36} {'median':>9} {'min':>9} {'x(med)':>7} {'x(min)':>7}  {'max|dlogit|':>11}")
    for r in rows:
        d = info.get(f"max_abs_logit_diff_bs{r['batch']}::{r['model']}", float('nan'))
        print(f"{r['batch']:>5}  {r['model']:<36} {r['median_ms']:9.2f} {r['min_ms']:9.2f} "
              f"{r['speedup_median']:7.2f} {r['speedup_min']:7.2f}  {d:11.4f}")
    for k, v in info.items():
        if k.startswith("compile"):
            print(f"{k}: {v}")
    out["wall_s"] = round(time.time() - t_start, 1)
    print(f"total {out['wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
