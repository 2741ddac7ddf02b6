"""One optimizer step: batches on the device, the forward with the methods' hooks, AdamW, DDP."""

from __future__ import annotations

import math

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..data.tasks import TaskSpec
from ..methods.base import Method, TrainState
from . import checkpoint as ckpt_io
from ..data.batching import forward_names, pad_id_of
from .processes import Processes

if TYPE_CHECKING:
    from .loop import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay for matrices, none for biases, norm weights and scalar parameters."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def task_loss_sum(logits: torch.Tensor, labels: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """Sum over the batch of the per-example task loss (cross-entropy, or MSE for regression).

    Args:
        logits: (batch, num_labels).
        labels: (batch,) class ids, or float targets for regression.
    """
    if task.is_regression:
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="sum")
    return F.cross_entropy(logits.float(), labels.long(), reduction="sum")


def _fused_ok(model: torch.nn.Module) -> bool:
    """Fused AdamW needs every trainable parameter as a floating tensor on one supported device."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


class Batcher:
    """Encoded features -> ``(inputs, labels)`` on the device: dynamic padding, and only the inputs
    the model's forward takes (``input_ids`` etc.: (batch, seq); labels: (batch,))."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, device: torch.device):
        from ..data.batching import Collator

        self.collate, self.accepted, self.device = Collator(pad_id_of(model, tokenizer)), forward_names(model), device

    def __call__(self, feats: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in self.collate(feats).items()}
        labels = batch.pop("labels")
        return {k: v for k, v in batch.items() if k in self.accepted}, labels

    def batch(self, feats: list[dict]) -> dict[str, torch.Tensor]:
        """The form methods see as ``state.batch``: the inputs and ``labels``."""
        inputs, labels = self(feats)
        return {**inputs, "labels": labels}


class Stepper:
    """The optimizer step: AdamW (fused), the LR schedule, DDP; built after the methods attached, so
    parameters they add are trained, and restored from ``ckpt`` when resuming."""

    def __init__(
        self, model: torch.nn.Module, methods: list[Method], state: TrainState, cfg: TrainConfig, spec: TaskSpec,
        procs: Processes, batcher: Batcher, features: Sequence[dict], ckpt: Path | None,
    ):
        self.methods, self.state, self.cfg, self.spec = methods, state, cfg, spec
        self.procs, self.batcher, self.features = procs, batcher, features
        self.fwd_kwargs: dict[str, Any] = {}
        for m in methods:
            self.fwd_kwargs.update(m.forward_kwargs())
        # fused AdamW: one kernel for all parameters (CPU: 0.16 s vs 0.7 s per MiniLM step, measured).
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=_fused_ok(model))
        self.scheduler = state.lr_schedule.bind(optimizer)
        self.ddp_model, self.optimizer = procs.accelerator.prepare(model, optimizer)
        if ckpt:
            ckpt_io.load_optimizer(ckpt, self.optimizer, self.scheduler)

    def step(self, global_batch: list[int]) -> tuple[float, float]:
        """One optimizer step on one global batch; returns (global mean loss, the LR used)."""
        procs, state, methods = self.procs, self.state, self.methods
        mine = procs.my_slice(global_batch)
        # A process with no example of a tiny last batch still runs (DDP needs every process in the
        # backward pass) on a stand-in example whose loss is multiplied by 0.
        weight = 1.0 if mine else 0.0
        index = list(mine or global_batch[:1])
        feats = [self.features[i] for i in index]
        inputs, labels = self.batcher(feats)
        state.batch, state.batch_index = {**inputs, "labels": labels}, index
        for m in methods:
            m.on_step(state)
        with torch.autocast(procs.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            outputs = self.ddp_model(**inputs, **self.fwd_kwargs)
            # The task loss is a mean over this process's examples, like the methods' losses. Scaled by
            # this process's share of the global batch, DDP's gradient mean over processes becomes the
            # gradient of the mean over the global batch, also when the slices differ in size.
            if self.spec.label_free:  # upstream compression on a corpus: the methods' losses are all there is
                outputs.loss = torch.zeros((), device=labels.device)
            else:
                outputs.loss = task_loss_sum(outputs.logits, labels, self.spec) / len(feats)
            state.outputs = outputs
            extra = [term for m in methods if (term := m.loss(state)) is not None]
            if self.spec.label_free and not extra:
                raise RuntimeError("a label-free task needs a method loss (distillation) at every step")
            task_w = math.prod(m.task_loss_weight for m in methods)  # distillation's alpha
            loss = (task_w * outputs.loss + sum(extra)) * (weight * len(feats) * procs.world / len(global_batch))
        procs.accelerator.backward(loss)
        if self.cfg.max_grad_norm is not None:
            procs.accelerator.clip_grad_norm_(self.ddp_model.parameters(), self.cfg.max_grad_norm)
        lr_used = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for m in methods:
            m.after_step(state)
        return float(procs.accelerator.reduce(loss.detach(), reduction="mean")), lr_used
