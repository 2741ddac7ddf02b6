"""The learning-rate schedule of the training loop: linear warm-up, linear decay, optional rewinding.

:class:`LRSchedule` is a pure function of the optimizer step (so a resumed run needs nothing but
the step count). Methods reach it as ``state.lr_schedule`` while they attach, before the first step:
a pruning method with ``lr_rewind: true`` calls :meth:`LRSchedule.rewind_at` with the step where its
pruning ends, and the schedule starts again from there (Prune Once for All's learning-rate rewinding).

Example:
    >>> s = LRSchedule(warmup_ratio=0.0, total_steps=4)
    >>> [s.multiplier(t) for t in range(4)]
    [1.0, 0.75, 0.5, 0.25]
    >>> s.rewind_at(2)
    >>> [s.multiplier(t) for t in range(4)]
    [1.0, 0.5, 1.0, 0.5]
"""

from __future__ import annotations

from typing import Callable

import torch

LRLambda = Callable[[int], float]


def linear_warmup_decay(warmup_steps: int, total_steps: int) -> LRLambda:
    """LR multiplier for optimizer step ``s`` (0-based): linear ramp to 1, then linear decay.

    The ramp reaches 1 at step ``warmup_steps - 1`` and the last step still has a non-zero LR
    (``1 / (total - warmup)``), so a short run never wastes a step at LR 0.
    """
    decay_steps = max(1, total_steps - warmup_steps)

    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / decay_steps)

    return lr_lambda


def rewound_lr_lambda(make_lambda: Callable[[int], LRLambda], total_steps: int, rewind_step: int | None) -> LRLambda:
    """LR multiplier with learning-rate rewinding, for ``torch.optim.lr_scheduler.LambdaLR``.

    Args:
        make_lambda: builds the usual multiplier for a run of ``n`` steps, e.g.
            ``lambda n: linear_warmup_decay(int(warmup_ratio * n), n)``.
        total_steps: steps of the stage.
        rewind_step: where the schedule starts again, or None (no rewinding).

    Returns:
        ``f(step)``: the schedule over ``[0, rewind_step)``, then the schedule again over
        ``[rewind_step, total_steps)``. A pure function of the step, so resume needs nothing more.
    """
    if not rewind_step or rewind_step >= total_steps:
        return make_lambda(total_steps)
    first, second = make_lambda(rewind_step), make_lambda(total_steps - rewind_step)
    return lambda step: first(step) if step < rewind_step else second(step - rewind_step)


class LRSchedule:
    """Linear warm-up (``warmup_ratio`` of the steps) then linear decay, over ``total_steps`` steps.

    Args:
        warmup_ratio: share of the steps spent ramping up (of each part, when rewound).
        total_steps: optimizer steps of the run.
    """

    def __init__(self, warmup_ratio: float, total_steps: int):
        self.warmup_ratio = warmup_ratio
        self.total_steps = total_steps
        self._rewind: int | None = None
        self._bound = False
        self._fn: LRLambda = self._build()

    @property
    def rewind_step(self) -> int | None:
        """The step where the schedule starts again, or None."""
        return self._rewind

    def rewind_at(self, step: int) -> None:
        """Start the schedule again at ``step`` (warm-up and decay over the remaining steps).

        Only before training starts (methods call it in ``attach``). When several methods ask,
        the first request counts; step 0 (and a step at or past the end) rewinds nothing.
        """
        if self._bound:
            raise RuntimeError("LRSchedule.rewind_at() after training started: call it from a method's attach")
        if self._rewind is None and step:
            self._rewind = int(step)
            self._fn = self._build()

    def multiplier(self, step: int) -> float:
        """The factor on the peak learning rate at optimizer step ``step`` (0-based)."""
        return self._fn(step)

    def bind(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """The torch scheduler that applies this schedule to ``optimizer`` (the schedule is fixed from now)."""
        self._bound = True
        fn = self._fn
        # A plain function (not a callable object): LambdaLR then keeps nothing of it in its state_dict.
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: fn(step))

    def _build(self) -> LRLambda:
        ratio = self.warmup_ratio
        return rewound_lr_lambda(lambda n: linear_warmup_decay(int(ratio * n), n), self.total_steps, self._rewind)
