"""Save and load (possibly compressed) models as safetensors folders.

`save_model` writes a Hugging Face folder (config.json, model.safetensors, tokenizer files) and,
when the model has compressed layers, ``compression.json`` (:func:`~compactbert.nn.surgery.compression_spec`).
`load_model` reads it back with weights from safetensors only (never pickle). For a compressed
folder it builds the model from its config, rebuilds the CompressedLinear / CompressedEmbedding
structure from ``compression.json`` and only then loads the state dict, so masks and learned
quantizer parameters come back and the logits are identical to the saved model's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError

COMPRESSION_FILE = "compression.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")


def save_model(model: torch.nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` (+ ``tokenizer`` unless None) to ``out_dir`` as safetensors.

    Compressed layers are described in ``compression.json``; a stale one is removed when the
    model has none.
    """
    from .surgery import compressed_modules, compression_spec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    spec_path = out / COMPRESSION_FILE
    if compressed_modules(model):
        tmp = spec_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(compression_spec(model), indent=2) + "\n")
        tmp.replace(spec_path)
    elif spec_path.exists():
        spec_path.unlink()
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder's (possibly sharded) safetensors weights."""
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    raise UserError(f"{path}: no model.safetensors (or its index) found; weights are read from safetensors only")


def _load_compressed(path: Path, **kwargs) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .surgery import apply_compression_spec

    spec_file = path / COMPRESSION_FILE
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{spec_file}: cannot read the compression spec: {e}") from None
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
    apply_compression_spec(model, spec, source=str(spec_file))
    state = _read_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    tied = set()
    for keys in (getattr(model, "_tied_weights_keys", None) or []):
        tied.update([keys] if isinstance(keys, str) else keys)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{path}: the weights do not match the model rebuilt from config.json and {COMPRESSION_FILE} "
            f"(missing: {missing[:3]}, unexpected: {result.unexpected_keys[:3]})"
        )
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
    if dtype is not None and dtype != "auto":
        model.to(dtype)
    model.eval()
    return model


def load_model(path: str | Path, **kwargs):
    """Return ``(model, tokenizer)`` from a folder written by :func:`save_model` or any HF folder.

    The tokenizer is None when the folder has no tokenizer files. A path that is not a folder is
    passed to ``from_pretrained`` as a hub id. ``kwargs`` go to ``from_pretrained`` for plain
    folders (only ``dtype`` is honoured for compressed ones).

    Raises:
        UserError: the folder has no config.json, or its weights do not match compression.json.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    p = Path(path)
    if not p.is_dir():  # a hub id (models.resolve_model may return one): plain transformers loading
        model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True, trust_remote_code=False, **kwargs)
        return model, AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if not (p / "config.json").is_file():
        raise UserError(f"model folder {str(path)!r} has no config.json; expected a folder written by save_model")
    from ..models import check_weight_files

    check_weight_files(p)  # a truncated file: one clear error instead of the safetensors library's
    if (p / COMPRESSION_FILE).is_file():
        model = _load_compressed(p, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(p), use_safetensors=True, trust_remote_code=False, **kwargs)
    tokenizer = None
    if any((p / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
    return model, tokenizer
