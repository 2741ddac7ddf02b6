"""The Method lifecycle every compression method follows.

A method is a pydantic model whose fields are its recipe keys; runtime state lives in private
attributes. The training loop calls, in this order::

    attach(state)            once, before the first step: module surgery, masks, teacher hooks
    forward_kwargs()         extra kwargs for the student forward (e.g. output_hidden_states)
    on_step(state)           before every optimizer step: schedules (sparsity ramps, temperatures)
    loss(state)              after the student forward: an extra loss term, or None
    after_step(state)        after every optimizer step: re-apply masks, clamp, ...
    finalize(state)          once, after the last step: harden masks, freeze quantizers

Calling a hook out of order raises ``RuntimeError``. Subclasses override the underscore versions.

What a method can ask of the loop (all through :class:`TrainState` or a declaration on the class)
    * Learning-rate rewinding: in ``attach``, ``state.lr_schedule.rewind_at(step)`` restarts the
      warm-up + decay schedule at ``step`` (:class:`compactbert.train.lr.LRSchedule`; the first
      request counts). ``state.lr_schedule`` is None outside the loop (``recipe check``'s dry run).
    * An evaluation: ``state.request_evaluation()`` (from ``on_step``, ``loss`` or ``after_step``)
      makes the loop evaluate on the dev set after this step, like a scheduled evaluation (logged
      in ``metrics.jsonl``, counted for the best model, checkpointed when ``save_every`` is None).
      ``state.metrics`` holds the latest evaluation's metrics (None before the first, and always
      when the run has no dev set, in which case requests are ignored).
    * A held-out split of the training data: a method whose ``heldout_fraction()`` returns a
      fraction in (0, 1) (None by default; declared on the class or derived from its fields, since
      the loop asks before ``attach``) gets that share of the stage's training examples set aside:
      the loop never trains the weights on them. The split is a pure function of the run's seed
      (sorted indices, at least one example on each side); when several methods ask, the largest
      fraction is held out once and shared. From the first ``on_step`` on, ``state.heldout_batches``
      is an endless iterator over batches of the held-out examples, shuffled per pass with the
      seed, each a dict like ``state.batch`` (``input_ids``, ``attention_mask``, ... and ``labels``,
      collated and on the device; ``batch_size`` examples, the whole batch on every process). Its
      position is saved in checkpoints, so a resumed run draws the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr


@dataclass
class TrainState:
    """What the loop shares with methods. Shapes: batch tensors are (batch, seq)."""

    model: torch.nn.Module  # the student, unwrapped (no DDP wrapper)
    teacher: torch.nn.Module | None = None
    step: int = 0  # optimizer steps done so far
    total_steps: int = 0
    epoch: int = 0
    steps_per_epoch: int = 0
    batch: dict[str, torch.Tensor] | None = None
    outputs: Any = None  # the student's ModelOutput for `batch`
    task: Any = None  # compactbert.data.tasks.TaskSpec
    tokenizer: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    extras: dict[str, Any] = field(default_factory=dict)  # per-step logs methods want in metrics.jsonl
    lr_schedule: Any = None  # compactbert.train.lr.LRSchedule (None outside the loop); see module docstring
    metrics: dict[str, float] | None = None  # the latest evaluation's metrics
    heldout_batches: Iterator[dict[str, torch.Tensor]] | None = None  # see heldout_fraction()
    evaluation_requested: bool = False  # set by request_evaluation(), cleared by the loop
    features: Sequence[dict] | None = None  # the training examples (encoded) the batches are drawn from
    batch_index: list[int] | None = None  # which of ``features`` ``batch`` holds, in its row order

    def request_evaluation(self) -> None:
        """Ask the loop to evaluate on the dev set after the current step (see module docstring)."""
        self.evaluation_requested = True


_ORDER = {"new": 0, "attached": 1, "finalized": 2}

#: The effects a method may declare (``Method.effects``): the recipe validator reads these instead
#: of method names. ``removes_layers``: must come before quantization (stage order);
#: ``quantizes_weights`` with ``weight_bits() <= 2``: advice to distill; ``distills``: that advice is
#: followed.
EFFECTS = frozenset({"quantizes_weights", "quantizes_activations", "prunes", "removes_layers", "distills"})


class Method(BaseModel):
    """Base class of all compression methods (see module docstring for the lifecycle)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Set by the subclass: does this method need the teacher model in the loop?
    needs_teacher: ClassVar[bool] = False
    #: What the method does, for the recipe validator (a subset of :data:`EFFECTS`).
    effects: ClassVar[frozenset[str]] = frozenset()
    _phase: str = PrivateAttr(default="new")

    def weight_bits(self) -> int | None:
        """Bits per weight after this method (None: it leaves weights as they are). With several
        widths in one model, the narrowest (what the distillation advice is about)."""
        return None

    @property
    def task_loss_weight(self) -> float:
        """Factor this method asks the loop to apply to the task loss (1.0: unchanged; distillation:
        its ``alpha``). The loop multiplies the factors of all methods of the stage."""
        return 1.0

    def heldout_fraction(self) -> float | None:
        """Share of the stage's training examples this method wants held out from weight training,
        in (0, 1), or None (the default). Asked before ``attach``; see the module docstring."""
        return None

    def check_in_recipe(self, stages: list[Any], index: int) -> list[str]:
        """Checks that need the whole recipe (``stages``; this method is in ``stages[index]``), run by
        the recipe validator: return warnings, raise ``ValueError`` for an error. None by default."""
        return []

    # ----- public hooks, with order checks -----
    def attach(self, state: TrainState) -> None:
        self._expect("new", "attach")
        self._attach(state)
        self._phase = "attached"

    def forward_kwargs(self) -> dict[str, Any]:
        return {}

    def on_step(self, state: TrainState) -> None:
        self._expect("attached", "on_step")
        self._on_step(state)

    def loss(self, state: TrainState) -> torch.Tensor | None:
        self._expect("attached", "loss")
        return self._loss(state)

    def after_step(self, state: TrainState) -> None:
        self._expect("attached", "after_step")
        self._after_step(state)

    def finalize(self, state: TrainState) -> None:
        self._expect("attached", "finalize")
        self._finalize(state)
        self._phase = "finalized"

    def describe(self) -> str:
        """One line for `compactbert recipe check`."""
        fields = ", ".join(f"{k}={v!r}" for k, v in self.model_dump(exclude={"type"}).items())
        return f"{self.type}({fields})"  # type: ignore[attr-defined]

    # ----- to override -----
    def _attach(self, state: TrainState) -> None:
        pass

    def _on_step(self, state: TrainState) -> None:
        pass

    def _loss(self, state: TrainState) -> torch.Tensor | None:
        return None

    def _after_step(self, state: TrainState) -> None:
        pass

    def _finalize(self, state: TrainState) -> None:
        pass

    def _expect(self, phase: str, hook: str) -> None:
        if self._phase != phase:
            raise RuntimeError(
                f"{type(self).__name__}.{hook}() called while the method is {self._phase!r}; "
                f"expected {phase!r} (order: attach -> on_step/loss/after_step -> finalize)"
            )
