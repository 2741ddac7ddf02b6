"""Reading a packed directory: verification, then every tensor decoded to dense float32.

Format versions 1 and 2 are read. A version-1 entry (one width per tensor, parts ``codes``,
``scales``, ``zero_points``) is read as the version-2 entry it is equivalent to (one run of
``row_bits``, ``codes.<bits>``, named parameters); its quantizer decodes it, as in version 2.
"""

from __future__ import annotations

import json
import lzma
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import UserError
from ...fileio import sha256_file
from ...nn.quant import Codes, ScaleLayout, WeightQuantizer, quantizer_from_spec
from ...nn.quant.codes import bits_from_runs
from ..bits import unpack_mask
from .constants import CONFIG_FILE, FORMAT_NAME, MANIFEST_FILE, READABLE_VERSIONS, TOKENIZER_DIR, WEIGHTS_FILE
from .encode import unpack_code_streams

__all__ = ["PackedWeights", "verify_packed", "read_packed", "load_packed_tokenizer", "packed_size",
           "upgrade_entry", "decode_entry"]


@dataclass
class PackedWeights:
    """What a packed directory holds, decoded to dense float32 tensors.

    Attributes:
        path: The directory.
        manifest: Parsed ``manifest.json``.
        config: Parsed ``config.json`` (runtime config; per-layer ``heads_per_layer``, ``ffn_per_layer``).
        tensors: canonical name (``layer.0.attn.q.weight`` ...) -> float32 tensor, physically reduced.
        act_quant: canonical linear name -> ``{"spec": ..., "params": {name: float32 tensor}}``: the
            input quantizer (``spec``) and what it stored (a static range: ``scale``, ``zero_point``).
        vocab_map: (original vocab,) int64 old id -> row of the stored embedding, or None.
        row_codes: weight name -> (int8 levels, float32 per-row scales) for weights whose quantizer
            gives integer levels times one scale per row: ``tensors[name] == levels * scales[:, None]``.
    """

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    act_quant: dict[str, dict[str, Any]] = field(default_factory=dict)
    vocab_map: torch.Tensor | None = None
    row_codes: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def bad_folder(path: Path, what: str) -> UserError:
    return UserError(f"packed model {str(path)!r}: {what}; re-export it with `compactbert export`")


def _check_files(p: Path, files: Any) -> None:
    if not isinstance(files, dict) or WEIGHTS_FILE not in files or CONFIG_FILE not in files:
        raise bad_folder(p, f"{MANIFEST_FILE} does not list {WEIGHTS_FILE} and {CONFIG_FILE}")
    for rel, info in files.items():
        fp = (p / rel).resolve()
        if p.resolve() not in fp.parents or not isinstance(info, dict):
            raise bad_folder(p, f"{MANIFEST_FILE} lists an invalid file entry {rel!r}")
        if not fp.is_file():
            raise bad_folder(p, f"file {rel!r} is missing")
        size = fp.stat().st_size
        if size != info.get("bytes"):
            raise bad_folder(p, f"file {rel!r} has {size} bytes, the manifest says {info.get('bytes')} (truncated or modified)")
        if sha256_file(fp) != info.get("sha256"):
            raise bad_folder(p, f"file {rel!r} does not match its sha256 in the manifest (modified or corrupted)")


def verify_packed(path: str | os.PathLike) -> dict[str, Any]:
    """Check a packed directory's format, version, and every file's size and sha256.

    Returns:
        The parsed manifest.

    Raises:
        UserError: not a packed directory, an unknown format version, or a missing, truncated or
            modified file (one line naming it).
    """
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"packed model {str(path)!r} is not a directory; expected a folder written by `compactbert export`")
    mpath = p / MANIFEST_FILE
    if not mpath.is_file():
        raise UserError(
            f"{str(path)!r} has no {MANIFEST_FILE}: not a packed model folder (expected one written by `compactbert export`)"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_folder(p, f"{MANIFEST_FILE} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise bad_folder(p, f"{MANIFEST_FILE} does not describe a {FORMAT_NAME!r} folder")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise UserError(
            f"packed model {str(path)!r} has format_version {version!r}; this compactbert reads version "
            f"{' or '.join(map(str, READABLE_VERSIONS))} only (re-export the model, or use the compactbert "
            "version that wrote it)"
        )
    _check_files(p, manifest.get("files"))
    return manifest


def upgrade_entry(e: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest entry as the equivalent version-2 entry (others unchanged)."""
    q = e.get("quant")
    if q is None or "row_bits" in q:
        return e
    bits, rows = int(e["bits"]), int(e["shape"][0])
    parts = dict(e.get("parts", {}))
    if "codes" in parts:
        parts[f"codes.{bits}"] = parts.pop("codes")
    q = {**q, "row_bits": [[bits, rows]] if rows else [],
         "params": ["scales"] + (["zero_points"] if q.get("zero_points") else [])}
    return {**e, "quant": q, "parts": parts}


def _selection(e: dict[str, Any], shape: tuple[int, int], get) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(bool rows kept by the encoding or None, bool entries stored or None: all) of entry ``e``."""
    enc, parts = e["encoding"], e.get("parts", {})
    if enc == "dense":
        return None, None
    if enc == "rows":
        rows = unpack_mask(get(parts["rows"]), (shape[0],))
        cols = unpack_mask(get(parts["cols"]), (shape[1],))
        return rows, rows[:, None] & cols[None, :]
    if enc == "bitmask":
        return None, unpack_mask(get(parts["mask"]), shape)
    raise ValueError(f"unknown encoding {enc!r}")


def _entry_codes(e: dict[str, Any], shape: tuple[int, int], get, kept_rows, keep) -> tuple[WeightQuantizer, Codes]:
    """The quantizer and the (full-shape) codes of a quantized entry."""
    qm, parts = e["quant"], e.get("parts", {})
    q = quantizer_from_spec(qm["spec"])
    if not isinstance(q, WeightQuantizer):
        raise ValueError(f"quantizer kind {qm['spec'].get('kind')!r} is not a weight quantizer")
    rows, cols = shape
    row_bits = bits_from_runs(qm["row_bits"], rows)
    streams = {int(k.split(".", 1)[1]): get(v) for k, v in parts.items() if k.startswith("codes.")}
    stored = unpack_code_streams(streams, row_bits, keep, shape)
    layout = ScaleLayout(qm["scale_layout"], qm.get("group_size"))
    groups = int(qm["groups"]) if layout.kind == "group" else None
    stored_rows = row_bits > 0 if kept_rows is None else (row_bits > 0) & kept_rows
    pshape = layout.shape(rows, groups * layout.group_size if groups else cols)
    params = {}
    for pname in qm["params"]:
        vals = get(parts[pname]).float()
        if layout.per_row:  # stored for the stored rows of nonzero width only
            full = torch.zeros(pshape)
            full[stored_rows] = vals.reshape(int(stored_rows.sum()), *pshape[1:])
            vals = full
        params[pname] = vals.reshape(pshape)
    src_cols = None
    if "src_cols" in parts:
        src_cols = torch.nonzero(unpack_mask(get(parts["src_cols"]), (groups * layout.group_size,))).reshape(-1)
        if src_cols.numel() != cols:
            raise ValueError("src_cols does not match the number of columns")
    return q, Codes(stored=stored, row_bits=row_bits, params=params, layout=layout, src_cols=src_cols,
                    group_count=groups)


def decode_entry(name: str, e: dict[str, Any], get: Callable[[str], torch.Tensor],
                 row_codes: dict | None = None) -> torch.Tensor:
    """Dense float32 tensor of manifest entry ``e`` (``get(key)`` reads a stored tensor).

    With ``row_codes``, a weight whose quantizer gives integer levels with one scale per row
    (binary, ternary, symmetric int-k per row) also leaves ``row_codes[name] = (levels, scales)``:
    int8 levels of the dense shape (0 where nothing is stored) and float32 scales (rows,), so that
    the tensor equals ``levels * scales[:, None]`` bitwise (the runtime's exact integer products).
    """
    e = upgrade_entry(e)
    shape = tuple(int(s) for s in e["shape"])
    if len(shape) == 1 or not all(shape):
        if not all(shape):
            return torch.zeros(shape)
        return get(e["parts"]["values"]).float().reshape(shape)
    kept_rows, keep = _selection(e, shape, get)
    if e.get("quant") is None:
        vals = get(e["parts"]["values"]).float().reshape(-1)
        n = int(keep.sum()) if keep is not None else shape[0] * shape[1]
        if vals.numel() != n:
            raise ValueError(f"{n} values expected, {vals.numel()} stored")
        if keep is None:
            return vals.reshape(shape)
        out = torch.zeros(shape)
        out[keep] = vals
        return out
    q, codes = _entry_codes(e, shape, get, kept_rows, keep)
    out = q.decode(codes)
    if keep is not None:  # entries not stored are +0.0 whatever their code decodes to (binary: +-scale)
        out = torch.where(keep, out, torch.zeros((), dtype=out.dtype))
    if row_codes is not None:
        levels = q.int_levels(codes)
        if levels is not None and int(codes.row_bits.max()) <= 8:
            lv = levels * keep if keep is not None else levels
            row_codes[name] = (lv.to(torch.int8), codes.params["scales"].reshape(-1).float())
    return out


def _act_quant(config: dict[str, Any], get) -> dict[str, dict[str, Any]]:
    out = {}
    for lname, aq in (config.get("act_quant") or {}).items():
        out[lname] = {"spec": aq["spec"], "params": {k: get(v).float() for k, v in aq.items() if k != "spec"}}
    return out


def _vocab_map(config: dict[str, Any], get) -> torch.Tensor | None:
    vocab = config.get("vocab")
    if not (vocab and vocab.get("pruned")):
        return None
    keep = unpack_mask(get("emb.vocab_keep"), (int(vocab["original_size"]),))
    new_ids = torch.cumsum(keep.to(torch.int64), 0) - 1
    unk_old = int(vocab["unk_token_id"])
    unk_new = int(new_ids[unk_old]) if bool(keep[unk_old]) else 0
    out = torch.where(keep, new_ids, torch.full_like(new_ids, unk_new))
    if vocab.get("unseen") == "nearest":
        out = get("emb.vocab_map").to(torch.int64)
        if out.shape != keep.shape or int(out.max()) >= int(vocab["kept"]):
            raise ValueError("emb.vocab_map does not match the kept vocabulary")
    return out


def read_packed(path: str | os.PathLike, verify: bool = True) -> PackedWeights:
    """Verify (:func:`verify_packed`) and decode a packed directory to dense float32 tensors.

    Raises:
        UserError: the directory fails verification or its tensors cannot be decoded.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    manifest = verify_packed(p) if verify else json.loads((p / MANIFEST_FILE).read_text())
    try:
        config = json.loads((p / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_folder(p, f"{CONFIG_FILE} is not valid JSON ({e})") from None
    out = PackedWeights(path=p, manifest=manifest, config=config)
    try:
        with safe_open(str(p / WEIGHTS_FILE), framework="pt") as f:
            keys = set(f.keys())

            def get(key: str) -> torch.Tensor:
                if key not in keys:
                    raise KeyError(key)
                return f.get_tensor(key)

            for name, e in manifest["tensors"].items():
                out.tensors[name] = decode_entry(name, e, get, out.row_codes)
            out.act_quant = _act_quant(config, get)
            out.vocab_map = _vocab_map(config, get)
    except UserError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, SafetensorError, OSError) as e:
        raise bad_folder(p, f"its tensors cannot be decoded ({type(e).__name__}: {e})") from None
    return out


def load_packed_tokenizer(path: str | os.PathLike):
    """The tokenizer stored in a packed directory (None if it has none).

    Compressed files are expanded into a temporary folder first; only names listed in the manifest
    are read.
    """
    from transformers import AutoTokenizer

    p = Path(path)
    manifest = json.loads((p / MANIFEST_FILE).read_text())
    tok = [rel for rel in manifest.get("files", {}) if rel.startswith(TOKENIZER_DIR + "/")]
    if not tok:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for rel in tok:
            name = rel.split("/", 1)[1]
            if "/" in name or "\\" in name or name.startswith("."):
                raise bad_folder(p, f"invalid tokenizer file name {rel!r}")
            data = (p / rel).read_bytes()
            if name.endswith(".xz"):
                try:
                    data = lzma.decompress(data)
                except lzma.LZMAError as e:
                    raise bad_folder(p, f"tokenizer file {rel!r} cannot be decompressed ({e})") from None
                name = name[: -len(".xz")]
            (Path(tmp) / name).write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp)


def packed_size(path: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk of a packed directory: ``{"total", "weights", "tokenizer", "other"}``."""
    p = Path(path)
    total = weights = tok = 0
    for f in p.rglob("*"):
        if f.is_file():
            n = f.stat().st_size
            total += n
            rel = f.relative_to(p).as_posix()
            if rel == WEIGHTS_FILE:
                weights += n
            elif rel.startswith(TOKENIZER_DIR + "/"):
                tok += n
    return {"total": total, "weights": weights, "tokenizer": tok, "other": total - weights - tok}
