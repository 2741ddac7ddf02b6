"""Loading models for the verbs: with a head for a task, or as saved; quietly; with one error style.

Heavy libraries (torch, transformers) are imported inside the functions, so importing this module
stays cheap (a benchmark's ONNX Runtime child imports :func:`quiet_transformers` from here).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError
from .runs import MODEL_CONFIG_FILE, model_source


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load/save progress bars and 'newly initialized weights' warnings."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _fix_pad_token(model, tokenizer) -> None:
    # Some tokenizers (GPT-style BPE) have no pad token; batches need one, and RoBERTa-style models
    # derive position ids from it, so the model's config must agree with the tokenizer.
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.sep_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_for_task(model: str | os.PathLike, task) -> tuple[Any, Any]:
    """Load a model with a classification (or regression) head sized for ``task``, and its tokenizer.

    ``model`` is a local folder, a run directory (its ``model/``), a hub id or the alias
    ``minilm-l6`` (see :func:`compactbert.models.resolve_model`). A head of the wrong size is
    replaced by a new one. Weights are read from safetensors only.

    Raises:
        UserError: the model cannot be found or loaded.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .data.tasks import get_task
    from .models import resolve_model
    from .nn.io import COMPRESSION_FILE

    spec = get_task(task)
    path = resolve_model(model_source(model))
    if Path(path).is_dir() and (Path(path) / COMPRESSION_FILE).is_file():
        return _load_compressed_for_task(model, path, spec)
    kwargs = _head_kwargs(spec)
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            net = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, ignore_mismatched_sizes=True, trust_remote_code=False, **kwargs
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"cannot load model {str(model)!r} ({first_line(e)}); expected a Hugging Face model folder with "
                f"model.safetensors and tokenizer files, a hub id, or the alias 'minilm-l6'"
            ) from None
    _fix_pad_token(net, tokenizer)
    return net, tokenizer


def _head_kwargs(spec) -> dict[str, Any]:
    """``from_pretrained`` / config arguments of a head sized for the task ``spec``."""
    kwargs: dict[str, Any] = {
        "num_labels": spec.num_labels,
        "problem_type": "regression" if spec.is_regression else "single_label_classification",
    }
    if spec.label_names is not None:
        kwargs["id2label"] = dict(enumerate(spec.label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(spec.label_names)}
    return kwargs


def _load_compressed_for_task(model, path: str, spec) -> tuple[Any, Any]:
    """A compressed model folder (``compression.json``: masks, quantizers) with a head for ``spec``:
    its compressed layers are rebuilt and kept (a locked-mask transfer keeps them), a bare encoder
    (an upstream run) gets a new head."""
    net, tokenizer = load_saved(path, f"model {str(model)!r}", **_head_kwargs(spec))
    if tokenizer is None:
        raise UserError(f"model {str(model)!r} has no tokenizer files; expected a folder written by compactbert")
    _fix_pad_token(net, tokenizer)
    return net.train(), tokenizer


def load_saved(model_dir: str | os.PathLike, what: str = "model", headless: bool = False, **kwargs):
    """``(model, tokenizer)`` of a folder written by :func:`compactbert.nn.io.save_model` (compressed
    layers rebuilt), quietly; ``what`` names the folder in the error message. ``headless``: the bare
    encoder (see :func:`compactbert.nn.io.load_model`, which also takes ``kwargs``)."""
    from .nn.io import load_model

    with quiet_transformers():
        try:
            return load_model(Path(model_dir), headless=headless, **kwargs)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot load {what} {str(model_dir)!r}: {first_line(e)}") from None


def read_model_config(model: str | os.PathLike):
    """The transformers config of a model folder, hub id or alias (nothing else loaded)."""
    from transformers import AutoConfig

    from .models import resolve_model

    path = resolve_model(model)
    with quiet_transformers():
        try:
            return AutoConfig.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot load model {str(model)!r} ({first_line(e)})") from None


def config_json(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A model folder's ``config.json`` as a dict; None when it is missing or unreadable."""
    try:
        cfg = json.loads((Path(folder) / MODEL_CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def has_classification_head(config) -> bool:
    """True when a model config (a dict or a transformers config) names a sequence-classification
    architecture, i.e. the model was saved with a trained head."""
    archs = (config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None)) or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def config_num_labels(config: dict[str, Any]) -> int:
    """Output width of a ``config.json`` dict: ``num_labels``, else the size of ``id2label``, else 2
    (transformers' default)."""
    if "num_labels" in config:
        return int(config["num_labels"])
    if isinstance(config.get("id2label"), dict):
        return len(config["id2label"])
    return 2
