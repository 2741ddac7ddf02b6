"""The training loop: one readable loop on ``accelerate``, for fine-tuning and for compression.

What one step does (``methods`` are compression methods, see :mod:`compactbert.methods.base`)::

    batch   = collate(this process's slice of the step's global batch)   # dynamic padding
    m.on_step(state)                         for each method (schedules)
    with autocast(bf16 if enabled):
        outputs = model(**batch, **merged m.forward_kwargs())
        outputs.loss = task_loss(outputs.logits, labels)      # mean over this process's examples
        loss    = outputs.loss + sum(m.loss(state))
    backward(loss); clip_grad_norm; optimizer.step(); scheduler.step()
    m.after_step(state)                      for each method (re-apply masks, clamp, ...)

Methods are attached once, after the student (and the teacher, frozen and in eval mode) are on the
device and before the optimizer is built, so parameters they add are trained. ``finalize`` runs
once after the last step. The losses methods return are added to the task loss as they are; a
method that wants another mix (distillation: ``alpha * task + (1 - alpha) * kd``) reads the task
loss from ``state.outputs.loss`` and returns the difference. ``state.extras["bf16"]`` tells methods
whether the run uses bf16 autocast (their losses are computed inside it); other scalar entries
that methods put in ``state.extras`` are logged with each evaluation.

The parts :func:`train` drives (each a small class below, or a module of its own)
    :class:`Processes` (accelerate, seeds, slices), :class:`BatchPlan` (which examples each step
    takes), :class:`Stepper` (the step above: AdamW, the :class:`~compactbert.train.lr.LRSchedule`,
    DDP), :class:`~compactbert.train.evaluate.Evaluator` (every ``eval_every`` steps or epoch, at
    the last step, and when a method asks: ``state.request_evaluation()``), :class:`Checkpoints`
    and :class:`~compactbert.train.runlog.RunLog`. What methods may ask of the loop (LR rewinding
    through ``state.lr_schedule``, evaluations, a held-out split of the training data) is listed in
    :mod:`compactbert.methods.base`.

Determinism and resume
    The batches of epoch ``e`` are ``data.batching.batch_order(lengths, batch_size, seed, e)``:
    a pure function of the seed, so a resumed run takes exactly the same batches. A checkpoint
    (see :mod:`compactbert.train.checkpoint`) stores the weights, optimizer and scheduler state,
    every process's RNG state, and the position in the epoch's batch list; resuming restores all of
    it, so an interrupted run ends with the same weights and metrics as an uninterrupted one. The
    held-out split (when a method asks for one) is a pure function of the seed too, and the number of
    held-out batches drawn is part of the checkpoint.

Several processes (``accelerate launch --num_processes N``)
    Every process builds the same global batch list and takes a contiguous slice of each global
    batch (what ``split_batches`` does: the global batch does not grow with the number of
    processes). The task loss is summed per process and scaled by ``world / global_batch`` so that
    DDP's gradient average equals the gradient of the mean loss over the whole global batch, even
    when the slices differ in size. Dropout draws differ between processes (each has its own RNG
    stream, as in any DDP run); without dropout, N processes reach the result of one process up to
    float summation order. Evaluation is sharded too and gathered. Only the main process writes.

Run directory (written by the main process)
    ``model/`` best (or last) model via :func:`compactbert.nn.io.save_model`, ``checkpoint/``
    latest training state, ``metrics.jsonl`` one JSON line per evaluation, ``tensorboard/``
    (optional).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .. import defaults as D
from ..data.tasks import TaskSpec, get_task
from ..errors import UserError
from ..limits import MAX_EPOCHS, MAX_SEED, MAX_STEPS
from ..methods.base import Method, TrainState
from . import checkpoint as ckpt_io
from .evaluate import Evaluator, evaluate_model, predict
from .heldout import HeldoutBatches, heldout_fraction, split_heldout
from .lr import LRSchedule, linear_warmup_decay
from .processes import Processes, bf16_supported, cpu_processes
from .runlog import METRICS_FILE, TENSORBOARD_DIR, RunLog, loggable, progress_bar, read_metrics
from .step import Batcher, Stepper, param_groups, task_loss_sum

__all__ = [  # the helpers defined elsewhere in train/ had their home here: still importable from here
    "TrainConfig", "TrainResult", "train", "bf16_supported", "cpu_processes", "param_groups", "task_loss_sum",
    "evaluate_model", "predict", "read_metrics", "linear_warmup_decay", "METRICS_FILE", "MODEL_DIR", "TENSORBOARD_DIR",
]

MODEL_DIR = "model"
HELDOUT_DRAWN = "heldout_batches_drawn"  # train_state.json's extra: held-out batches drawn so far


class TrainConfig(BaseModel):
    """Optimisation and bookkeeping settings of one training run.

    Attributes:
        epochs: passes over the training set (fractions allowed: 0.5 = half an epoch).
        max_steps: if set, the number of optimizer steps (overrides ``epochs``).
        lr: peak learning rate of AdamW.
        batch_size: global batch size (all processes together).
        eval_batch_size: batch size for evaluation.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        warmup_ratio: share of the steps spent warming the LR up linearly; then linear decay.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        bf16: bf16 autocast for forward passes (weights and optimizer stay fp32).
        eval_every: evaluate every N steps; None evaluates at the end of each epoch. The last step
            is always evaluated.
        save_every: write a checkpoint every N steps; None writes one at each evaluation. The last
            step always gets one.
        seed: seed of the batch order, dropout and new weights.
        max_seq_length: the tokenizer's truncation length (recorded; the features are already cut).
        group_by_length: put examples of similar length in the same batch (less padding).
        keep: ``"best"`` keeps the checkpoint with the best main metric in ``model/``, ``"last"``
            the final model; None picks ``"best"`` for plain fine-tuning and ``"last"`` when
            compression methods run (their models are only complete after ``finalize``).
        tensorboard: also write TensorBoard logs to ``run_dir/tensorboard``.
        progress: show a progress bar.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: float = Field(D.EPOCHS, gt=0, le=MAX_EPOCHS)
    max_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    lr: float = Field(D.LR, gt=0)
    batch_size: int = Field(D.BATCH_SIZE, ge=1)
    eval_batch_size: int = Field(D.EVAL_BATCH_SIZE, ge=1)
    weight_decay: float = Field(D.WEIGHT_DECAY, ge=0)
    warmup_ratio: float = Field(D.WARMUP_RATIO, ge=0, le=1)
    max_grad_norm: float | None = Field(D.MAX_GRAD_NORM, gt=0)
    bf16: bool = False
    eval_every: int | None = Field(None, ge=1)
    save_every: int | None = Field(None, ge=1)
    seed: int = Field(D.SEED, ge=0, le=MAX_SEED)
    max_seq_length: int = Field(D.MAX_SEQ_LENGTH, ge=2)
    group_by_length: bool = True
    keep: Literal["best", "last"] | None = None
    tensorboard: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained student (unwrapped), after the methods' ``finalize``.
        steps: optimizer steps taken in total.
        best_step: the step whose model is in ``model/`` when ``keep == "best"``.
        best_metric: its main metric.
        metrics: the metrics of the last evaluation.
        history: every metrics.jsonl record of the run.
    """

    model: torch.nn.Module
    steps: int
    best_step: int | None
    best_metric: float | None
    metrics: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Small pieces


def _set_attention(model: torch.nn.Module, impl: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:  # older transformers
        model.config._attn_implementation = impl


def _due(step: int, every: int | None, otherwise: bool) -> bool:
    """Every ``every`` steps when set, else when ``otherwise`` holds."""
    return step % every == 0 if every else otherwise


def _keep_policy(cfg: TrainConfig, has_eval: bool, has_methods: bool) -> str:
    keep = cfg.keep or ("best" if has_eval and not has_methods else "last")
    if keep == "best" and not has_eval:
        raise ValueError("keep='best' needs eval_features")
    return keep


def _models_on_device(model: torch.nn.Module, teacher: torch.nn.Module | None, device: torch.device) -> str | None:
    """Move the student (training mode) and the teacher (frozen, eval mode) to ``device``.

    Returns the student's attention implementation before the loop switched it: on CPU, PyTorch's
    SDPA (flash) attention backward is slow, in bf16 most of all (measured on MiniLM, batch 32:
    1.3 s vs 0.55 s eager), so training runs with eager attention and :func:`train` restores it.
    """
    model.to(device)
    model.train()
    attn_before = getattr(model.config, "_attn_implementation", None)
    if device.type == "cpu" and attn_before == "sdpa":
        _set_attention(model, "eager")
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    return attn_before


class _Clock:
    """Training seconds, summed over resumed sessions."""

    def __init__(self, before: float):
        self.before, self.start = before, time.monotonic()

    def __call__(self) -> float:
        return self.before + (time.monotonic() - self.start)


# --------------------------------------------------------------------------------------------------
# The parts the loop is built from (Processes, Batcher and Stepper have modules of their own)


class BatchPlan:
    """The training batches: epoch ``e`` is ``batch_order(lengths, batch_size, seed, e)``, a pure
    function of the seed, so a resumed run takes exactly the same batches."""

    def __init__(self, features: Sequence[dict], cfg: TrainConfig):
        self.lengths = [len(f["input_ids"]) for f in features]
        self.cfg = cfg
        self.steps_per_epoch = len(self.epoch(0))
        self.total_steps = cfg.max_steps or max(1, round(cfg.epochs * self.steps_per_epoch))

    def epoch(self, e: int) -> list[list[int]]:
        from ..data.batching import batch_order

        c = self.cfg
        return batch_order(self.lengths, c.batch_size, c.seed, e, shuffle=True, group_by_length=c.group_by_length)


class Checkpoints:
    """``run_dir/checkpoint`` (training state) and ``run_dir/model`` (the kept model); see
    :mod:`compactbert.train.checkpoint`. Only the main process writes."""

    def __init__(self, run_dir: Path, procs: Processes, tokenizer: Any):
        self.run_dir, self.procs, self.tokenizer = run_dir, procs, tokenizer

    def open(self, resume: bool, total_steps: int, model: torch.nn.Module) -> tuple[Path | None, ckpt_io.ResumeState]:
        """Recover an interrupted checkpoint swap, read the checkpoint and load its weights into
        ``model``; without one (or without ``resume``), a fresh state."""
        ckpt = None
        if resume:
            if self.procs.is_main:
                ckpt_io.find_checkpoint(self.run_dir)
            self.procs.accelerator.wait_for_everyone()
            ckpt = ckpt_io.find_checkpoint(self.run_dir) if (self.run_dir / ckpt_io.CHECKPOINT_DIR).is_dir() else None
        if ckpt is None:
            return None, ckpt_io.ResumeState(total_steps=total_steps, world_size=self.procs.world)
        rs = ckpt_io.read_state(ckpt)
        if rs.total_steps != total_steps:
            raise UserError(
                f"cannot resume {self.run_dir}: its checkpoint was made for a run of {rs.total_steps} steps, these "
                f"settings give {total_steps}; pass the same settings (epochs, batch size, data) or --overwrite"
            )
        ckpt_io.load_weights(ckpt, model)
        return ckpt, rs

    def restore_rng(self, ckpt: Path) -> None:
        """Every RNG as it was at the checkpoint: the last thing before the first step."""
        rngs = ckpt_io.load_rng_states(ckpt)
        ckpt_io.set_rng_state(rngs[self.procs.rank] if len(rngs) == self.procs.world else rngs[0])

    def save(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, rs: ckpt_io.ResumeState) -> None:
        rng = self.procs.gather([ckpt_io.get_rng_state()])
        if self.procs.is_main:
            ckpt_io.save_checkpoint(self.run_dir, model, optimizer, scheduler, rs, rng)

    def save_model(self, model: torch.nn.Module) -> None:
        from ..nn.io import save_model

        if self.procs.is_main:
            with ckpt_io.staged_dir(self.run_dir / MODEL_DIR) as tmp:
                save_model(model, self.tokenizer, tmp)


def _heldout(
    features: Sequence[dict], methods: list[Method], cfg: TrainConfig
) -> tuple[Sequence[dict], list[dict]]:
    """(training features, held-out features) for the methods' held-out request (none: all train)."""
    fraction = heldout_fraction(methods)
    if fraction is None:
        return features, []
    train_idx, held_idx = split_heldout(len(features), fraction, cfg.seed)
    return [features[i] for i in train_idx], [features[i] for i in held_idx]


def _advance(rs: ckpt_io.ResumeState, b: int, n_batches: int, loss: float) -> bool:
    """Count the step that took batch ``b`` of ``n_batches``; True when it ended the epoch."""
    rs.step += 1
    rs.batch_in_epoch = b + 1
    rs.loss_sum += loss
    rs.loss_count += 1
    if rs.batch_in_epoch == n_batches:
        rs.epoch += 1
        rs.batch_in_epoch = 0
        return True
    return False


def _eval_record(rs: ckpt_io.ResumeState, steps_per_epoch: int, lr: float, state: TrainState, elapsed: float) -> dict:
    """The metrics.jsonl line of an evaluation (``state.metrics``) after step ``rs.step``."""
    return {
        "step": rs.step,
        "epoch": round(rs.step / steps_per_epoch, 4),
        "loss": rs.loss_sum / max(1, rs.loss_count),
        "lr": lr,
        "metrics": state.metrics,
        "elapsed": round(elapsed, 3),
        **({"extras": extras} if (extras := loggable(state.extras)) else {}),
    }


class _Run:
    """The parts of one training run, built by :meth:`start` in the order resume depends on, and what
    the loop does with them between steps (evaluate, checkpoint, finish)."""

    @classmethod
    def start(
        cls, model: torch.nn.Module, tokenizer: Any, spec: TaskSpec, train_features: Sequence[dict],
        eval_features: Sequence[dict] | None, cfg: TrainConfig, run_dir: Path, methods: list[Method],
        teacher: torch.nn.Module | None, resume: bool, evaluator: Any = None, extras: dict[str, Any] | None = None,
    ) -> "_Run":
        run = cls()
        run.cfg, run.spec, run.run_dir, run.methods = cfg, spec, run_dir, methods
        run.keep = _keep_policy(cfg, bool(eval_features) or evaluator is not None, bool(methods))
        if not train_features:
            raise UserError(f"no training examples for task {spec.name}")
        run.procs = procs = Processes(cfg, run_dir)  # seeds every RNG
        train_features, heldout_features = _heldout(train_features, methods, cfg)
        run.plan = plan = BatchPlan(train_features, cfg)

        # ---- models on the device, methods attached before the optimizer sees the parameters ----
        run.attn_before = _models_on_device(model, teacher, procs.device)
        run.state = state = TrainState(
            model=model, teacher=teacher, total_steps=plan.total_steps, epoch=0, steps_per_epoch=plan.steps_per_epoch,
            task=spec, tokenizer=tokenizer, device=procs.device, extras={**(extras or {}), "bf16": cfg.bf16},
            lr_schedule=LRSchedule(cfg.warmup_ratio, plan.total_steps), features=train_features,
        )
        for m in methods:
            m.attach(state)
        batcher = Batcher(model, tokenizer, procs.device)

        # ---- resume (weights, optimizer, log, held-out position); the RNG states last ----
        run.ckpts = Checkpoints(run_dir, procs, tokenizer)
        ckpt, run.rs = run.ckpts.open(resume, plan.total_steps, model)
        run.stepper = Stepper(model, methods, state, cfg, spec, procs, batcher, train_features, ckpt)
        run.log = RunLog(run_dir, procs.is_main, cfg.tensorboard, run.rs.step if ckpt else None)
        state.metrics = run.log.last_metrics
        run.heldout = state.heldout_batches = _heldout_batches(heldout_features, batcher, cfg, run.rs)
        run.evaluate = evaluator
        if eval_features and evaluator is None:
            pad_id = batcher.collate.pad_token_id
            run.evaluate = Evaluator(
                spec, eval_features, cfg.eval_batch_size, cfg.bf16, pad_id, procs.rank, procs.world, procs.gather
            )
        if ckpt:
            run.ckpts.restore_rng(ckpt)
        return run

    def model(self) -> torch.nn.Module:
        """The student, unwrapped."""
        return self.procs.unwrap(self.stepper.ddp_model)

    def evaluation(self, lr: float, elapsed: float, bar: Any) -> None:
        """Evaluate after step ``rs.step``: log it, and keep the model if it is the best so far."""
        rs, state, metric = self.rs, self.state, self.spec.main_metric
        state.metrics = self.evaluate(self.model())
        record = _eval_record(rs, self.plan.steps_per_epoch, lr, state, elapsed)
        rs.loss_sum, rs.loss_count = 0.0, 0
        value = state.metrics[metric]
        if self.keep == "best" and (rs.best_metric is None or value > rs.best_metric):
            rs.best_metric, rs.best_step = value, rs.step
            self.ckpts.save_model(self.model())
        self.log.evaluation(record, bar, self.plan.total_steps)

    def checkpoint(self, elapsed: float) -> None:
        self.rs.elapsed = elapsed
        if self.heldout is not None:
            self.rs.extra[HELDOUT_DRAWN] = self.heldout.drawn
        self.ckpts.save(self.model(), self.stepper.optimizer, self.stepper.scheduler, self.rs)

    def finish(self) -> TrainResult:
        """Finalize the methods, restore the attention implementation, keep the model."""
        self.log.close()
        unwrapped, rs, state = self.model(), self.rs, self.state
        state.step, state.epoch = rs.step, rs.epoch
        for m in self.methods:
            m.finalize(state)
        if self.attn_before == "sdpa" and getattr(unwrapped.config, "_attn_implementation", None) == "eager":
            _set_attention(unwrapped, "sdpa")
        if self.keep == "last" or not (self.run_dir / MODEL_DIR).is_dir():
            self.ckpts.save_model(unwrapped)
        self.procs.accelerator.wait_for_everyone()
        best = self.keep == "best"
        return TrainResult(
            model=unwrapped,
            steps=rs.step,
            best_step=rs.best_step if best else rs.step,
            best_metric=rs.best_metric if best else (state.metrics or {}).get(self.spec.main_metric),
            metrics=state.metrics,
            history=self.log.history,
        )


def _heldout_batches(
    features: list[dict], batcher: Batcher, cfg: TrainConfig, rs: ckpt_io.ResumeState
) -> HeldoutBatches | None:
    """``state.heldout_batches``, continuing where the checkpoint left it; None without held-out examples."""
    if not features:
        return None
    lengths = [len(f["input_ids"]) for f in features]
    return HeldoutBatches(
        lengths, cfg.batch_size, cfg.seed, cfg.group_by_length, lambda idx: batcher.batch([features[i] for i in idx]),
        start=int(rs.extra.get(HELDOUT_DRAWN, 0)),
    )


def _show(bar: Any, loss: float, metrics: dict[str, float] | None, main_metric: str) -> None:
    postfix = {"loss": f"{loss:.4f}"}
    if metrics:
        postfix[main_metric[:8]] = f"{metrics[main_metric]:.4f}"
    bar.set_postfix(postfix, refresh=False)
    bar.update(1)


# --------------------------------------------------------------------------------------------------
# The loop


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    task: str | TaskSpec,
    train_features: Sequence[dict],
    eval_features: Sequence[dict] | None,
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    methods: Sequence[Method] = (),
    teacher: torch.nn.Module | None = None,
    resume: bool = False,
    evaluator: Any = None,
    extras: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_features`` and keep the best (or last) model in ``run_dir/model``.

    Args:
        model: a ``*ForSequenceClassification`` model (its head sized for the task).
        tokenizer: saved next to the model; its pad id pads the batches.
        task: the task (its loss type and main metric).
        train_features: encoded training examples (``data.batching.encode``); a share of them is held
            out when a method asks (``Method.heldout_fraction``).
        eval_features: encoded evaluation examples, or None/empty to skip evaluation.
        cfg: the optimisation settings.
        run_dir: the run directory (created if missing).
        methods: compression methods, hooked in as described in the module docstring.
        teacher: a teacher model for distillation methods (frozen, eval mode, same device).
        resume: continue from ``run_dir/checkpoint`` if there is one.
        evaluator: instead of scoring ``eval_features`` with the task's metrics, call
            ``evaluator(model) -> {metric: value}`` (it must return the task's main metric and leave
            the model's train/eval mode as it found it); a label-free task is scored this way.
        extras: entries for ``state.extras`` that methods read (e.g. ``"pooling"``, a
            :class:`compactbert.nn.pooling.Pooling` for the sentence-embedding distillation term).

    Returns:
        A :class:`TrainResult`.
    """
    from .malloc import keep_freed_memory

    keep_freed_memory()  # fresh per-step tensors (quantized weights, activations) skip page faults
    spec = get_task(task)
    run = _Run.start(model, tokenizer, spec, train_features, eval_features, cfg, Path(run_dir), list(methods), teacher,
                     resume, evaluator, extras)
    rs, state, total = run.rs, run.state, run.plan.total_steps
    bar = progress_bar(total, rs.step, run.procs.is_main and cfg.progress, spec.name)
    clock = _Clock(rs.elapsed)
    while rs.step < total:
        batches = run.plan.epoch(rs.epoch)
        for b in range(rs.batch_in_epoch, len(batches)):
            if rs.step >= total:
                break
            state.step, state.epoch = rs.step, rs.epoch
            step_loss, lr = run.stepper.step(batches[b])
            end_of_epoch = _advance(rs, b, len(batches), step_loss)
            last = rs.step == total
            run.log.step(rs.step, step_loss, lr)
            requested, state.evaluation_requested = state.evaluation_requested, False
            do_eval = run.evaluate is not None and (last or requested or _due(rs.step, cfg.eval_every, end_of_epoch))
            if do_eval:
                run.evaluation(lr, clock(), bar)
            rs.done = rs.done or last
            if last or _due(rs.step, cfg.save_every, do_eval):
                run.checkpoint(clock())
            _show(bar, step_loss, state.metrics, spec.main_metric)
    bar.close()
    return run.finish()
