"""Export an encoder as a sentence-transformers model folder (``export --format sentence-transformers``).

The folder is what ``SentenceTransformer(DIR)`` loads, with no compactbert installed::

    modules.json                     Transformer -> Pooling (-> Normalize)
    config_sentence_transformers.json, sentence_bert_config.json (max_seq_length)
    1_Pooling/config.json            the pooling (mean for all-MiniLM-L6-v2), 2_Normalize/ if normalised
    config.json, model.safetensors   the bare encoder, FP32, dense
    tokenizer files
    onnx/model.onnx                  FP32 ONNX, output last_hidden_state (``backend="onnx"``)
    onnx/model_fp16.onnx             the same in float16
    onnx/model_qint8_avx512_vnni.onnx  ONNX Runtime dynamic int8 of model.onnx (``file_name=...``)
    compactbert_export.json          what was exported and what the format cannot carry

What it cannot carry: this is a dense float format. Pruned weights are stored as zeros and binary /
ternary / int-k weights as the float values they decode to, so the files are as large as the
uncompressed model's (the packed format is the small one). 8-bit activation quantizers are not part
of the PyTorch weights: ``model.safetensors`` computes without them (a W8A8 / W2A8 model's embeddings
then differ slightly from the trained model's), while ``onnx/model.onnx`` keeps them as graph ops.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ST_INFO_FILE", "ST_ONNX_FILES", "export_sentence_transformers", "is_sentence_transformers_export"]

ST_INFO_FILE = "compactbert_export.json"
ST_ONNX_DIR = "onnx"
ST_ONNX_FILES = ("model.onnx", "model_fp16.onnx", "model_qint8_avx512_vnni.onnx")


def _dense_encoder(model):
    """A float32 copy of the bare encoder with masks and weight quantization baked into plain
    weights (activation quantizers dropped); and how many activation quantizers were dropped."""
    from ..nn.surgery import bake

    base = copy.deepcopy(getattr(model, "base_model", model)).float().eval()
    dropped = sum(1 for m in base.modules() if getattr(m, "input_quantizer", None) is not None)
    bake(base)
    base.config.architectures = [type(base).__name__]
    return base, dropped


def _versions() -> dict[str, str]:
    """The library versions the folder was written with (sentence-transformers' only if installed)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    out = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        out = {"sentence_transformers": version("sentence-transformers"), **out}
    except PackageNotFoundError:
        pass
    return out


def _write_onnx(model, out: Path) -> dict[str, str]:
    """``onnx/model.onnx`` (activation quantizers as trained), its fp16 and dynamic-int8 versions."""
    from .onnx import export_onnx, quantize_onnx_int8

    folder = out / ST_ONNX_DIR
    fp32 = export_onnx(model.float().eval(), None, folder, output="last_hidden_state")
    files = {"fp32": f"{ST_ONNX_DIR}/{ST_ONNX_FILES[0]}"}
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.save(half, str(folder / ST_ONNX_FILES[1]))
        files["fp16"] = f"{ST_ONNX_DIR}/{ST_ONNX_FILES[1]}"
    except Exception as e:  # noqa: BLE001 - an fp16 graph is optional: say why there is none
        files["fp16"] = f"not written: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    quantize_onnx_int8(fp32, folder / ST_ONNX_FILES[2], per_channel=False, reduce_range=False)
    files["int8"] = f"{ST_ONNX_DIR}/{ST_ONNX_FILES[2]}"
    return files


def export_sentence_transformers(model, tokenizer, pooling, out_dir: str | os.PathLike, onnx: bool = True) -> Path:
    """Write ``model``'s encoder as a sentence-transformers folder (see the module docstring).

    Args:
        model: a bare encoder or a classifier (its head is left out), possibly with compressed layers.
        tokenizer: its tokenizer.
        pooling: the :class:`~compactbert.nn.pooling.Pooling` to declare.
        out_dir: the folder to write (created).
        onnx: also write the ``onnx/`` files.

    Returns:
        ``out_dir`` as a Path.
    """
    from ..nn.pooling import write_sentence_transformers_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dense, dropped = _dense_encoder(model)
    dense.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if pooling.max_seq_length is None:
        from dataclasses import replace

        pooling = replace(pooling, max_seq_length=int(getattr(dense.config, "max_position_embeddings", 512) or 512))
    write_sentence_transformers_config(out, pooling, int(dense.config.hidden_size))
    if pooling.normalize:
        (out / "2_Normalize").mkdir(exist_ok=True)
    st = {"__version__": _versions(), "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (out / "config_sentence_transformers.json").write_text(json.dumps(st, indent=2) + "\n")
    info: dict[str, Any] = {
        "format": "sentence-transformers", "pooling": pooling.to_dict(source=False),
        "weights": "model.safetensors: float32, dense (pruned weights stored as zeros, quantized weights as the "
                   "float values they decode to): not smaller than the uncompressed model",
        "activation_quantizers": (f"{dropped} 8-bit activation quantizers are not in model.safetensors (PyTorch "
                                  "computes without them); onnx/model.onnx keeps them as graph ops") if dropped else "none",
    }
    if onnx:
        info["onnx"] = _write_onnx(copy.deepcopy(getattr(model, "base_model", model)), out)
    (out / ST_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def is_sentence_transformers_export(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier sentence-transformers export (``export`` may replace it)."""
    return (folder / ST_INFO_FILE).is_file() and (folder / "modules.json").is_file()
