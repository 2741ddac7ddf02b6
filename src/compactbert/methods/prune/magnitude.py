"""Unstructured magnitude pruning (and the block-scored base that block pruning shares)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PrivateAttr, model_validator

from ...errors import UserError
from ...nn.compressed import CompressedLinear
from ...registry import register_method
from ..base import TrainState
from .masks import bool_mask, ensure_mask, lowest_k, mask_sparsity, reapply_masks, set_mask, target_layers
from .schedule import ScheduledPruning


class UnitPruning(ScheduledPruning):
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
        self._layers = target_layers(state.model, self.targets, where)
        br, bc = self._block()
        for name, layer in self._layers.items():
            r, c = layer.weight.shape
            if r % br or c % bc:
                raise UserError(
                    f"{self.type}: block {br}x{bc} does not tile {name} of shape {r}x{c}; "
                    "choose a block that divides both dimensions or leave this layer out of targets"
                )
            ensure_mask(layer)
        self._resolve(state)

    def _unit_scores(self, layer: CompressedLinear) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (rows/br, cols/bc) and which units are already fully pruned."""
        br, bc = self._block()
        r, c = layer.weight.shape
        w = layer.weight.detach().float().reshape(r // br, br, c // bc, bc)
        keep = bool_mask(layer).reshape(r // br, br, c // bc, bc)
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
            set_mask(layer, keep & bool_mask(layer))

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
        reapply_masks(self._layers.values())

    def _finalize(self, state: TrainState) -> None:
        # The run may end before the last scheduled update (e.g. max_steps): reach the target anyway.
        if self.sparsity is not None and (self._applied is None or self._applied < self.sparsity):
            self._apply(self.sparsity)
            self._applied = self.sparsity
        reapply_masks(self._layers.values())
        state.extras[f"{self.type}/sparsity"] = round(mask_sparsity(self._layers.values()), 6)


@register_method("magnitude_pruning")
class MagnitudePruning(UnitPruning):
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
        lr_rewind: restart the LR schedule when pruning ends (:class:`compactbert.train.lr.LRSchedule`).
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
        self._layers = target_layers(state.model, self.targets, "magnitude_pruning.targets: ")
        self._t0 = self._t1 = 0  # a locked mask has no schedule
        zeros = 0
        for layer in self._layers.values():
            if layer.weight_mask is None:  # a sparse model saved without masks: lock its zero pattern
                layer.weight_mask = layer.weight.detach() != 0
            zeros += int((~bool_mask(layer)).sum())
        # A recipe check (state.extras["dry_run"]) attaches later stages to an untrained copy whose
        # masks the earlier stages have not filled yet: only a real run, or the dry run's first stage
        # (the student itself, "dry_run_stage" 0), can find nothing to lock.
        later = state.extras.get("dry_run") and state.extras.get("dry_run_stage", 1) > 0
        if zeros == 0 and not later:
            raise UserError(
                "magnitude_pruning.lock_mask: the student has no pruning mask and no zero weights in the targets, "
                "so there is nothing to lock (no sparsity pattern); start from a pruned model (--model RUN of an upstream "
                "pruning run), or give 'sparsity' instead of lock_mask"
            )
        reapply_masks(self._layers.values())
        self._applied = None

    def _on_step(self, state: TrainState) -> None:
        if not self.lock_mask:
            super()._on_step(state)

    def describe(self) -> str:
        if self.lock_mask:
            return f"magnitude_pruning(lock_mask=True, targets={self.targets!r}): keep the student's sparsity pattern"
        return super().describe()

