"""How many bytes a model takes when stored packed — the accounting rule the exporter follows.

The rule (payload bytes; the on-disk packed folder adds only the safetensors header, the manifest
and config/tokenizer files):

1. **What is counted.** Every parameter of the model, once (shared parameters once), embeddings
   included. Buffers are not stored (HF recomputes ``position_ids``/``token_type_ids``); a weight
   mask is accounted inside its weight's encoding; learned quantizer steps *are* the scales of
   their weight. A static activation quantizer adds its range as one entry
   ``<layer>.input_quantizer`` (fp16 scale, + fp16 zero point if asymmetric); dynamic activation
   quantization stores nothing.
2. **Uncompressed tensors** (LayerNorm, biases, position/token-type embeddings, the classifier, any
   weight without a quantizer or mask) are stored dense at ``uncompressed_bits`` = 32 (fp32) by
   default. An exporter that stores them in fp16 must be matched with ``uncompressed_bits=16``.
3. **Compressed weights** (CompressedLinear / CompressedEmbedding) at ``b`` bits (the quantizer's
   bits, or ``uncompressed_bits`` without a quantizer) and with mask ``M``, choose the smallest
   valid encoding (ties: dense, rows, bitmask), each part padded to whole bytes. A quantizer with
   several widths (``row_bits``, e.g. ``groupbits``) stores one stream per width, each padded, and
   rows of 0 bits take nothing (no codes, no scales); the rule is
   :func:`compactbert.export.format.encode.plan_storage`, the one the packer follows:

   * ``dense``:   ``ceil(numel * b / 8)`` + scales. Not valid when ``M`` removes entries and the
     quantizer has no zero level (binary).
   * ``rows``:    only when ``M`` is structured, i.e. exactly the outer product of kept rows and
     kept columns (pruned heads / FFN neurons): ``ceil(r * c * b / 8)`` for the kept ``r x c``
     block + ``ceil(out / 8) + ceil(in / 8)`` row/column bitmaps + the scales of the kept rows
     (``quantizer.scale_bits((r, in))``). A Linear bias whose entries at removed rows are exactly
     0 is then counted for the kept rows only (encoding ``rows``), else dense.
   * ``bitmask``: ``ceil(numel / 8)`` mask + ``ceil(nnz * b / 8)`` nonzero values + scales of the
     full shape.

   Scales and zero points are fp16: 2 bytes each (``quantizer.scale_bits(shape) / 8``).

Pruned heads, FFN neurons and layers that were physically removed are simply absent (smaller
shapes). ``ratio`` = ``dense_fp32_bytes`` (every counted tensor at 4 bytes per parameter) /
``compressed_bytes``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .export.format.encode import ceil8, float_spec, plan_storage, quantizer_spec
from .lazy import callable_verb
from .nn.compressed import CompressedLinear, is_compressed
from .nn.quant import Quantizer

__all__ = ["size_report", "tensor_plan", "format_size_table"]


def tensor_plan(
    weight: torch.Tensor,
    mask: torch.Tensor | None = None,
    quantizer: Quantizer | None = None,
    uncompressed_bits: int = 32,
) -> dict[str, Any]:
    """The storage encoding and byte count of one weight (see the module docstring for the rule;
    the rule itself is :func:`compactbert.export.format.encode.plan_storage`, which the writer uses).

    Args:
        weight: The weight, shape ``(rows, cols)`` (or any shape for unmasked tensors).
        mask: Its mask (bool or 0/1 float), or None.
        quantizer: Its weight quantizer, or None (stored at ``uncompressed_bits``).
        uncompressed_bits: 32 (fp32) or 16 (fp16) for values without a quantizer.

    Returns:
        ``{"encoding": "dense" | "rows" | "bitmask", "bits", "params", "nnz", "sparsity", "bytes",
        "kept_rows" (bool tensor or None), "kept_cols" (bool tensor or None)}``; ``bits`` is the
        widest row's for a quantizer with several widths.
    """
    shape = tuple(weight.shape)
    numel = math.prod(shape)
    if quantizer is not None:
        spec = quantizer_spec(quantizer, shape)
        bits = quantizer.bits
    else:
        spec, bits = float_spec(shape, uncompressed_bits), uncompressed_bits
    plan = plan_storage(shape, mask, spec)
    return {"encoding": plan.encoding, "bits": bits, "params": numel, "nnz": plan.nnz,
            "sparsity": 1.0 - plan.nnz / numel if numel else 0.0, "bytes": plan.bytes,
            "kept_rows": plan.kept_rows, "kept_cols": plan.kept_cols}


def size_report(model: nn.Module, uncompressed_bits: int = 32) -> dict[str, Any]:
    """Per-tensor and total bytes of ``model`` stored packed (rule in the module docstring).

    Args:
        model: Any ``nn.Module``; compressed layers are recognised by class.
        uncompressed_bits: Bits per value of uncompressed tensors: 32 (default) or 16.

    Returns:
        ``{"tensors": [{"name", "shape", "params", "bits", "sparsity", "encoding", "bytes"}],
        "dense_fp32_bytes", "compressed_bytes", "ratio", "uncompressed_bits"}``
    """
    if uncompressed_bits not in (16, 32):
        raise ValueError(f"uncompressed_bits must be 16 or 32, got {uncompressed_bits!r}")
    skip: set[int] = set()  # quantizer parameters: they are the scales of their weight
    weights: dict[int, nn.Module] = {}
    biases: dict[int, nn.Module] = {}
    act_entries: list[dict[str, Any]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, Quantizer):
            skip.update(id(p) for p in mod.parameters())
        if is_compressed(mod):
            weights[id(mod.weight)] = mod
            if isinstance(mod, CompressedLinear) and mod.bias is not None:
                biases[id(mod.bias)] = mod
            iq = getattr(mod, "input_quantizer", None)
            nbits = iq.storage_bits(()) if iq is not None else 0
            if nbits:
                act_entries.append({
                    "name": f"{name}.input_quantizer", "shape": [], "params": nbits // 16, "bits": 16,
                    "sparsity": 0.0, "encoding": "scalar", "bytes": ceil8(nbits),
                })

    tensors: list[dict[str, Any]] = []
    dense_fp32 = 0
    plans: dict[int, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if id(p) in skip:
            continue
        mod = weights.get(id(p))
        if mod is not None:
            plan = tensor_plan(p, mod.weight_mask, mod.weight_quantizer, uncompressed_bits)
            plans[id(mod)] = plan
        else:
            plan = None
        tensors.append({"name": name, "param": p, "plan": plan})
        dense_fp32 += p.numel() * 4

    rows_out: list[dict[str, Any]] = []
    for t in tensors:
        p, plan = t["param"], t["plan"]
        if plan is None:
            owner = biases.get(id(p))
            wplan = plans.get(id(owner)) if owner is not None else None
            numel = p.numel()
            nbytes, enc = ceil8(numel * uncompressed_bits), "dense"
            if wplan is not None and wplan["encoding"] == "rows":
                dropped = ~wplan["kept_rows"]
                if not bool((p.detach()[dropped] != 0).any()):
                    nbytes, enc = ceil8(int(wplan["kept_rows"].sum()) * uncompressed_bits), "rows"
            plan = {"bits": uncompressed_bits, "params": numel, "sparsity": 0.0, "encoding": enc, "bytes": nbytes}
        rows_out.append({
            "name": t["name"], "shape": list(p.shape), "params": plan["params"], "bits": plan["bits"],
            "sparsity": round(float(plan["sparsity"]), 6), "encoding": plan["encoding"], "bytes": plan["bytes"],
        })
    rows_out.extend(act_entries)
    compressed = sum(r["bytes"] for r in rows_out)
    return {
        "tensors": rows_out,
        "dense_fp32_bytes": dense_fp32,
        "compressed_bytes": compressed,
        "ratio": dense_fp32 / compressed if compressed else float("inf"),
        "uncompressed_bits": uncompressed_bits,
    }


def format_size_table(report: dict[str, Any], only_compressed: bool = False) -> str:
    """A plain-text table of a :func:`size_report` (one line per tensor, then the totals)."""
    rows = [t for t in report["tensors"] if not only_compressed or t["bits"] != report["uncompressed_bits"]]
    width = max([len(t["name"]) for t in rows] + [6])
    lines = [f"{'tensor':<{width}}  {'bits':>4}  {'params':>10}  {'sparsity':>8}  {'encoding':>8}  {'bytes':>11}"]
    for t in rows:
        lines.append(
            f"{t['name']:<{width}}  {t['bits']:>4}  {t['params']:>10,}  {t['sparsity']:>8.1%}  "
            f"{t['encoding']:>8}  {t['bytes']:>11,}"
        )
    lines.append(
        f"total: {report['compressed_bytes']:,} bytes packed vs {report['dense_fp32_bytes']:,} dense fp32 "
        f"({report['ratio']:.2f}x smaller)"
    )
    if report.get("tokenizer_bytes"):
        lines.append(f"+ tokenizer (xz): {report['tokenizer_bytes']:,} bytes -> packed directory ~"
                     f"{report['predicted_files_bytes']:,} bytes")
    return "\n".join(lines)


callable_verb(__name__, "size")  # compactbert.size(...) is the verb even after this is imported
