"""Layer reduction (XTC): initialise a shallower student from a subset of the teacher's layers.

``keep: [1, 3, 5]`` keeps the teacher's layers 1, 3 and 5 (0-based), in that order, together with
the embeddings and the pooler / classification head; the other layers are dropped. XTC takes every
other layer of a 12-layer BERT-base (``[1, 3, 5, 7, 9, 11]``) and then trains the student with
distillation (put a ``distillation`` method after this one in the same stage: its default layer map
follows the kept layers).

Works on the layouts where the encoder layers are a ``ModuleList``: BERT / MiniLM / ELECTRA
(``<base>.encoder.layer``), RoBERTa / XLM-R (same) and DistilBERT (``distilbert.transformer.layer``).

Example:
    >>> student = reduce_layers(copy.deepcopy(teacher), [1, 3, 5])   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from pydantic import field_validator

from ..errors import UserError
from ..registry import register_method
from .base import Method, TrainState

# Where the layers of known encoders live, relative to ``model.base_model``.
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")

# The config key that records which teacher layers a reduced model was built from.
KEPT_LAYERS_KEY = "compactbert_kept_layers"


def encoder_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """Find the encoder's list of transformer layers.

    Returns:
        ``(parent, attribute, layers)`` so that ``getattr(parent, attribute) is layers``.

    Raises:
        UserError: if the model has no known layer list.
    """
    base = getattr(model, "base_model", model)
    for path in _LAYER_PATHS:
        *parents, attr = path.split(".")
        parent: object = base
        for part in parents:
            parent = getattr(parent, part, None)
        layers = getattr(parent, attr, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return parent, attr, layers  # type: ignore[return-value]
    raise UserError(
        f"cannot find the transformer layers of {type(model).__name__}: layer reduction and layer maps "
        f"support BERT, RoBERTa, ELECTRA, MiniLM and DistilBERT layouts ({', '.join(_LAYER_PATHS)})"
    )


def num_layers(model: torch.nn.Module) -> int:
    """Number of transformer layers of ``model``."""
    return len(encoder_layers(model)[2])


def check_keep(keep: Sequence[int], n_layers: int, where: str = "layer_reduction.keep") -> list[int]:
    """Validate a list of 0-based layer indices against a model with ``n_layers`` layers."""
    keep = list(keep)
    if not keep:
        raise UserError(f"{where}: the list is empty; give at least one 0-based layer index, e.g. [1, 3, 5]")
    for i in keep:
        if isinstance(i, bool) or not isinstance(i, int):
            raise UserError(f"{where}: {i!r} is not a layer index; use whole numbers 0..{n_layers - 1}")
        if not 0 <= i < n_layers:
            raise UserError(
                f"{where}: layer {i} is out of range for a teacher with {n_layers} layers (valid: 0..{n_layers - 1})"
            )
    if any(b <= a for a, b in zip(keep, keep[1:])):
        raise UserError(f"{where}: {keep} must be strictly increasing (each layer once, in the teacher's order)")
    return keep


def reduce_layers(model: torch.nn.Module, keep: Sequence[int]) -> torch.nn.Module:
    """Keep only the layers ``keep`` (0-based, increasing) of ``model``, in place.

    The embeddings, pooler and head are untouched; the config's layer count is updated and the
    kept teacher indices are recorded in ``config.compactbert_kept_layers`` (composed with any
    earlier reduction, so the record always refers to the original model's layers).

    Args:
        model: a Hugging Face encoder (e.g. ``BertForSequenceClassification``); modified in place.
        keep: indices of the layers to keep.

    Returns:
        ``model`` itself, now with ``len(keep)`` layers.

    Raises:
        UserError: if ``keep`` is empty, out of range or not strictly increasing.
    """
    parent, attr, layers = encoder_layers(model)
    keep = check_keep(keep, len(layers))
    setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in keep]))
    # Attention modules carry their position for KV caches (unused by encoders, kept consistent).
    for new_idx, layer in enumerate(getattr(parent, attr)):
        for mod in layer.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx
    config = getattr(model, "config", None)
    if config is not None:
        n = len(keep)
        for key in ("num_hidden_layers", "n_layers", "num_layers"):
            if key in config.to_dict() or key in getattr(config, "attribute_map", {}):
                setattr(config, key, n)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == len(layers):
            config.layer_types = [types[i] for i in keep]
        before = getattr(config, KEPT_LAYERS_KEY, None)
        if isinstance(before, list) and len(before) == len(layers):
            keep = [before[i] for i in keep]
        setattr(config, KEPT_LAYERS_KEY, list(keep))
    return model


@register_method("layer_reduction")
class LayerReduction(Method):
    """Keep a subset of the teacher's layers (XTC's layer reduction).

    Recipe keys:
        keep: 0-based indices of the teacher layers to keep, strictly increasing, e.g. ``[1, 3, 5]``.

    ``attach`` modifies ``state.model`` in place (it must run before the optimizer is built). A model
    that was already reduced with the same ``keep`` (a resumed run) is left as it is.
    """

    type: Literal["layer_reduction"] = "layer_reduction"
    effects = frozenset({"removes_layers"})
    keep: list[int]

    @field_validator("keep")
    @classmethod
    def _check(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("keep is empty; give at least one 0-based layer index, e.g. [1, 3, 5]")
        if any(i < 0 for i in v):
            raise ValueError(f"keep {v} has a negative index; layers are numbered from 0")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"keep {v} must be strictly increasing (each layer once, in the teacher's order)")
        return v

    def _attach(self, state: TrainState) -> None:
        config = getattr(state.model, "config", None)
        if getattr(config, KEPT_LAYERS_KEY, None) == self.keep and num_layers(state.model) == len(self.keep):
            return  # already reduced (resuming from a checkpoint of this stage)
        reduce_layers(state.model, self.keep)
        state.extras["layer_reduction/layers"] = len(self.keep)
