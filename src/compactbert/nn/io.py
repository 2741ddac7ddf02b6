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
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({type(e).__name__})") from None
        bad = [s for s in shards if not isinstance(s, str) or Path(s).name != s or not (path / s).is_file()]
        if bad:  # a shard outside the folder (or missing) is not read
            raise UserError(f"{index}: shard {str(bad[0])!r} is not a file in {str(path)!r}")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    raise UserError(f"{path}: no model.safetensors (or its index) found; weights are read from safetensors only")


def saved_headless(config) -> bool:
    """True when a saved model's config names a bare encoder (``BertModel``: no task head), as
    upstream compression on a corpus saves it."""
    archs = (config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)) or []
    return bool(archs) and not any("For" in a for a in archs)


def _load_compressed(path: Path, headless: bool = False, **kwargs) -> torch.nn.Module:
    """A compressed folder, rebuilt. The spec's module names are those of the model as saved: a
    bare encoder's (``encoder.layer.0...``) or a classifier's (``bert.encoder.layer.0...``). Loaded
    as a classifier (``headless=False``), a bare encoder gets a new head (``kwargs``: ``num_labels``,
    ``problem_type``, ``id2label``, ``label2id``) around its compressed encoder; a classifier's head
    of another size is replaced by a new one."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from .surgery import apply_compression_spec

    spec_file = path / COMPRESSION_FILE
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{spec_file}: cannot read the compression spec: {e}") from None
    head_kwargs = {k: kwargs[k] for k in ("num_labels", "problem_type", "id2label", "label2id") if k in kwargs}
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, **head_kwargs)
    bare = saved_headless(config)
    if headless and bare:
        model = AutoModel.from_config(config, trust_remote_code=False)
    else:
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
    target = model.base_model if bare else model  # the module the saved names are relative to
    apply_compression_spec(target, spec, source=str(spec_file))
    _load_state(path, target, replaceable=() if bare else _head_names(model))
    dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
    if dtype is not None and dtype != "auto":
        model.to(dtype)
    model.eval()
    return model.base_model if headless and not bare else model


def _head_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Parameter names of a classifier's head (outside its base model): a saved head of another
    size is left at its new initialisation."""
    base = {id(p) for p in model.base_model.parameters()}
    return tuple(n for n, p in model.named_parameters() if id(p) not in base)


def _load_state(path: Path, model: torch.nn.Module, replaceable: tuple[str, ...] = ()) -> None:
    """Load the folder's weights into ``model`` (built from its config and compression spec).

    Raises:
        UserError: a weight is missing or left over (the spec and the weights do not match).
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    for name in replaceable:  # a head sized for another task: keep the new one
        if name in state and name in own and state[name].shape != own[name].shape:
            del state[name]
    result = model.load_state_dict(state, strict=False)
    tied = set()
    for keys in (getattr(model, "_tied_weights_keys", None) or []):
        tied.update([keys] if isinstance(keys, str) else keys)
    missing = [k for k in result.missing_keys if k not in tied and k not in replaceable]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{path}: the weights do not match the model rebuilt from config.json and {COMPRESSION_FILE} "
            f"(missing: {missing[:3]}, unexpected: {result.unexpected_keys[:3]})"
        )
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()


def load_model(path: str | Path, headless: bool = False, **kwargs):
    """Return ``(model, tokenizer)`` from a folder written by :func:`save_model` or any HF folder.

    The tokenizer is None when the folder has no tokenizer files. A path that is not a folder is
    passed to ``from_pretrained`` as a hub id. ``kwargs`` go to ``from_pretrained`` for plain
    folders (for compressed ones: ``dtype`` and the head's ``num_labels``, ``problem_type``,
    ``id2label``, ``label2id``). ``headless``: the bare encoder (``AutoModel``; a classifier's
    base model), else a sequence classifier (a bare encoder's folder gets a new head).

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
        model = _load_compressed(p, headless=headless, **kwargs)
    elif headless:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(p), use_safetensors=True, trust_remote_code=False, **kwargs)
        model = model.base_model
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(p), use_safetensors=True, trust_remote_code=False, **kwargs)
    tokenizer = None
    if any((p / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
    return model, tokenizer
