"""Sentence-embedding pooling, as a sentence-transformers model folder describes it.

A sentence-transformers folder has ``modules.json`` (the module chain: Transformer, Pooling,
Normalize), ``1_Pooling/config.json`` (which pooling: ``pooling_mode_mean_tokens`` ...) and
``sentence_bert_config.json`` (``max_seq_length``). :func:`read_pooling` reads them into a
:class:`Pooling`; :func:`pool` applies it to token states. all-MiniLM-L6-v2 (the embedded
``minilm-l6``) pools by the mean over the attention mask and L2-normalises.

This module imports only torch (lazily), so the runtime can use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["Pooling", "POOLING_MODES", "DEFAULT_POOLING", "read_pooling", "pooling_from_dict", "pool",
           "write_sentence_transformers_config"]

# sentence-transformers' config key -> our mode name
POOLING_MODES = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
MODULES_FILE = "modules.json"
ST_CONFIG_FILE = "sentence_bert_config.json"


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence vector.

    Attributes:
        mode: ``"mean"`` (over the attention mask), ``"cls"`` (the first token), ``"max"`` (over the
            mask) or ``"mean_sqrt_len"`` (the masked sum over the square root of the length).
        normalize: L2-normalise the vector (a ``Normalize`` module).
        max_seq_length: the tokenizer truncation the model was trained with, or None.
        source: where this came from (a folder, or ``"default"``).
    """

    mode: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None
    source: str = "default"

    def to_dict(self, source: bool = True) -> dict[str, Any]:
        """The fields as a dict (without ``source`` for storing in a model, where a local path means nothing)."""
        d = asdict(self)
        if not source:
            d.pop("source")
        return d


DEFAULT_POOLING = Pooling()


def pooling_from_dict(d: dict[str, Any], where: str) -> Pooling:
    """A :class:`Pooling` from :meth:`Pooling.to_dict` output (e.g. a packed config); UserError if invalid."""
    mode = d.get("mode")
    if mode not in POOLING_MODES.values():
        raise UserError(f"{where}: pooling mode {mode!r} is not supported; valid: {', '.join(POOLING_MODES.values())}")
    msl = d.get("max_seq_length")
    return Pooling(mode, bool(d.get("normalize", True)), int(msl) if msl else None, str(d.get("source", where)))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the sentence-transformers config {str(path)!r}: {e}") from None


def _pooling_mode(path: Path) -> str:
    cfg = _read_json(path)
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object with pooling_mode_* flags")
    on = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True)
    valid = ", ".join(POOLING_MODES)
    if len(on) != 1 or on[0] not in POOLING_MODES:
        what = " + ".join(on) if on else "no pooling mode"
        raise UserError(f"{path}: pooling {what} is not supported; valid: exactly one of {valid}")
    return POOLING_MODES[on[0]]


def read_pooling(folder: str | os.PathLike) -> Pooling | None:
    """The pooling a sentence-transformers model folder declares, or None when it has no ``modules.json``.

    Raises:
        UserError: unreadable files, a module other than Transformer / Pooling / Normalize (a Dense
            projection, ...), or a pooling mode that is not one of :data:`POOLING_MODES` (one at a time).
    """
    folder = Path(folder)
    modules_path = folder / MODULES_FILE
    if not modules_path.is_file():
        return None
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise UserError(f"{modules_path}: expected a JSON list of modules")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    for kind in kinds:
        if kind not in _SUPPORTED_MODULES:
            raise UserError(f"{modules_path}: module type {kind!r} is not supported; supported: "
                            f"{', '.join(_SUPPORTED_MODULES)}")
    if "Pooling" not in kinds:
        raise UserError(f"{modules_path}: no Pooling module; expected sentence_transformers.models.Pooling")
    pooling_path = folder / str(kinds["Pooling"].get("path", "")) / "config.json"
    mode = _pooling_mode(pooling_path)
    msl = None
    if (folder / ST_CONFIG_FILE).is_file():
        st = _read_json(folder / ST_CONFIG_FILE)
        if isinstance(st, dict) and isinstance(st.get("max_seq_length"), int) and st["max_seq_length"] > 0:
            msl = int(st["max_seq_length"])
    return Pooling(mode, "Normalize" in kinds, msl, str(folder))


def pool(hidden, attention_mask, pooling: Pooling | str = DEFAULT_POOLING):
    """Sentence vectors from token states.

    Args:
        hidden: (batch, seq, dim) float tensor of last-layer token states.
        attention_mask: (batch, seq) 1 for tokens, 0 for padding (None: no padding).
        pooling: a :class:`Pooling` or a mode name (then not normalised).

    Returns:
        (batch, dim) float32; L2-normalised when ``pooling.normalize``.
    """
    import torch
    import torch.nn.functional as F

    p = pooling if isinstance(pooling, Pooling) else Pooling(str(pooling), normalize=False)
    h = hidden.float()
    if attention_mask is None:
        attention_mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
    m = attention_mask.to(h.dtype).unsqueeze(-1)  # (batch, seq, 1)
    if p.mode == "cls":
        out = h[:, 0]
    elif p.mode == "max":
        out = h.masked_fill(m == 0, -1e9).max(dim=1).values
    elif p.mode in ("mean", "mean_sqrt_len"):
        total, n = (h * m).sum(dim=1), m.sum(dim=1)
        out = total / n.clamp(min=1e-9) if p.mode == "mean" else total / n.clamp(min=1e-9).sqrt()
    else:
        raise UserError(f"pooling mode {p.mode!r} is not supported; valid: {', '.join(POOLING_MODES.values())}")
    return F.normalize(out, p=2, dim=-1) if p.normalize else out


def write_sentence_transformers_config(folder: str | os.PathLike, pooling: Pooling, dim: int) -> None:
    """Write ``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json`` into a model folder."""
    folder = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if pooling.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    flags = {"word_embedding_dimension": int(dim)}
    flags.update({k: v == pooling.mode for k, v in POOLING_MODES.items()})
    (folder / MODULES_FILE).write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(flags, indent=2))
    st = {"max_seq_length": pooling.max_seq_length or 256, "do_lower_case": False}
    (folder / ST_CONFIG_FILE).write_text(json.dumps(st, indent=2))
