"""``size``: the bytes a model takes stored packed, predicted from a run or model folder, or read
from a packed directory's manifest."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..errors import UserError
from ..loading import load_saved
from ..runs import MODEL, ONNX, OTHER, PACKED, RUN, SIZE_FILE, open_path


def size(path: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Packed-size report of a run directory or model folder; writes ``size.json``.

    Tensors without a quantizer are counted at 16 bits, as ``compactbert export`` stores them
    (:data:`compactbert.defaults.PACKED_FLOAT_BITS`), so ``compressed_bytes`` predicts the packed
    directory's size. The report lists every tensor (bits, parameters, sparsity, bytes) and the
    totals ``dense_fp32_bytes``, ``compressed_bytes`` and ``ratio``. It is written to ``out``, or to
    ``PATH/size.json`` for a run directory.
    """
    from ..train.checkpoint import atomic_write_json

    target = open_path(path)
    if target.kind not in (RUN, PACKED, ONNX, MODEL, OTHER):
        raise UserError(f"{str(path)!r} does not exist; expected a run directory or a model folder")
    if out is not None:  # never a file of the model being measured (its config.json ...)
        from ..outdir import check_not_source

        check_not_source(out, [target.model_dir()])
    if target.kind == PACKED:  # a packed directory: what it stores, from its manifest
        report = packed_size_report(target.path)
        if out is not None:
            atomic_write_json(Path(out), report)
        return report
    net, tok = load_saved(target.model_dir(), "model")
    report = model_size_report(net, tok)
    dest = Path(out) if out is not None else (target.path / SIZE_FILE if target.kind == RUN else None)
    if dest is not None:
        atomic_write_json(dest, report)
    return report


def model_size_report(net, tokenizer) -> dict[str, Any]:
    """:func:`compactbert.size.size_report` of a model as ``export`` stores it, plus the tokenizer
    (:func:`packed_extras`)."""
    from ..size import size_report

    report = size_report(net, uncompressed_bits=D.PACKED_FLOAT_BITS)
    report.update(packed_extras(tokenizer, report["compressed_bytes"]))
    return report


def packed_extras(tokenizer, weights_bytes: int) -> dict[str, int]:
    """What a packed directory adds to the weights: the xz tokenizer, exactly as ``export`` writes
    it, and ``predicted_files_bytes`` (weights + tokenizer; the JSON files add a few KB)."""
    from ..export.pack import tokenizer_files

    tok = sum(len(b) for _, b in tokenizer_files(tokenizer)) if tokenizer is not None else 0
    return {"tokenizer_bytes": tok, "predicted_files_bytes": weights_bytes + tok}


def packed_size_report(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`size`'s report for a packed directory, read from its (verified) manifest.

    ``dense_fp32_bytes`` counts the stored tensors' shapes at 4 bytes (after physical removal of
    pruned heads/neurons and vocabulary pruning); ``files_bytes`` is the directory on disk.
    """
    from ..export.pack import check_packed, packed_size

    manifest = check_packed(path)[0]  # verified, and its shapes, bits and bytes add up
    tensors = []
    for name, t in manifest["tensors"].items():
        params = math.prod(t["shape"])
        tensors.append({
            "name": t.get("source") or name, "shape": t["shape"], "params": params, "bits": t["bits"],
            "sparsity": 0.0, "encoding": t["encoding"], "bytes": t["bytes"],
        })
    dense = sum(4 * t["params"] for t in tensors)
    return {
        "tensors": tensors, "uncompressed_bits": manifest.get("uncompressed_bits", D.PACKED_FLOAT_BITS),
        "dense_fp32_bytes": dense, "compressed_bytes": manifest["payload_bytes"],
        "ratio": dense / max(1, manifest["payload_bytes"]), "files_bytes": packed_size(path)["total"],
    }
