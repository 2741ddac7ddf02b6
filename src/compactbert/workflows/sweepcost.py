"""How long a sweep will train: points x steps x a step cost measured here and now.

:func:`point_steps` counts a point's optimizer steps exactly as the training loop will (the
stage's training set, augmented copies and held-out share included, ``ceil(n / batch)`` batches per
epoch, ``round(epochs x batches)`` steps, or the stage's ``steps``). :func:`measure_step_cost`
trains the first stage of a recipe for a few steps on a copy of the teacher, in a temporary
folder, and times the steps after a warm-up; a sweep measures the first point of each recipe
entry and applies that cost to every step of the entry's points (later stages included).
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from typing import Any, Literal

from pydantic import PrivateAttr

from ..methods.base import Method, TrainState

__all__ = ["point_steps", "measure_step_cost", "StepClock", "format_duration", "WARMUP_STEPS", "TIMED_STEPS"]

WARMUP_STEPS = 2  # untimed steps first (allocations, compilation)
TIMED_STEPS = 4


class StepClock(Method):
    """Records the time at the start of every step (not a registered method: recipes cannot name it)."""

    type: Literal["step_clock"] = "step_clock"
    _times: list = PrivateAttr(default_factory=list)

    def _on_step(self, state: TrainState) -> None:
        self._times.append(time.perf_counter())

    def step_seconds(self, skip: int) -> list[float]:
        """Durations of the steps after the first ``skip`` (each from its start to the next's)."""
        t = self._times
        return [b - a for a, b in zip(t[skip:], t[skip + 1:])]


def point_steps(recipe, n_train: int) -> int:
    """Optimizer steps of all the stages of ``recipe`` on ``n_train`` training examples."""
    from ..train.heldout import heldout_fraction

    total = 0
    for st in recipe.stages:
        n = n_train * (1 + st.augment.n_aug) if st.augment is not None else n_train
        frac = heldout_fraction(st.methods)
        if frac is not None and n >= 2:
            n -= min(max(1, round(frac * n)), n - 1)
        per_epoch = max(1, math.ceil(n / st.batch_size))
        total += st.steps if st.steps is not None else max(1, round((st.epochs or 1.0) * per_epoch))
    return total


def measure_step_cost(recipe, teacher_net, tokenizer, spec, train_examples: list,
                      warmup: int = WARMUP_STEPS, timed: int = TIMED_STEPS) -> float:
    """Median seconds per optimizer step of ``recipe``'s first stage (its methods, batch size,
    sequence length and bf16 setting, the teacher's forward when it distills), after ``warmup``
    steps, on copies of the teacher, in a temporary folder. Nothing else is written."""
    from ..data.batching import encode
    from ..loading import quiet_transformers
    from ..train.loop import bf16_supported, train
    from .finetune import train_config

    st = recipe.stages[0]
    steps = warmup + timed + 1  # the last step's end is not seen by on_step
    take = train_examples[: steps * st.batch_size] or train_examples
    features = encode(take, tokenizer, recipe.max_seq_length)
    clock = StepClock()
    methods: list[Any] = [m.model_copy(deep=True) for m in st.methods] + [clock]
    needs_teacher = any(m.needs_teacher for m in methods)
    cfg = train_config(
        max_steps=steps, lr=st.lr, batch_size=st.batch_size, bf16=recipe.bf16 and bf16_supported(),
        seed=recipe.seed, max_seq_length=recipe.max_seq_length, progress=False, save_every=10**9,
    )
    student = copy.deepcopy(teacher_net).requires_grad_(True).train()
    teacher = copy.deepcopy(teacher_net) if needs_teacher else None  # hooks stay on the copy
    with tempfile.TemporaryDirectory(prefix="compactbert-stepcost-") as tmp, quiet_transformers():
        train(student, tokenizer, spec, features, None, cfg, tmp, methods=methods, teacher=teacher)
    seconds = clock.step_seconds(warmup)
    return statistics.median(seconds) if seconds else float("nan")


def format_duration(seconds: float) -> str:
    """``"3 h 05 min"``, ``"12 min"``, ``"40 s"``."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
