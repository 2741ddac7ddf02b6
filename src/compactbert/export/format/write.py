"""Writing a packed directory: tensors into ``model.safetensors``, one manifest entry per tensor.

Manifest entry of one tensor (``manifest["tensors"][name]``, format version 2)::

    {"shape": [64, 32], "encoding": "dense" | "rows" | "bitmask", "bits": 4, "source": "bert....weight",
     "quant": {"kind": "groupbits", "spec": {...}, "scale_layout": "row", "group_size": null,
               "params": ["scales", "mins"], "row_bits": [[4, 16], [2, 16], [0, 32]]} | null,
     "dtype": "float16" (values of unquantized tensors) | null,
     "parts": {"codes.4": "<key in model.safetensors>", "codes.2": ..., "scales": ..., "mins": ..., "rows": ...},
     "bytes": 1234}

``row_bits`` lists ``[bits, rows]`` runs over the rows of ``shape``; ``parts["codes.<b>"]`` holds the
stored codes of the rows of ``b`` bits, row-major, packed at ``b`` bits (:mod:`.encode`); each
parameter in ``params`` is stored (fp16) for the stored rows of nonzero width only (per row or per
row and group), or once (per tensor). ``quant.spec`` rebuilds the quantizer
(:func:`~compactbert.nn.quant.quantizer_from_spec`), whose ``decode`` turns codes back into values.
"""

from __future__ import annotations

import json
import lzma
import tempfile
from pathlib import Path
from typing import Any

import torch

from ...fileio import sha256_file
from ...nn.quant.codes import Codes, bit_runs
from ...nn.quant.ops import FP16_MAX
from ..bits import pack_mask
from .constants import CONFIG_FILE, FLOAT_DTYPES, FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, TOKENIZER_DIR, WEIGHTS_FILE
from .encode import Plan, codes_spec, code_streams, encoding_keep, float_spec, plan_storage
from .weight import PackedWeight

__all__ = ["Writer", "tokenizer_files", "write_folder", "is_packed_folder"]


class Writer:
    """Collects safetensors tensors and manifest entries."""

    def __init__(self, float_dtype: str):
        self.float_dtype = float_dtype
        self.tensors: dict[str, torch.Tensor] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        self.extra: list[str] = []  # tensors that are not manifest entries (vocabulary maps, input ranges)

    def put(self, key: str, t: torch.Tensor, extra: bool = False) -> str:
        self.tensors[key] = t.contiguous()
        if extra:
            self.extra.append(key)
        return key

    def _float(self, t: torch.Tensor) -> tuple[torch.Tensor, str]:
        dt = self.float_dtype
        if dt == "float16" and t.numel() and float(t.abs().max()) > FP16_MAX:
            dt = "float32"  # would overflow: keep this tensor exact
        return t.to(FLOAT_DTYPES[dt]), dt

    def add_float(self, name: str, t: torch.Tensor, source: str) -> None:
        """A dense float tensor (bias, LayerNorm, position embeddings, ...)."""
        vals, dt = self._float(t.detach().float().cpu())
        parts = {"values": self.put(name, vals)} if t.numel() else {}
        self.entries[name] = {
            "shape": list(t.shape), "encoding": "dense", "bits": 16 if dt == "float16" else 32,
            "dtype": dt, "quant": None, "parts": parts, "bytes": vals.numel() * vals.element_size(),
            "source": source,
        }

    def add_weight(self, name: str, w: PackedWeight) -> None:
        """A matrix in the smallest valid encoding (dense / rows / bitmask), then its bias."""
        rows, cols = w.eff.shape
        if w.codes is None:
            _, dt = self._float(w.eff)
            bits = 16 if dt == "float16" else 32
            spec = float_spec((rows, cols), bits)
        else:
            dt, bits = None, int(w.quantizer.bits)
            spec = codes_spec(w.codes, bool(w.quantizer.represents_zero))
        plan = plan_storage((rows, cols), w.mask, spec)
        keep = encoding_keep(plan.encoding, (rows, cols), plan.kept_rows, plan.kept_cols, w.mask)
        parts: dict[str, str] = {}
        if plan.encoding == "rows":
            parts["rows"] = self.put(f"{name}.rows", pack_mask(plan.kept_rows))
            parts["cols"] = self.put(f"{name}.cols", pack_mask(plan.kept_cols))
        elif plan.encoding == "bitmask":
            parts["mask"] = self.put(f"{name}.mask", pack_mask(w.mask))
        if rows * cols and w.codes is None:
            vals = w.eff if keep is None else w.eff[keep]
            parts["values"] = self.put(f"{name}.values", vals.reshape(-1).to(FLOAT_DTYPES[dt]))
        elif rows * cols:
            self._add_codes(name, w.codes, keep, plan, parts)
        self.entries[name] = {
            "shape": [rows, cols], "encoding": plan.encoding, "bits": bits, "dtype": dt,
            "quant": quant_meta(w) if w.codes is not None else None, "parts": parts,
            "bytes": sum(self.tensors[k].numel() * self.tensors[k].element_size() for k in parts.values()),
            "source": w.source,
        }
        if w.bias is not None:
            self.add_float(f"{name[: -len('.weight')]}.bias", w.bias, w.source.replace(".weight", ".bias"))

    def _add_codes(self, name: str, codes: Codes, keep: torch.Tensor | None, plan: Plan, parts: dict[str, str]) -> None:
        for b, stream in code_streams(codes.stored, codes.row_bits, keep).items():
            parts[f"codes.{b}"] = self.put(f"{name}.codes.{b}", stream)
        stored_rows = codes.row_bits > 0
        if plan.kept_rows is not None:
            stored_rows = stored_rows & plan.kept_rows
        for pname, t in codes.params.items():
            vals = t[stored_rows] if codes.layout.per_row else t
            parts[pname] = self.put(f"{name}.{pname}", vals.to(torch.float16))
        if codes.layout.kind == "group" and codes.src_cols is not None:
            # original column of each stored column, as a bitmap over the original width
            src = torch.zeros(int(codes.group_count) * int(codes.layout.group_size), dtype=torch.bool)
            src[codes.src_cols] = True
            parts["src_cols"] = self.put(f"{name}.src_cols", pack_mask(src))


def quant_meta(w: PackedWeight) -> dict[str, Any]:
    """The ``quant`` block of a manifest entry (see the module docstring)."""
    codes, q = w.codes, w.quantizer
    meta = {"kind": q.kind, "spec": q.spec(), "scale_layout": codes.layout.kind, "group_size": codes.layout.group_size,
            "params": list(codes.params), "row_bits": bit_runs(codes.row_bits)}
    if codes.layout.kind == "group":
        meta["groups"] = int(codes.group_count)
    return meta


def tokenizer_files(tokenizer, compress: bool = True) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the tokenizer as a packed directory stores it (xz by default)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for f in sorted(Path(tmp).iterdir()):
            if f.is_file():
                data = f.read_bytes()
                if compress:
                    out.append((f.name + ".xz", lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)))
                else:
                    out.append((f.name, data))
    return out


def is_packed_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a packed directory and nothing else (an earlier export, replaced)."""
    from ...runs import PACKED, kind_of

    names = {p.name for p in folder.iterdir()}
    return kind_of(folder) == PACKED and names <= {MANIFEST_FILE, WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR}


def write_folder(out: Path, writer: Writer, config: dict[str, Any], tokenizer, compress_tokenizer: bool) -> dict[str, Any]:
    """Write weights, config, tokenizer and the manifest (last) as the folder ``out``; return the manifest.

    ``out`` must be new, empty or an earlier packed directory (:func:`is_packed_folder`); it is
    written as a staging folder next to it and renamed into place (:mod:`compactbert.outdir`).
    """
    from ...outdir import check_output, staged_output

    check_output(out, own=is_packed_folder, command="export", option="out_dir")
    with staged_output(out) as tmp:
        return _write(tmp, writer, config, tokenizer, compress_tokenizer)


def _write(out: Path, writer: Writer, config: dict[str, Any], tokenizer, compress_tokenizer: bool) -> dict[str, Any]:
    from safetensors.torch import save_file

    save_file(writer.tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
    (out / CONFIG_FILE).write_text(json.dumps(config, sort_keys=True, separators=(",", ":")) + "\n")
    tok_files: list[str] = []
    if tokenizer is not None:
        (out / TOKENIZER_DIR).mkdir()
        for fname, data in tokenizer_files(tokenizer, compress_tokenizer):
            (out / TOKENIZER_DIR / fname).write_bytes(data)
            tok_files.append(f"{TOKENIZER_DIR}/{fname}")
    files = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size}
             for rel in [WEIGHTS_FILE, CONFIG_FILE, *tok_files]}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "float_dtype": writer.float_dtype,
        "uncompressed_bits": 16 if writer.float_dtype == "float16" else 32,
        "tensors": writer.entries,
        "extra_tensors": list(writer.extra),
        "files": files,
        "payload_bytes": sum(t.numel() * t.element_size() for t in writer.tensors.values()),
        "weights_bytes": files[WEIGHTS_FILE]["bytes"],
        "tokenizer_bytes": sum(files[f]["bytes"] for f in tok_files),
    }
    # total_bytes counts the manifest itself: iterate until the number no longer changes its length
    manifest["total_bytes"] = 0
    for _ in range(5):
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n"
        total = sum(v["bytes"] for v in files.values()) + len(text.encode())
        if total == manifest["total_bytes"]:
            break
        manifest["total_bytes"] = total
    (out / MANIFEST_FILE).write_text(text)
    return manifest
