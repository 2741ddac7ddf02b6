"""Pruning: unstructured magnitude, blocks, N:M, and structured (attention heads, FFN neurons).

One module per method (:mod:`.magnitude`, :mod:`.block`, :mod:`.nm`, :mod:`.structured`), the
schedule the gradual ones share (:mod:`.schedule`) and the mask helpers (:mod:`.masks`); importing
the package registers the four methods.

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
    In ``attach`` the method calls ``state.lr_schedule.rewind_at(r)`` with ``r`` the step where
    pruning ends (also readable as ``lr_rewind_step``): the loop's warm-up + decay schedule runs over
    ``[0, r)`` and starts again over ``[r, total)`` (:class:`compactbert.train.lr.LRSchedule`).

Prune Once for All's downstream stage: ``magnitude_pruning`` with ``lock_mask: true`` keeps the
student's existing masks (loaded with it) fixed, or, for layers without a mask, its zero pattern.
"""

from .block import BlockPruning
from .magnitude import MagnitudePruning, UnitPruning
from .masks import lowest_k, mask_sparsity
from .nm import NMPruning, nm_mask
from .schedule import Point, ScheduledPruning, resolve_point, schedule_progress
from .structured import SCORES_NAME, StructuredPruning, layer_parts, pruned_structure

__all__ = [
    "BlockPruning", "MagnitudePruning", "NMPruning", "StructuredPruning", "ScheduledPruning", "UnitPruning",
    "Point", "resolve_point", "schedule_progress", "lowest_k", "mask_sparsity", "nm_mask", "layer_parts",
    "pruned_structure", "SCORES_NAME",
]
