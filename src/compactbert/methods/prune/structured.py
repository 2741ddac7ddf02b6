"""Structured pruning: whole attention heads and FFN neurons (so the exporter can make the model smaller)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, PrivateAttr, model_validator
from torch import nn

from ...nn.compressed import CompressedLinear
from ...nn.surgery import compress_modules
from ...registry import register_method
from ..base import TrainState
from ..layer_reduction import encoder_layers
from .masks import bool_mask, ensure_mask, lowest_k, reapply_masks, set_mask
from .schedule import ScheduledPruning


# Names of (query, key, value, attention output, FFN in, FFN out) inside one encoder layer.
_LAYOUTS = (
    ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
     "intermediate.dense", "output.dense"),  # BERT, RoBERTa, ELECTRA, MiniLM
    # DistilBERT
    ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
)
_ROLES = ("q", "k", "v", "o", "ffn_in", "ffn_out")


def layer_parts(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """Per encoder layer, its ``q, k, v, o, ffn_in, ffn_out`` Linear modules.

    Raises:
        UserError: if the layers do not follow a known layout.
    """
    layers = encoder_layers(model)[2]
    out = []
    for i, layer in enumerate(layers):
        names = dict(layer.named_modules())
        layout = next((lay for lay in _LAYOUTS if all(n in names for n in lay)), None)
        if layout is None:
            raise UserError(
                f"structured pruning: layer {i} of {type(model).__name__} has no known attention/FFN layout "
                "(BERT-style attention.self.query ... output.dense, or DistilBERT-style q_lin ... ffn.lin2)"
            )
        out.append({role: names[n] for role, n in zip(_ROLES, layout)})
    return out


def _num_heads(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads"))


def _col_keep(layer: nn.Module, width: int, groups: int) -> torch.Tensor:
    """Per group of input columns: is anything kept? -> (groups,)"""
    if not isinstance(layer, CompressedLinear) or layer.weight_mask is None:
        return torch.ones(groups, dtype=torch.bool, device=layer.weight.device)
    return bool_mask(layer).reshape(layer.out_features, groups, width).any(-1).any(0)


def _row_keep(layer: nn.Module, width: int, groups: int) -> torch.Tensor:
    if not isinstance(layer, CompressedLinear) or layer.weight_mask is None:
        return torch.ones(groups, dtype=torch.bool, device=layer.weight.device)
    return bool_mask(layer).reshape(groups, width, layer.in_features).any(-1).any(-1)


def pruned_structure(model: nn.Module) -> dict[int, dict[str, list[int]]]:
    """Which attention heads and FFN neurons of each layer are pruned entirely.

    A head counts as pruned when its rows in Q, K and V and its columns in the attention output
    are all masked; a neuron when its FFN-in row and FFN-out column are. The exporter can remove
    them physically: the function of the model does not change.

    Returns:
        ``{layer_index: {"heads": [h, ...], "neurons": [j, ...]}}`` for every encoder layer.
    """
    heads = _num_heads(model)
    out: dict[int, dict[str, list[int]]] = {}
    for i, parts in enumerate(layer_parts(model)):
        d = parts["q"].out_features // heads
        head_kept = _col_keep(parts["o"], d, heads)
        for role in ("q", "k", "v"):
            head_kept = head_kept | _row_keep(parts[role], d, heads)
        inter = parts["ffn_in"].out_features
        neuron_kept = _row_keep(parts["ffn_in"], 1, inter) | _col_keep(parts["ffn_out"], 1, inter)
        out[i] = {
            "heads": (~head_kept).nonzero().flatten().tolist(),
            "neurons": (~neuron_kept).nonzero().flatten().tolist(),
        }
    return out


class ScoreStore(nn.Module):
    """Taylor-importance accumulators, kept on the model during training so checkpoints hold them."""

    def __init__(self, sizes: list[tuple[int, int]], device: torch.device):
        super().__init__()
        for i, (h, f) in enumerate(sizes):
            self.register_buffer(f"heads_{i}", torch.zeros(h, device=device))
            self.register_buffer(f"neurons_{i}", torch.zeros(f, device=device))


SCORES_NAME = "_prune_scores"


@register_method("structured_pruning")
class StructuredPruning(ScheduledPruning):
    """Remove whole attention heads and FFN neurons (so the exporter can make the model smaller).

    Recipe keys:
        heads: fraction of attention heads to remove, in [0, 1) (at least one head per layer stays).
        neurons: fraction of FFN intermediate neurons to remove, in [0, 1).
        score: ``magnitude`` (L2 norm of the unit's weights: Q/K/V rows and output columns of a head;
            FFN-in row and FFN-out column of a neuron) or ``taylor`` (first-order Taylor importance:
            ``|w * grad|`` summed over those weights, accumulated over the steps since the last update).
        scope: ``layer`` (the same fraction in every layer, default) or ``global`` (lowest scores
            over all layers).
        schedule, start, end, frequency, lr_rewind: as ``magnitude_pruning``.
    """

    type: Literal["structured_pruning"] = "structured_pruning"
    heads: float = Field(0.0, ge=0.0, lt=1.0)
    neurons: float = Field(0.0, ge=0.0, lt=1.0)
    score: Literal["magnitude", "taylor"] = "magnitude"
    scope: Literal["layer", "global"] = "layer"

    _parts: list[dict[str, CompressedLinear]] = PrivateAttr(default_factory=list)
    _heads: int = PrivateAttr(0)
    _hooks: list = PrivateAttr(default_factory=list)
    _model: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_fractions(self) -> "StructuredPruning":
        if self.heads == 0 and self.neurons == 0:
            raise ValueError("set 'heads' and/or 'neurons' (fractions to remove, e.g. heads: 0.5)")
        if self.score == "taylor" and self.schedule == "one_shot" and self.start == 0:
            raise ValueError(
                "score: taylor accumulates gradients before pruning: give a later 'start' (e.g. 0.1) for one_shot"
            )
        return self

    def _attach(self, state: TrainState) -> None:
        model = state.model
        self._model = model
        self._heads = _num_heads(model)
        self._parts = []
        for parts in layer_parts(model):
            swapped = {}
            for role, lin in parts.items():
                holder = dict(model.named_modules())
                name = next(n for n, mod in holder.items() if mod is lin)
                layer = compress_modules(model, [name])[name]
                ensure_mask(layer)
                swapped[role] = layer
            self._parts.append(swapped)
        self._resolve(state)
        if self.score == "taylor":
            if not hasattr(model, SCORES_NAME):
                sizes = [(self._heads, p["ffn_in"].out_features) for p in self._parts]
                model.add_module(SCORES_NAME, ScoreStore(sizes, next(model.parameters()).device))
            for i, parts in enumerate(self._parts):
                for role, layer in parts.items():
                    self._hooks.append(layer.weight.register_hook(self._taylor_hook(i, role, layer)))

    def _taylor_hook(self, i: int, role: str, layer: CompressedLinear):
        heads = self._heads

        def hook(grad: torch.Tensor) -> None:
            store = getattr(self._model, SCORES_NAME)
            with torch.no_grad():
                wg = (layer.weight.detach() * grad).abs().float()  # (out, in)
                if role in ("q", "k", "v"):
                    store.get_buffer(f"heads_{i}").add_(wg.sum(1).reshape(heads, -1).sum(1))
                elif role == "o":
                    store.get_buffer(f"heads_{i}").add_(wg.sum(0).reshape(heads, -1).sum(1))
                elif role == "ffn_in":
                    store.get_buffer(f"neurons_{i}").add_(wg.sum(1))
                else:
                    store.get_buffer(f"neurons_{i}").add_(wg.sum(0))

        return hook

    # ---------------------------------------------------------- scores and selection
    def _scores(self, i: int, parts: dict[str, CompressedLinear]) -> tuple[torch.Tensor, torch.Tensor]:
        """(head scores (heads,), neuron scores (inter,)) of layer ``i``; pruned units score -inf."""
        h = self._heads
        if self.score == "taylor":
            store = getattr(self._model, SCORES_NAME)
            hs = store.get_buffer(f"heads_{i}").clone()
            ns = store.get_buffer(f"neurons_{i}").clone()
        else:
            w = {role: layer.weight.detach().float() for role, layer in parts.items()}
            hs = sum(w[r].pow(2).sum(1).reshape(h, -1).sum(1) for r in ("q", "k", "v"))
            hs = (hs + w["o"].pow(2).sum(0).reshape(h, -1).sum(1)).sqrt()
            ns = (w["ffn_in"].pow(2).sum(1) + w["ffn_out"].pow(2).sum(0)).sqrt()
        d = parts["q"].out_features // h
        head_kept = _col_keep(parts["o"], d, h)
        inter = parts["ffn_in"].out_features
        neuron_kept = _row_keep(parts["ffn_in"], 1, inter) | _col_keep(parts["ffn_out"], 1, inter)
        return hs.masked_fill(~head_kept, -math.inf), ns.masked_fill(~neuron_kept, -math.inf)

    @staticmethod
    def _select(scores: list[torch.Tensor], fraction: float, scope: str) -> list[torch.Tensor]:
        """Units to prune per layer: ``round(fraction * units)`` lowest, at least one unit kept per layer."""
        if scope == "layer":
            out = []
            for s in scores:
                k = min(max(round(fraction * s.numel()), int(torch.isinf(s).sum())), s.numel() - 1)
                out.append(lowest_k(s.cpu(), k).to(s.device))
            return out
        flat = torch.cat([s.cpu() for s in scores])
        total = flat.numel()
        k = max(round(fraction * total), int(torch.isinf(flat).sum()))
        order = torch.argsort(flat, stable=True).tolist()
        sizes = [s.numel() for s in scores]
        starts = [sum(sizes[:j]) for j in range(len(sizes))]
        left = list(sizes)
        prune = torch.zeros(total, dtype=torch.bool)
        count = 0
        for idx in order:
            if count >= k:
                break
            layer = next(j for j in range(len(sizes) - 1, -1, -1) if starts[j] <= idx)
            if left[layer] > 1:
                prune[idx] = True
                left[layer] -= 1
                count += 1
        return [c.to(s.device) for c, s in zip(prune.split(sizes), scores)]

    def _apply(self, progress: float) -> bool:
        """Prune up to ``progress`` of the targets; True if any new unit was pruned."""
        h = self._heads
        scored = [self._scores(i, parts) for i, parts in enumerate(self._parts)]
        head_sel = self._select([s[0] for s in scored], self.heads * progress, self.scope)
        neuron_sel = self._select([s[1] for s in scored], self.neurons * progress, self.scope)
        changed = False
        for parts, (hs, ns), hp, npr in zip(self._parts, scored, head_sel, neuron_sel):
            changed |= bool((hp & ~torch.isinf(hs)).any() or (npr & ~torch.isinf(ns)).any())
            d = parts["q"].out_features // h
            head_rows = ~hp.repeat_interleave(d)  # (heads * d,): kept rows of Q/K/V, columns of O
            for role in ("q", "k", "v"):
                set_mask(parts[role], bool_mask(parts[role]) & head_rows[:, None])
            set_mask(parts["o"], bool_mask(parts["o"]) & head_rows[None, :])
            set_mask(parts["ffn_in"], bool_mask(parts["ffn_in"]) & ~npr[:, None])
            set_mask(parts["ffn_out"], bool_mask(parts["ffn_out"]) & ~npr[None, :])
        return changed

    def _all_layers(self):
        return [layer for parts in self._parts for layer in parts.values()]

    def _log(self, state: TrainState) -> None:
        structure = pruned_structure(self._model)
        state.extras["structured_pruning/heads_pruned"] = sum(len(v["heads"]) for v in structure.values())
        state.extras["structured_pruning/neurons_pruned"] = sum(len(v["neurons"]) for v in structure.values())

    def _on_step(self, state: TrainState) -> None:
        p = self.progress_at(state.step)
        if p is not None and p != self._applied:
            if p > 0 and self._apply(p) and self.score == "taylor":
                for buf in getattr(self._model, SCORES_NAME).buffers():
                    buf.zero_()  # importance since the last update only
            self._applied = p
            self._log(state)

    def _after_step(self, state: TrainState) -> None:
        reapply_masks(self._all_layers())

    def _finalize(self, state: TrainState) -> None:
        if self._applied is None or self._applied < 1.0:
            self._apply(1.0)
            self._applied = 1.0
        reapply_masks(self._all_layers())
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if hasattr(state.model, SCORES_NAME):
            delattr(state.model, SCORES_NAME)  # training-only state: not part of the compressed model
        self._log(state)
