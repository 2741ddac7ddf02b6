"""Hostile packed directories for the tests: a small valid one that uses every part of the format,
and the tools an attacker has (rewrite any file, then make every hash in the manifest match).

Used by tests/test_packed_hostile.py (one test per named attack) and tests/test_fuzz_packed.py
(seeded mutations run through the CLI).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
from pathlib import Path
from typing import Any

import torch

from toy import make_tiny_model, toy_vocab, write_toy_glue

TEXTS = ["a good film", "a bad film", "great fun and moving", "dull flat and boring"]


def build_base(root: Path) -> tuple[Path, Path]:
    """A valid packed directory of a tiny compressed BERT (2 labels, tokenizer included) and a toy
    SST-2 data root. The model has binary, ternary, int4 group and int8 weights, a float weight with
    an unstructured mask (bitmask encoding) and one with whole rows removed (rows encoding), dynamic
    8-bit inputs on Q/K/V, a calibrated static 8-bit input on an FFN, and a pruned vocabulary that
    maps unseen tokens to the nearest kept one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compactbert.export.pack import export_packed
    from compactbert.nn.quantizers import (BinaryQuantizer, DynamicActQuantizer, IntQuantizer, StaticActQuantizer,
                                           TernaryQuantizer, calibration)
    from compactbert.nn.surgery import compress_modules, encoder_linear_patterns

    src = make_tiny_model(root / "model", num_labels=2, hidden_size=32, num_heads=2, dropout=0.0)
    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    layers = list(compress_modules(model, encoder_linear_patterns(model)).values())
    kinds = [BinaryQuantizer, TernaryQuantizer, lambda: IntQuantizer(4, granularity="group", group_size=16),
             lambda: None, lambda: IntQuantizer(8), lambda: None]
    for j, layer in enumerate(layers):
        layer.weight_quantizer = kinds[j % len(kinds)]()
    g = torch.Generator().manual_seed(0)
    layers[3].weight_mask = (torch.rand(layers[3].weight.shape, generator=g) > 0.5).float()  # bitmask
    m = torch.ones_like(layers[5].weight)
    m[3:9] = 0
    layers[5].weight_mask = m  # whole rows: the rows encoding
    for layer in layers[:3]:
        layer.input_quantizer = DynamicActQuantizer(8)
    layers[10].input_quantizer = StaticActQuantizer(8)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad(), calibration(model):
        model(**enc)
    out = root / "packed"
    export_packed(model, tok, out, prune_vocab_texts=TEXTS, unseen_tokens="nearest")
    data = write_toy_glue(root / "glue", "sst2", n_train=4, n_dev=6)
    return out, data


def copy_packed(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest)
    return dest


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


def rehash(folder: Path) -> dict[str, Any]:
    """Make the manifest's file list, hashes and byte counts match the files as they now are (what
    an attacker does after any edit); returns the manifest written."""
    m = read_json(folder / "manifest.json")
    files = {}
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder).as_posix()
        if f.is_file() and rel != "manifest.json" and not rel.startswith("bench"):
            data = f.read_bytes()
            files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    m["files"] = files
    if "model.safetensors" in files:
        m["weights_bytes"] = files["model.safetensors"]["bytes"]
    m["tokenizer_bytes"] = sum(v["bytes"] for k, v in files.items() if k.startswith("tokenizer/"))
    write_json(folder / "manifest.json", m)
    return m


def edit_json(folder: Path, name: str, fn) -> None:
    """``fn(value)`` edits ``folder/name`` (parsed) in place (or returns a replacement); then rehash."""
    path = folder / name
    value = read_json(path)
    new = fn(value)
    write_json(path, value if new is None else new)
    rehash(folder)


def replace_tensors(folder: Path, fn) -> None:
    """``fn(tensors)`` edits the dict of ``model.safetensors``'s tensors; rewritten, then rehash."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    m = read_json(folder / "manifest.json")
    m["payload_bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(folder / "manifest.json", m)
    rehash(folder)


def write_tokenizer_file(folder: Path, name: str, data: bytes, compress: bool = False) -> None:
    """Add (or replace) ``tokenizer/name`` (xz-compressed as ``name.xz`` with ``compress``); then rehash."""
    tdir = folder / "tokenizer"
    tdir.mkdir(exist_ok=True)
    for old in (tdir / name, tdir / (name + ".xz")):
        if old.exists():
            old.unlink()
    if compress:
        (tdir / (name + ".xz")).write_bytes(lzma.compress(data, preset=1))
    else:
        (tdir / name).write_bytes(data)
    rehash(folder)


def vocab_size() -> int:
    return len(toy_vocab())


def inflate(folder: Path, **dims: int) -> None:
    """A careful attacker's large model in a few KB: change config dimensions (``ffn=`` sets every
    layer's FFN width), rewrite every shape to match, and store every matrix in the ``rows``
    encoding with one kept row and column (two small bitmaps and one value), dropping the
    optional biases. Everything adds up except the payload: decoded, the model is huge."""
    import math as _math

    from compactbert.export.format.check import expected_tensors
    from safetensors.torch import load_file, save_file

    cfg = read_json(folder / "config.json")
    ffn = dims.pop("ffn", None)
    cfg.update(dims)
    if ffn is not None:
        cfg["ffn_per_layer"] = [ffn] * len(cfg["ffn_per_layer"])
    req, opt = expected_tensors(cfg)
    m = read_json(folder / "manifest.json")
    old = load_file(str(folder / "model.safetensors"))
    tensors = {k: old[k] for k in m["extra_tensors"]}
    entries = {}
    for name, e in m["tensors"].items():
        if name not in req and (len(opt.get(name, ())) == 1 or name not in opt):
            continue  # an optional bias (or a tensor the new config does not have)
        shape = list(req.get(name) or opt[name])
        n = _math.prod(shape)
        entry = {"shape": shape, "bits": 16, "dtype": "float16", "quant": None, "source": e.get("source")}
        if len(shape) == 1 or n == 0:
            parts = {"values": name} if n else {}
            if n:
                tensors[name] = torch.zeros(n, dtype=torch.float16)
            entry.update(encoding="dense", parts=parts)
        else:
            for part, size in (("rows", shape[0]), ("cols", shape[1])):
                bitmap = torch.zeros((size + 7) // 8, dtype=torch.uint8)
                bitmap[0] = 1
                tensors[f"{name}.{part}"] = bitmap
            tensors[f"{name}.values"] = torch.ones(1, dtype=torch.float16)
            entry.update(encoding="rows", parts={p: f"{name}.{p}" for p in ("rows", "cols", "values")})
        entry["bytes"] = sum(tensors[k].numel() * tensors[k].element_size() for k in entry["parts"].values())
        entries[name] = entry
    save_file(tensors, str(folder / "model.safetensors"))
    m["tensors"] = entries
    m["payload_bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(folder / "manifest.json", m)
    write_json(folder / "config.json", cfg)
    rehash(folder)
