"""Save and load (possibly compressed) models as safetensors folders.

`save_model` writes a Hugging Face folder (config.json, model.safetensors, tokenizer files).
`load_model` reads it back with weights from safetensors only (never pickle).
The nn work extends this with `compression.json` so compressed layers are rebuilt on load.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_model(model: torch.nn.Module, tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_model(path: str | Path, **kwargs):
    """Return (model, tokenizer) from a folder written by :func:`save_model` or any HF folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer
