"""Reading a packed directory: verification, then every tensor decoded to dense float32.

Format versions 1 and 2 are read. A version-1 entry (one width per tensor, parts ``codes``,
``scales``, ``zero_points``) is read as the version-2 entry it is equivalent to (one run of
``row_bits``, ``codes.<bits>``, named parameters); its quantizer decodes it, as in version 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ...errors import UserError
from ...fileio import sha256_file
from ...nn.quant import ActivationQuantizer, Codes, ScaleLayout, WeightQuantizer, quantizer_class, quantizer_from_spec
from ...nn.quant.codes import bits_from_runs
from ..bits import unpack_mask
from .check import Stored, check_count, check_tensors, read_header
from .constants import CONFIG_FILE, MANIFEST_FILE, TOKENIZER_DIR, WEIGHTS_FILE
from .encode import unpack_code_streams
from .schema import bad_folder, parse_config, parse_manifest, read_json
from .tokenizer import check_tokenizer_dir, load_packed_tokenizer, tokenizer_file_ok

__all__ = ["PackedWeights", "verify_packed", "check_packed", "read_packed", "load_packed_tokenizer", "packed_size",
           "upgrade_entry", "decode_entry", "bad_folder"]


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


def _check_files(p: Path, files: dict[str, Any]) -> None:
    if WEIGHTS_FILE not in files or CONFIG_FILE not in files:
        raise bad_folder(p, f"{MANIFEST_FILE} does not list {WEIGHTS_FILE} and {CONFIG_FILE}")
    for rel, info in files.items():
        fp = (p / rel).resolve()
        allowed = rel in (WEIGHTS_FILE, CONFIG_FILE) or (
            rel.startswith(TOKENIZER_DIR + "/") and tokenizer_file_ok(rel[len(TOKENIZER_DIR) + 1 :]))
        if p.resolve() not in fp.parents or not allowed:
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
    return _manifest(Path(path), hashes=True)


def _manifest(p: Path, hashes: bool) -> dict[str, Any]:
    if not p.is_dir():
        raise UserError(f"packed model {str(p)!r} is not a directory; expected a folder written by `compactbert export`")
    mpath = p / MANIFEST_FILE
    if not mpath.is_file():
        raise UserError(
            f"{str(p)!r} has no {MANIFEST_FILE}: not a packed model folder, or one whose manifest is missing "
            "(expected a folder written by `compactbert export`)"
        )
    manifest = parse_manifest(read_json(mpath, p, MANIFEST_FILE), p)
    if hashes:
        _check_files(p, manifest["files"])
    check_tokenizer_dir(p)
    return manifest


def check_packed(path: str | os.PathLike, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any], dict[str, Stored]]:
    """Everything but decoding: :func:`verify_packed` (``verify``: with the sha256 of every file),
    the strict schema of the config, and that manifest, config and the safetensors header add up
    (:func:`.check.check_tensors`: shapes, parts, bytes, and a model no larger than its payload
    justifies).

    Returns:
        (manifest, config, safetensors header).

    Raises:
        UserError: the first problem, in one line.
    """
    p = Path(path)
    manifest = _manifest(p, hashes=verify)
    config = parse_config(read_json(p / CONFIG_FILE, p, CONFIG_FILE), p)
    header = read_header(p / WEIGHTS_FILE, p)
    files = manifest["files"]
    if manifest["weights_bytes"] != files[WEIGHTS_FILE]["bytes"] or manifest["tokenizer_bytes"] != sum(
            v["bytes"] for k, v in files.items() if k.startswith(TOKENIZER_DIR + "/")):
        raise bad_folder(p, "weights_bytes or tokenizer_bytes in the manifest do not match its files")
    check_tensors(manifest, config, header, p)
    return manifest, config, header


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
        params = {k: get(v).float() for k, v in aq.items() if k != "spec"}
        kw = dict(aq["spec"])
        cls = quantizer_class(kw.pop("kind"), f"act_quant.{lname}: activation quantizer kind")
        if not issubclass(cls, ActivationQuantizer):
            raise ValueError(f"act_quant.{lname}: {cls.kind!r} is not an activation quantizer")
        cls.from_packed(kw, params)  # what the runtime builds: refused here if it cannot be
        out[lname] = {"spec": aq["spec"], "params": params}
    return out


def _vocab_map(config: dict[str, Any], get) -> torch.Tensor | None:
    vocab = config.get("vocab")
    if not (vocab and vocab.get("pruned")):
        return None
    keep = unpack_mask(get("emb.vocab_keep"), (int(vocab["original_size"]),))
    check_count("emb.word.weight", "emb.vocab_keep", int(keep.sum()), int(vocab["kept"]))
    new_ids = torch.cumsum(keep.to(torch.int64), 0) - 1
    unk_old = int(vocab["unk_token_id"])
    unk_new = int(new_ids[unk_old]) if bool(keep[unk_old]) else 0
    out = torch.where(keep, new_ids, torch.full_like(new_ids, unk_new))
    if vocab.get("unseen") == "nearest":
        out = get("emb.vocab_map").to(torch.int64)
        if out.shape != keep.shape or int(out.min()) < 0 or int(out.max()) >= int(vocab["kept"]):
            raise ValueError("emb.vocab_map does not match the kept vocabulary")
    return out


def read_packed(path: str | os.PathLike, verify: bool = True) -> PackedWeights:
    """Check (:func:`check_packed`; ``verify``: with every file's sha256) and decode a packed
    directory to dense float32 tensors. Nothing is decoded before the checks pass, so what is
    allocated is bounded by the payload (:mod:`.check`).

    Raises:
        UserError: the directory fails a check or its tensors cannot be decoded (one line).
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    manifest, config, header = check_packed(p, verify=verify)
    out = PackedWeights(path=p, manifest=manifest, config=config)
    try:
        with safe_open(str(p / WEIGHTS_FILE), framework="pt") as f:

            def get(key: str) -> torch.Tensor:
                if key not in header:
                    raise KeyError(key)
                return f.get_tensor(key)

            for name, e in manifest["tensors"].items():
                out.tensors[name] = decode_entry(name, e, get, out.row_codes)
            out.act_quant = _act_quant(config, get)
            out.vocab_map = _vocab_map(config, get)
    except UserError as e:
        raise bad_folder(p, str(e)) if "packed model" not in str(e) else e from None
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError, SafetensorError, OSError) as e:
        raise bad_folder(p, f"its tensors cannot be decoded ({type(e).__name__}: {e})") from None
    return out


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
