"""Names and versions of the packed format (the writer and the reader share them)."""

from __future__ import annotations

import torch

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "READABLE_VERSIONS", "MANIFEST_FILE", "WEIGHTS_FILE", "CONFIG_FILE",
           "TOKENIZER_DIR", "FLOAT_DTYPES"]

FORMAT_NAME = "compactbert-packed"
#: 2: per-row bit widths (``quant.row_bits``), codes stored per width (``parts["codes.<bits>"]``),
#: named quantizer parameters (``quant.params``); 1: one width per tensor, ``level_step``/``level_offset``.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
