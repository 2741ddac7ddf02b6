"""Pruning schedules: when the gradual methods prune how much.

``schedule: cubic`` (Zhu & Gupta 2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3``,
updated at ``t0, t0 + frequency, ...`` and at ``t1``; ``linear``: ``s_i + (s_f - s_i) * p``;
``one_shot``: ``s_f`` at ``t0``. ``start`` / ``end`` are a step count when whole numbers
(``start: 100``) and a fraction of the stage's steps when written with a decimal point
(``end: 0.5``). The final sparsity is reached exactly at ``end`` (clamped to the stage's last
step).

Learning-rate rewinding (``lr_rewind: true``, Prune Once for All): in ``attach`` the method asks the
loop's LR schedule to start again where pruning ends (``state.lr_schedule.rewind_at(t1)``, see
:class:`compactbert.train.lr.LRSchedule`).
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Union

from pydantic import Field, PrivateAttr, StrictFloat, StrictInt, model_validator

from ...errors import UserError
from ..base import Method, TrainState

# A schedule point: a whole number is a step, a number with a decimal point a fraction of the stage.
Point = Union[StrictInt, StrictFloat]


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


class ScheduledPruning(Method):
    """Fields and schedule shared by the gradual pruning methods."""

    effects = frozenset({"prunes"})
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
        """Fix the schedule's steps for this stage (in ``attach``) and ask for LR rewinding."""
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
        if self.lr_rewind and state.lr_schedule is not None:  # None in recipe check's dry run
            state.lr_schedule.rewind_at(self._t1)

    def progress_at(self, step: int) -> float | None:
        """Schedule progress (0..1) at ``step``, None before the start. Valid after ``attach``."""
        return schedule_progress(step, self._t0, self._t1, self.frequency, self.schedule)

    @property
    def lr_rewind_step(self) -> int | None:
        """Step where the LR schedule starts again (``lr_rewind: true``), after ``attach``."""
        if not self.lr_rewind or self._phase == "new":
            return None
        return self._t1

    @property
    def schedule_steps(self) -> tuple[int, int]:
        """``(t0, t1)``: first and last pruning step, after ``attach``."""
        return self._t0, self._t1

