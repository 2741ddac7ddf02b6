"""Pruning: unstructured magnitude, blocks, N:M, and structured (attention heads, FFN neurons).

All masks live in :class:`~compactbert.nn.compressed.CompressedLinear`'s ``weight_mask`` buffer
(bool), so they are part of the model's ``state_dict``: they survive checkpoints, resume, and the
saved model. ``attach`` swaps the targets for CompressedLinear and gives each a mask (all ones until
the schedule prunes) so that the state dict has the same keys from the first step on. Forward uses
``weight * mask``; ``after_step`` also zeroes the pruned entries of the raw weights (AdamW's momentum
and weight decay would otherwise move them), so pruned weights are exactly zero at all times.

Masks only grow: a unit (weight, block, head, neuron) pruned once stays pruned, whichever method
pruned it, so pruning methods stack on the same layers.

Schedules (``magnitude_pruning``, ``block_pruning``, ``structured_pruning``)
    ``schedule: cubic`` (Zhu & Gupta 2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3``,
    updated at ``t0, t0 + frequency, ...`` and at ``t1``; ``linear``: ``s_i + (s_f - s_i) * p``;
    ``one_shot``: ``s_f`` at ``t0``. ``start`` / ``end`` are a step count when whole numbers
    (``start: 100``) and a fraction of the stage's steps when written with a decimal point
    (``end: 0.5``). The final sparsity is reached exactly at ``end`` (clamped to the stage's last
    step): the number of pruned units is ``round(s_f * units)``, ties broken by position.

Learning-rate rewinding (``lr_rewind: true``, Prune Once for All)
    The method exposes ``lr_rewind_step`` (the step where pruning ends) after ``attach``; the loop
    then builds its LR multiplier with :func:`rewound_lr_lambda`: the warm-up + decay schedule runs
    over ``[0, r)`` and starts again over ``[r, total)``.

Prune Once for All's downstream stage: ``magnitude_pruning`` with ``lock_mask: true`` keeps the
student's existing masks (loaded with it) fixed, or, for layers without a mask, its zero pattern.
"""

from __future__ import annotations

import warnings

import math
from typing import Any, Callable, Literal, Union

import torch
from pydantic import Field, PrivateAttr, StrictFloat, StrictInt, model_validator
from torch import nn

from ..errors import UserError
from ..nn.compressed import CompressedLinear
from ..nn.surgery import compress_modules, encoder_linear_patterns
from ..registry import register_method
from .base import Method, TrainState
from .layer_reduction import encoder_layers

# A schedule point: a whole number is a step, a number with a decimal point a fraction of the stage.
Point = Union[StrictInt, StrictFloat]


# ================================================================== helpers
def resolve_point(value: int | float, total_steps: int) -> int:
    """A schedule point as an optimizer step: ints are steps, floats fractions of ``total_steps``."""
    if isinstance(value, float):
        return int(round(value * total_steps))
    return int(value)


def schedule_progress(step: int, t0: int, t1: int, frequency: int, kind: str) -> float | None:
    """How far along the schedule is at ``step``: None before ``t0``, then 0..1 (1 from ``t1`` on).

    The value only changes at ``t0 + k * frequency`` and at ``t1``. Cubic: ``1 - (1 - p)**3``,
    linear: ``p``, one-shot: 1, where ``p = (t_update - t0) / (t1 - t0)``.
    """
    if step < t0:
        return None
    if kind == "one_shot" or t1 <= t0 or step >= t1:
        return 1.0
    t_update = t0 + ((step - t0) // frequency) * frequency
    p = (t_update - t0) / (t1 - t0)
    return 1.0 - (1.0 - p) ** 3 if kind == "cubic" else p


def rewound_lr_lambda(
    make_lambda: Callable[[int], Callable[[int], float]], total_steps: int, rewind_step: int | None
) -> Callable[[int], float]:
    """LR multiplier with learning-rate rewinding, for ``torch.optim.lr_scheduler.LambdaLR``.

    Args:
        make_lambda: builds the loop's usual multiplier for a run of ``n`` steps, e.g.
            ``lambda n: linear_warmup_decay(int(warmup_ratio * n), n)``.
        total_steps: steps of the stage.
        rewind_step: where the schedule starts again (a pruning method's ``lr_rewind_step``), or None.

    Returns:
        ``f(step)``: the schedule over ``[0, rewind_step)``, then the schedule again over
        ``[rewind_step, total_steps)``. A pure function of the step, so resume needs nothing more.
    """
    if not rewind_step or rewind_step >= total_steps:
        return make_lambda(total_steps)
    first, second = make_lambda(rewind_step), make_lambda(total_steps - rewind_step)
    return lambda step: first(step) if step < rewind_step else second(step - rewind_step)


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly ``k`` entries of 1-D ``scores`` with the lowest values.

    Ties at the threshold go to the entries that come first, so the count is exact and the choice
    deterministic.
    """
    n = scores.numel()
    out = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return out
    if k >= n:
        return ~out
    thr = torch.kthvalue(scores.float().cpu(), k).values.to(scores.device)
    out = scores < thr
    need = k - int(out.sum())
    if need > 0:
        ties = (scores == thr).nonzero().flatten()[:need]
        out[ties] = True
    return out


def _bool_mask(layer: CompressedLinear) -> torch.Tensor:
    m = layer.weight_mask
    if m is None:
        return torch.ones_like(layer.weight, dtype=torch.bool)
    return m if m.dtype == torch.bool else m != 0


def _set_mask(layer: CompressedLinear, mask: torch.Tensor) -> None:
    """Store ``mask`` (bool) and zero the pruned raw weights."""
    old = layer.weight_mask
    if old is not None and old.dtype == torch.bool and old.shape == mask.shape:
        old.copy_(mask)
    else:
        layer.weight_mask = mask.to(torch.bool)
    with torch.no_grad():
        layer.weight.mul_(mask.to(layer.weight.dtype))


def _ensure_mask(layer: CompressedLinear) -> None:
    if layer.weight_mask is None:
        layer.weight_mask = torch.ones_like(layer.weight, dtype=torch.bool)


def _reapply(layers) -> None:
    with torch.no_grad():
        for layer in layers:
            if layer.weight_mask is not None:
                layer.weight.mul_(layer.weight_mask.to(layer.weight.dtype))


def mask_sparsity(layers) -> float:
    """Fraction of masked-out weight entries over ``layers``."""
    total = sum(layer.weight.numel() for layer in layers)
    zeros = sum(int((~_bool_mask(layer)).sum()) for layer in layers)
    return zeros / max(1, total)


def _targets(model: nn.Module, targets: list[str] | None, where: str) -> dict[str, CompressedLinear]:
    patterns = targets if targets is not None else encoder_linear_patterns(model)
    return compress_modules(model, patterns, where=where)  # type: ignore[return-value]


# ================================================================== scheduled base
class _ScheduledPruning(Method):
    """Fields and schedule shared by the gradual pruning methods."""

    type: str  # each method narrows it to its Literal name (declared here so dumps list it first)
    schedule: Literal["cubic", "linear", "one_shot"] = "cubic"
    start: Point = Field(0, ge=0)
    end: Point = Field(0.5, ge=0)
    frequency: int = Field(100, ge=1)
    lr_rewind: bool = False

    _t0: int = PrivateAttr(0)
    _t1: int = PrivateAttr(0)
    _applied: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _check_points(self):
        for name in ("start", "end"):
            v = getattr(self, name)
            if isinstance(v, float) and not 0.0 <= v <= 1.0:
                raise ValueError(
                    f"{name}={v} is a fraction of the stage (it has a decimal point) and must be in [0, 1]; "
                    "write a whole number for a step count"
                )
        if self.schedule != "one_shot" and type(self.start) is type(self.end) and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must come after start ({self.start})")
        if self.schedule != "one_shot" and isinstance(self.end, int) and self.end == 1:
            raise ValueError(
                "end: 1 is step 1 (whole numbers are steps); write 1.0 for the end of the stage, or a larger step count"
            )
        return self

    def _resolve(self, state: TrainState) -> None:
        total = state.total_steps
        points = (self.start,) if self.schedule == "one_shot" else (self.start, self.end)
        if total <= 0 and any(isinstance(v, float) and v > 0 for v in points):
            raise RuntimeError(f"{self.type}: fractional start/end need state.total_steps (got {total})")
        t0, t1 = resolve_point(self.start, total), resolve_point(self.end, total)
        if self.schedule != "one_shot" and t1 < t0:
            raise UserError(
                f"{self.type}: end ({self.end!r} = step {t1}) must come after start ({self.start!r} = step {t0}) "
                f"in a stage of {total} steps"
            )
        if self.schedule != "one_shot" and t1 == t0:
            # A stage too short for the schedule (a smoke run with --set ...epochs=0.01): prune in one shot.
            warnings.warn(
                f"{self.type}: end ({self.end!r} = step {t1}) falls on start ({self.start!r} = step {t0}) in a "
                f"stage of {total} steps; pruning in one shot at step {t0}",
                stacklevel=2,
            )
            t1 = t0
        if total > 0:  # the last update must happen at a step the loop runs
            t0, t1 = min(t0, total - 1), min(t1, total - 1)
        if self.schedule == "one_shot":
            t1 = t0
        self._t0, self._t1 = t0, max(t0, t1)

    def progress_at(self, step: int) -> float | None:
        """Schedule progress (0..1) at ``step``, None before the start. Valid after ``attach``."""
        return schedule_progress(step, self._t0, self._t1, self.frequency, self.schedule)

    @property
    def lr_rewind_step(self) -> int | None:
        """Step where the loop restarts its LR schedule (``lr_rewind: true``), after ``attach``."""
        if not self.lr_rewind or self._phase == "new":
            return None
        return self._t1

    @property
    def schedule_steps(self) -> tuple[int, int]:
        """``(t0, t1)``: first and last pruning step, after ``attach``."""
        return self._t0, self._t1


# ================================================================== magnitude and blocks
class _UnitPruning(_ScheduledPruning):
    """Prune the lowest-scoring blocks (1x1 = single weights) of each target, per layer or globally."""

    sparsity: float | None = Field(None, ge=0.0, lt=1.0)
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    scope: Literal["layer", "global"] = "layer"
    targets: list[str] | None = None

    _layers: dict[str, CompressedLinear] = PrivateAttr(default_factory=dict)

    def _block(self) -> tuple[int, int]:
        return (1, 1)

    def _norm(self) -> str:
        return "l1"

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at ``step`` (0 before the start). Valid after ``attach``."""
        p = self.progress_at(step)
        if p is None:
            return 0.0
        s_f, s_i = float(self.sparsity or 0.0), self.initial_sparsity
        return s_f + (s_i - s_f) * (1.0 - p)

    def _attach(self, state: TrainState) -> None:
        where = f"{self.type}.targets: "
        self._layers = _targets(state.model, self.targets, where)
        br, bc = self._block()
        for name, layer in self._layers.items():
            r, c = layer.weight.shape
            if r % br or c % bc:
                raise UserError(
                    f"{self.type}: block {br}x{bc} does not tile {name} of shape {r}x{c}; "
                    "choose a block that divides both dimensions or leave this layer out of targets"
                )
            _ensure_mask(layer)
        self._resolve(state)

    def _unit_scores(self, layer: CompressedLinear) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (rows/br, cols/bc) and which units are already fully pruned."""
        br, bc = self._block()
        r, c = layer.weight.shape
        w = layer.weight.detach().float().reshape(r // br, br, c // bc, bc)
        keep = _bool_mask(layer).reshape(r // br, br, c // bc, bc)
        if self._norm() == "l2":
            score = w.pow(2).sum((1, 3)).sqrt()
        else:
            score = w.abs().sum((1, 3))
        pruned = ~keep.any(3).any(1)  # (rows/br, cols/bc)
        return score.masked_fill(pruned, -1.0), pruned

    def _apply(self, sparsity: float) -> None:
        br, bc = self._block()
        layers = list(self._layers.values())
        scored = [self._unit_scores(layer) for layer in layers]
        if self.scope == "global":
            flat = torch.cat([s.flatten().cpu() for s, _ in scored])
            already = sum(int(p.sum()) for _, p in scored)
            prune = lowest_k(flat, max(round(sparsity * flat.numel()), already))
            chunks = prune.split([s.numel() for s, _ in scored])
        else:
            chunks = []
            for s, p in scored:
                chunks.append(lowest_k(s.flatten(), max(round(sparsity * s.numel()), int(p.sum()))))
        for layer, (s, _), chunk in zip(layers, scored, chunks):
            unit_keep = ~chunk.to(layer.weight.device).reshape(s.shape)
            keep = unit_keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)
            _set_mask(layer, keep & _bool_mask(layer))

    def _on_step(self, state: TrainState) -> None:
        if self.sparsity is None:
            return
        s = self.sparsity_at(state.step)
        if s != self._applied:
            if s > 0 or self._applied is not None:
                self._apply(s)
            self._applied = s
        state.extras[f"{self.type}/sparsity"] = round(s, 6)

    def _after_step(self, state: TrainState) -> None:
        _reapply(self._layers.values())

    def _finalize(self, state: TrainState) -> None:
        # The run may end before the last scheduled update (e.g. max_steps): reach the target anyway.
        if self.sparsity is not None and (self._applied is None or self._applied < self.sparsity):
            self._apply(self.sparsity)
            self._applied = self.sparsity
        _reapply(self._layers.values())
        state.extras[f"{self.type}/sparsity"] = round(mask_sparsity(self._layers.values()), 6)


@register_method("magnitude_pruning")
class MagnitudePruning(_UnitPruning):
    """Unstructured magnitude pruning (Zhu & Gupta; Prune Once for All; Combining Compressions).

    Recipe keys:
        sparsity: final fraction of zero weights in each target (``scope: layer``) or over all
            targets together (``scope: global``), in [0, 1).
        initial_sparsity: ``s_i`` of the schedule (default 0).
        schedule: ``cubic`` (default), ``linear`` or ``one_shot``.
        start, end: schedule bounds; whole numbers are steps, decimals fractions of the stage
            (default ``0`` and ``0.5``: prune during the first half, then train the sparse model).
        frequency: steps between mask updates (default 100).
        scope: ``layer`` (default) or ``global``.
        targets: module-name patterns (globs or ``re:`` regexes); default: every Linear inside the
            encoder layers.
        lock_mask: keep the existing masks (or zero patterns) fixed instead of pruning further; no
            ``sparsity`` then.
        lr_rewind: restart the LR schedule when pruning ends (see :func:`rewound_lr_lambda`).
    """

    type: Literal["magnitude_pruning"] = "magnitude_pruning"
    lock_mask: bool = False

    @model_validator(mode="after")
    def _check_sparsity(self) -> "MagnitudePruning":
        if self.lock_mask:
            if self.sparsity is not None:
                raise ValueError("lock_mask keeps the student's existing sparsity pattern: remove 'sparsity'")
            if self.lr_rewind:
                raise ValueError("lr_rewind needs a pruning schedule; it does nothing with lock_mask")
        elif self.sparsity is None:
            raise ValueError(
                "'sparsity' is required (the final fraction of zero weights, e.g. 0.9), or set lock_mask: true"
            )
        if self.sparsity is not None and self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} is above sparsity {self.sparsity}")
        return self

    def _attach(self, state: TrainState) -> None:
        if not self.lock_mask:
            super()._attach(state)
            return
        self._layers = _targets(state.model, self.targets, "magnitude_pruning.targets: ")
        self._t0 = self._t1 = 0  # a locked mask has no schedule
        zeros = 0
        for layer in self._layers.values():
            if layer.weight_mask is None:  # a sparse model saved without masks: lock its zero pattern
                layer.weight_mask = layer.weight.detach() != 0
            zeros += int((~_bool_mask(layer)).sum())
        # A recipe check (state.extras["dry_run"]) attaches later stages to an untrained copy whose
        # masks the earlier stages have not filled yet: only a real run can find nothing to lock.
        if zeros == 0 and not state.extras.get("dry_run"):
            raise UserError(
                "magnitude_pruning.lock_mask: the targets have no pruning mask and no zero weights, so there is "
                "nothing to lock; start from a pruned student, or give 'sparsity' instead of lock_mask"
            )
        _reapply(self._layers.values())
        self._applied = None

    def _on_step(self, state: TrainState) -> None:
        if not self.lock_mask:
            super()._on_step(state)

    def describe(self) -> str:
        if self.lock_mask:
            return f"magnitude_pruning(lock_mask=True, targets={self.targets!r}): keep the student's sparsity pattern"
        return super().describe()


@register_method("block_pruning")
class BlockPruning(_UnitPruning):
    """Prune whole blocks of each weight matrix, scored by the block's L2 (or L1) norm.

    Recipe keys: as ``magnitude_pruning`` (``sparsity`` is the fraction of blocks), plus
        block: ``[rows, cols]`` of a block in the ``(out_features, in_features)`` weight; default
            ``[4, 1]`` (4 output rows of one input column).
        norm: ``l2`` (default) or ``l1``.
    """

    type: Literal["block_pruning"] = "block_pruning"
    block: tuple[int, int] = (4, 1)
    norm: Literal["l2", "l1"] = "l2"

    @model_validator(mode="after")
    def _check_block(self) -> "BlockPruning":
        if self.sparsity is None:
            raise ValueError("'sparsity' is required (the final fraction of zero blocks, e.g. 0.8)")
        if min(self.block) < 1:
            raise ValueError(f"block {list(self.block)} must be two positive sizes [rows, cols]")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} is above sparsity {self.sparsity}")
        return self

    def _block(self) -> tuple[int, int]:
        return tuple(self.block)  # type: ignore[return-value]

    def _norm(self) -> str:
        return self.norm


# ================================================================== N:M
def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights of every ``m`` consecutive inputs of each row.

    Args:
        weight: (out_features, in_features), ``in_features`` divisible by ``m``.

    Returns:
        Bool mask of the weight's shape with exactly ``n`` ones per group (ties: the first ones).
    """
    r, c = weight.shape
    groups = weight.detach().abs().reshape(r, c // m, m)  # (rows, groups, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(r, c)


@register_method("nm_pruning")
class NMPruning(Method):
    """N:M semi-structured sparsity along the input dimension (2:4 runs on sparse tensor cores).

    Recipe keys:
        n, m: keep ``n`` of every ``m`` consecutive input weights of each output row (default 2:4).
        start: the step at which the pattern is chosen by magnitude (whole number = step, decimal =
            fraction of the stage; default 0, before the first step). The pattern is then fixed.
        targets: module-name patterns; default every Linear inside the encoder layers.
    """

    type: Literal["nm_pruning"] = "nm_pruning"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    start: Point = Field(0, ge=0)
    targets: list[str] | None = None

    _layers: dict[str, CompressedLinear] = PrivateAttr(default_factory=dict)
    _t0: int = PrivateAttr(0)
    _done: bool = PrivateAttr(False)

    @model_validator(mode="after")
    def _check_nm(self) -> "NMPruning":
        if self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m}), e.g. n: 2, m: 4")
        if isinstance(self.start, float) and self.start > 1.0:
            raise ValueError(f"start={self.start} is a fraction of the stage and must be in [0, 1]")
        return self

    def _attach(self, state: TrainState) -> None:
        self._layers = _targets(state.model, self.targets, "nm_pruning.targets: ")
        for name, layer in self._layers.items():
            if layer.in_features % self.m:
                raise UserError(
                    f"nm_pruning: {name} has {layer.in_features} inputs, not a multiple of m={self.m}; "
                    "leave it out of targets or choose another m"
                )
            _ensure_mask(layer)
        t0 = resolve_point(self.start, state.total_steps)
        self._t0 = min(t0, state.total_steps - 1) if state.total_steps > 0 else t0

    def _apply(self) -> None:
        for layer in self._layers.values():
            _set_mask(layer, nm_mask(layer.weight * _bool_mask(layer), self.n, self.m) & _bool_mask(layer))
        self._done = True

    def _on_step(self, state: TrainState) -> None:
        # Re-choosing on a resumed run gives the same pattern: pruned weights are 0, kept ones larger.
        if not self._done and state.step >= self._t0:
            self._apply()

    def _after_step(self, state: TrainState) -> None:
        _reapply(self._layers.values())

    def _finalize(self, state: TrainState) -> None:
        if not self._done:
            self._apply()
        _reapply(self._layers.values())


# ================================================================== structured: heads and neurons
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
    return _bool_mask(layer).reshape(layer.out_features, groups, width).any(-1).any(0)


def _row_keep(layer: nn.Module, width: int, groups: int) -> torch.Tensor:
    if not isinstance(layer, CompressedLinear) or layer.weight_mask is None:
        return torch.ones(groups, dtype=torch.bool, device=layer.weight.device)
    return _bool_mask(layer).reshape(groups, width, layer.in_features).any(-1).any(-1)


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


class _ScoreStore(nn.Module):
    """Taylor-importance accumulators, kept on the model during training so checkpoints hold them."""

    def __init__(self, sizes: list[tuple[int, int]], device: torch.device):
        super().__init__()
        for i, (h, f) in enumerate(sizes):
            self.register_buffer(f"heads_{i}", torch.zeros(h, device=device))
            self.register_buffer(f"neurons_{i}", torch.zeros(f, device=device))


SCORES_NAME = "_prune_scores"


@register_method("structured_pruning")
class StructuredPruning(_ScheduledPruning):
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
                _ensure_mask(layer)
                swapped[role] = layer
            self._parts.append(swapped)
        self._resolve(state)
        if self.score == "taylor":
            if not hasattr(model, SCORES_NAME):
                sizes = [(self._heads, p["ffn_in"].out_features) for p in self._parts]
                model.add_module(SCORES_NAME, _ScoreStore(sizes, next(model.parameters()).device))
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
                _set_mask(parts[role], _bool_mask(parts[role]) & head_rows[:, None])
            _set_mask(parts["o"], _bool_mask(parts["o"]) & head_rows[None, :])
            _set_mask(parts["ffn_in"], _bool_mask(parts["ffn_in"]) & ~npr[:, None])
            _set_mask(parts["ffn_out"], _bool_mask(parts["ffn_out"]) & ~npr[None, :])
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
        _reapply(self._all_layers())

    def _finalize(self, state: TrainState) -> None:
        if self._applied is None or self._applied < 1.0:
            self._apply(1.0)
            self._applied = 1.0
        _reapply(self._all_layers())
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if hasattr(state.model, SCORES_NAME):
            delattr(state.model, SCORES_NAME)  # training-only state: not part of the compressed model
        self._log(state)
