"""AQ-BERT: a differentiable search of one bit width per group of output rows, under a byte budget.

The super-network (EdMIPS-style, cheap): every targeted Linear keeps its one weight tensor; its
weight quantizer, :class:`SearchQuantizer`, holds architecture logits ``alpha`` of shape
``(groups, candidates)`` and returns the candidates' quantized weights mixed per group by
Gumbel-softmax probabilities, before the layer's single matrix product::

    p[g]  = gumbel_softmax(alpha[g], tau)                         # (candidates,)
    W_mix = sum_b p[group(row), b] * Q_b(W)                       # Q_0 = 0, Q_b: per-row asymmetric

One search step (method :class:`MixedPrecisionSearch`, recipe ``type: mixed_precision_search``):

1. **weights** -- the loop's own step on a training batch: task loss (+ the stage's distillation),
   ``alpha`` fixed (the mixing probabilities carry no gradient);
2. **architecture** -- in ``after_step``, from epoch ``n1`` on and every ``arch_every`` steps: one
   batch of the held-out split (``state.heldout_batches``; never the dev set), weights fixed,
   ``L_val = CE + lambda_size * L_size``, one Adam step on every ``alpha`` (first-order
   alternation, as DARTS' first-order variant). ``L_size`` is the band penalty around the target
   bytes V (:func:`~.budget.band_penalty`) of the expected size
   ``E[C] = sum_g sum_b softmax(alpha[g])_b * cost[g, b]`` (codes + per-row scales, in bytes).

The temperature is ``tau = t0`` for the first ``n0`` epochs, then ``t0 * exp(-eta * (epoch - n0))``
(epochs counted fractionally: step / steps per epoch).

``finalize``: every group takes its arg-max width. If those widths miss the budget by more than
``tolerance`` (2%), the widths are re-chosen by the multiple-choice knapsack that keeps the most
probable architecture (max ``sum log softmax(alpha)``) within ``[(1 - tolerance/2) V, V]``. Every layer
then gets a :class:`~compactbert.nn.quant.GroupBitsQuantizer` with its widths: they are saved in the
model's ``compression.json`` (read them with :func:`~.common.widths_from_spec`). Fine-tune the fixed
network in a later stage (QAT + distillation).

In eval mode (the loop's evaluations) a searching layer computes its arg-max architecture, exactly
what ``finalize`` would install from the current logits.

Resume: logits and their Adam moments are buffers of the quantizers, saved in checkpoints; the
held-out batches resume where they were, so an interrupted search continues as it would have.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, PrivateAttr, field_validator

from ...errors import UserError
from ...nn.quant import GroupBitsQuantizer, WeightQuantizer
from ...nn.quant.codes import ScaleLayout
from ...nn.quant.groupbits import asym_row_codes
from ...nn.quant.ops import rows_cols, run_compiled
from ...registry import register_method
from ..base import TrainState
from ..quantize import COMPILE_MIN_STEPS
from .budget import band_penalty, expected_bytes
from .common import FIT_TOLERANCE, GroupBudgetMethod, install_widths, mean_over_processes, task_loss_mean
from .knapsack import solve_mckp

__all__ = ["SearchQuantizer", "MixedPrecisionSearch", "temperature", "ARCH_BETAS"]

#: Adam betas of the architecture logits (DARTS' choice for its architecture parameters).
ARCH_BETAS = (0.5, 0.999)
_ARCH_EPS = 1e-8


# ------------------------------------------------------------------------------ the mixed weight
_KERNELS: dict[tuple[int, ...], Any] = {}


def candidate_values(widths: tuple[int, ...]):
    """The plain tensor function ``w (rows, cols) -> (len(nonzero widths), rows, cols)``: ``Q_b(w)``
    for every nonzero width, ``codes * scales + mins`` of
    :func:`~compactbert.nn.quant.groupbits.asym_row_codes`, i.e. exactly what a
    GroupBitsQuantizer at ``b`` bits computes. One function per width set, so that ``run_compiled``
    keeps one compiled graph for it.
    """
    if widths not in _KERNELS:
        def values(w: torch.Tensor) -> torch.Tensor:
            out = []
            for b in widths:
                codes, scales, mins = asym_row_codes(w, 2**b - 1)
                out.append(codes * scales + mins)
            return torch.stack(out)

        _KERNELS[widths] = values
    return _KERNELS[widths]


class MixedQuant(torch.autograd.Function):
    """``W_mix[r] = sum_k p[r, k] * Q_k[r]`` over the nonzero candidates' values ``Q`` (K, rows,
    cols), with a straight-through gradient for ``W`` (``dW = dW_mix * sum_k p[r, k]``: each
    ``Q_k`` passes its gradient through) and the exact one for ``p`` (``dp[r, k] = sum_cols dW_mix *
    Q_k``, only when ``p`` needs it, i.e. in an architecture step).
    """

    @staticmethod
    def forward(ctx, w, p, values):  # noqa: D102  w: (rows, cols), p: (rows, K), values: (K, rows, cols)
        ctx.save_for_backward(p, values)
        out = values[0] * p[:, :1]
        for k in range(1, values.shape[0]):
            out.addcmul_(values[k], p[:, k : k + 1])
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        p, values = ctx.saved_tensors
        gw = grad * p.sum(dim=1, keepdim=True) if ctx.needs_input_grad[0] else None
        gp = None
        if ctx.needs_input_grad[1]:
            gp = torch.stack([(grad * values[k]).sum(dim=1) for k in range(values.shape[0])], dim=1)
        return gw, gp, None


def temperature(epoch: float, t0: float, eta: float, n0: float) -> float:
    """Gumbel-softmax temperature at (fractional) ``epoch``: ``t0`` until ``n0``, then
    ``t0 * exp(-eta * (epoch - n0))``."""
    return t0 if epoch < n0 else t0 * math.exp(-eta * (epoch - n0))


class SearchQuantizer(WeightQuantizer):
    """The searching weight quantizer of one layer (see the module docstring).

    Not a registered kind: it lives only during a search stage (which must keep its last model,
    see :meth:`MixedPrecisionSearch.check_in_recipe`); ``finalize`` replaces it by a
    GroupBitsQuantizer. Checkpoints hold its buffers through the state dict.

    Args:
        row_group_size: consecutive output rows per group.
        candidates: the widths a group may take (sorted; 0 = the group is pruned).

    Buffers (created by :meth:`initialize` once the weight's rows are known, saved in checkpoints):
        logits ``(groups, candidates)``; arch_m, arch_v (Adam moments, same shape); arch_steps (scalar).
    """

    kind = "mixed_precision_search"
    param_names = ("scales", "mins")

    def __init__(self, row_group_size: int, candidates: Sequence[int]):
        super().__init__()
        self.row_group_size = int(row_group_size)
        self.candidates = [int(b) for b in candidates]
        for name in ("logits", "arch_m", "arch_v", "arch_steps"):
            self.register_buffer(name, None)
        self.tau = 1.0  # set by the method every step
        self.arch_leaf: torch.Tensor | None = None  # logits with a gradient, during an architecture step
        self._cache: tuple | None = None  # (a copy of the weight, its Q values), see values()

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "row_group_size": self.row_group_size, "candidates": list(self.candidates)}

    @property
    def bits(self) -> int:  # type: ignore[override]
        return max(self.candidates)

    def check_shape(self, shape, where: str = "") -> None:
        rows, _ = rows_cols(shape)
        if rows % self.row_group_size:
            at = f"{where}: " if where else ""
            raise UserError(f"{at}row_group_size={self.row_group_size} does not divide the {rows} rows of a weight "
                            f"of shape {tuple(shape)}; valid: a divisor of {rows}")

    def initialize(self, w: torch.Tensor) -> None:
        self.check_shape(tuple(w.shape))
        shape = (int(w.shape[0]) // self.row_group_size, len(self.candidates))
        if self.logits is None or tuple(self.logits.shape) != shape:
            self.logits = torch.zeros(shape, device=w.device)
            self.arch_m = torch.zeros(shape, device=w.device)
            self.arch_v = torch.zeros(shape, device=w.device)
            self.arch_steps = torch.zeros((), dtype=torch.int64, device=w.device)

    # -- the discrete architecture -------------------------------------------------------------
    def probabilities(self) -> torch.Tensor:
        """``softmax(logits)`` per group: (groups, candidates)."""
        return torch.softmax(self.logits.float(), dim=-1)

    def chosen_bits(self) -> list[int]:
        """Each group's arg-max width."""
        return [self.candidates[i] for i in self.logits.argmax(dim=-1).tolist()]

    def fixed(self) -> GroupBitsQuantizer:
        """The arg-max architecture as a plain GroupBitsQuantizer."""
        return GroupBitsQuantizer(self.row_group_size, self.chosen_bits()).to(self.logits.device)

    def row_bits(self, shape) -> torch.Tensor:
        return torch.tensor(self.chosen_bits(), dtype=torch.int64).repeat_interleave(self.row_group_size)

    def scale_layout(self, shape) -> ScaleLayout:
        return ScaleLayout("row")

    def quantize_ints(self, w):
        """The arg-max architecture's codes (what eval mode computes)."""
        return self.fixed().quantize_ints(w)

    def dequantize(self, ints, scales, zero_points, shape):
        return self.fixed().dequantize(ints, scales, zero_points, shape)

    def decode_values(self, stored, params):
        return stored * params["scales"] + params["mins"]

    # -- forward ---------------------------------------------------------------------------------
    def values(self, w: torch.Tensor) -> torch.Tensor:
        """``Q_b(w)`` of the nonzero candidates, (K, rows, cols).

        An architecture step (after the optimizer step) keeps its values with a copy of ``w``; the
        next weight step, whose weights are still those (compared exactly), reuses them: one
        quantization per training step instead of two, for the memory of a copy of the weight and
        its K quantized versions.
        """
        w = w.detach().float()
        if self._cache is not None and self._cache[0].shape == w.shape and torch.equal(self._cache[0], w):
            return self._cache[1]
        nonzero = tuple(b for b in self.candidates if b)
        with torch.no_grad():
            vals = run_compiled(candidate_values(nonzero), self.compiled, w)
        self._cache = (w.clone(), vals) if self.arch_leaf is not None else None
        return vals

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # w: (rows, cols)
        if not self.training:
            return self.fixed()(w)
        logits = self.arch_leaf if self.arch_leaf is not None else self.logits
        p = F.gumbel_softmax(logits.float(), tau=self.tau, dim=-1)  # (groups, candidates)
        nonzero = [k for k, b in enumerate(self.candidates) if b]
        p_rows = p[:, nonzero].repeat_interleave(self.row_group_size, dim=0)  # (rows, nonzero candidates)
        return MixedQuant.apply(w, p_rows, self.values(w)).to(w.dtype)

    # -- the architecture step -------------------------------------------------------------------
    def begin_arch(self) -> torch.Tensor:
        """Make the logits differentiable for one architecture step; returns the leaf tensor."""
        self.arch_leaf = self.logits.detach().float().clone().requires_grad_(True)
        return self.arch_leaf

    def end_arch(self) -> None:
        self.arch_leaf = None

    @torch.no_grad()
    def adam_step(self, grad: torch.Tensor, lr: float) -> None:
        """One Adam step of the logits with ``grad`` (moments kept in buffers)."""
        b1, b2 = ARCH_BETAS
        self.arch_steps += 1
        t = int(self.arch_steps)
        self.arch_m.mul_(b1).add_(grad, alpha=1 - b1)
        self.arch_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.arch_m / (1 - b1**t)
        v_hat = self.arch_v / (1 - b2**t)
        self.logits.sub_(lr * m_hat / (v_hat.sqrt() + _ARCH_EPS))


@register_method("mixed_precision_search")
class MixedPrecisionSearch(GroupBudgetMethod):
    """AQ-BERT's differentiable mixed-precision search (see the module docstring).

    Recipe keys (besides budget, candidates, row_group_size, targets):
        heldout: share of the stage's training examples held out for the architecture steps, in (0, 0.5].
        t0, eta, n0: temperature schedule (``t0`` until epoch ``n0``, then decaying by ``exp(-eta)`` per epoch).
        n1: epoch from which the architecture logits are updated.
        lambda_size: weight of the size penalty in ``L_val``.
        eps: half-width of the size band, relative to the budget.
        arch_lr: Adam learning rate of the logits.
        arch_every: one architecture step every this many weight steps (1: every step).
        tolerance: the final size may differ from the budget by at most this share.
        compile: run the mixing through ``torch.compile`` (same values; several times faster on
            CPU, compiling takes seconds per weight shape); ``auto``: for runs of at least
            ``COMPILE_MIN_STEPS`` steps, as ``quantize`` does.
    """

    type: Literal["mixed_precision_search"] = "mixed_precision_search"
    heldout: float = 0.1
    t0: float = Field(5.0, gt=0)
    eta: float = Field(1.0, ge=0)
    n0: float = Field(0.5, ge=0)
    n1: float = Field(0.5, ge=0)
    lambda_size: float = Field(1.0, ge=0)
    eps: float = Field(0.01, ge=0, lt=1)
    arch_lr: float = Field(0.01, gt=0)
    arch_every: int = Field(1, ge=1)
    tolerance: float = Field(FIT_TOLERANCE, gt=0, lt=0.5)
    compile: bool | Literal["auto"] = "auto"

    _layers: dict[str, Any] = PrivateAttr(default_factory=dict)
    _table: Any = PrivateAttr(default=None)
    _target: float = PrivateAttr(default=0.0)
    _costs: list = PrivateAttr(default_factory=list)

    @field_validator("heldout")
    @classmethod
    def _heldout_ok(cls, v: float) -> float:
        if not 0.0 < v <= 0.5:
            raise ValueError(f"heldout={v!r} is outside (0, 0.5]; valid: the share of training examples held out "
                             "for the architecture steps, e.g. 0.1")
        return v

    def heldout_fraction(self) -> float | None:
        return self.heldout

    def check_in_recipe(self, stages: list[Any], index: int) -> list[str]:
        """A search stage keeps its last model (the finalized widths; a mid-search best model is a
        super-network no later stage can load); without a later stage the widths are not fine-tuned."""
        if getattr(stages[index], "keep", "last") != "last":
            raise ValueError(f"{self.type} needs its stage to keep the last model (keep: last), not "
                             f"{stages[index].keep!r}: only the finalized widths can be saved")
        if index == len(stages) - 1:
            return [f"{self.type} is in the last stage: the chosen widths are not fine-tuned afterwards; AQ-BERT "
                    "adds a QAT + distillation stage with the widths fixed (see recipes/aq-bert.yaml)"]
        return []

    def describe(self) -> str:
        return (f"{self.type}: AQ-BERT differentiable search, {self.describe_budget()}; Gumbel-softmax "
                f"t0={self.t0:g} eta={self.eta:g} after n0={self.n0:g} epochs, logits from epoch n1={self.n1:g} "
                f"on {self.heldout:g} of the training data (Adam {self.arch_lr:g}), L_val = CE + "
                f"{self.lambda_size:g} * band(eps={self.eps:g})")

    # -- hooks ------------------------------------------------------------------------------------
    def _attach(self, state: TrainState) -> None:
        layers, table, target = self.resolve(state)
        compiled = self.compile is True or (self.compile == "auto" and state.total_steps >= COMPILE_MIN_STEPS)
        for layer in layers.values():
            layer.weight_quantizer = SearchQuantizer(self.row_group_size, self.candidates)
            layer.weight_quantizer.compiled = compiled
        self._layers, self._table, self._target = layers, table, target
        self._costs = [
            torch.as_tensor(table.costs[table.offsets[i]:table.offsets[i + 1]], dtype=torch.float32, device=state.device)
            for i in range(len(table.names))
        ]

    def quantizers(self) -> list[SearchQuantizer]:
        return [layer.weight_quantizer for layer in self._layers.values()]

    def epoch_of(self, state: TrainState) -> float:
        return state.step / max(1, state.steps_per_epoch)

    def _on_step(self, state: TrainState) -> None:
        tau = temperature(self.epoch_of(state), self.t0, self.eta, self.n0)
        for q in self.quantizers():
            q.tau = tau
        state.extras["mixed_precision/temperature"] = tau

    def _after_step(self, state: TrainState) -> None:
        if self.epoch_of(state) < self.n1 or (state.step + 1) % self.arch_every:
            return
        if state.heldout_batches is None:
            raise RuntimeError("mixed_precision_search: the loop gave no held-out batches (heldout_fraction)")
        self.arch_step(state, next(state.heldout_batches))

    def arch_step(self, state: TrainState, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One architecture step on a held-out ``batch`` (weights fixed); returns its loss terms."""
        qs = self.quantizers()
        leaves = [q.begin_arch() for q in qs]
        try:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=bool(state.extras.get("bf16"))):
                logits = state.model(**inputs).logits
            ce = task_loss_mean(logits, batch["labels"], state.task)
            size = expected_bytes([torch.softmax(a, dim=-1) for a in leaves], self._costs)
            loss = ce + self.lambda_size * band_penalty(size, self._target, self.eps)
            grads = torch.autograd.grad(loss, leaves)
        finally:
            for q in qs:
                q.end_arch()
        grads = mean_over_processes(list(grads))
        for q, g in zip(qs, grads):
            q.adam_step(g, self.arch_lr)
        out = {"arch_ce": float(ce.detach()), "expected_bytes": float(size.detach()),
               "expected_avg_bits": float(size.detach()) * 8 / self._table.n_weights}
        state.extras.update({f"mixed_precision/{k}": v for k, v in out.items()})
        return out

    def expected_size(self) -> float:
        """E[C] in bytes under the current probabilities."""
        with torch.no_grad():
            return float(expected_bytes([q.probabilities() for q in self.quantizers()], self._costs))

    def final_choice(self) -> np.ndarray:
        """The widths ``finalize`` installs, as column indices into the candidates (one per group)."""
        table = self._table
        logp = torch.cat([torch.log_softmax(q.logits.float(), dim=-1) for q in self.quantizers()]).cpu().numpy()
        choice = logp.argmax(axis=1)
        if abs(table.bytes_of(choice) - self._target) <= self.tolerance * self._target:
            return choice
        lower = (1 - self.tolerance / 2) * self._target
        try:
            return solve_mckp(-logp, table.costs, self._target, lower=lower)
        except UserError:  # nothing fits the narrow window (a tiny model): the budget alone
            return solve_mckp(-logp, table.costs, self._target)

    def _finalize(self, state: TrainState) -> None:
        table = self._table
        argmax_bytes = table.bytes_of(torch.cat([q.logits.argmax(-1) for q in self.quantizers()]).cpu().numpy())
        choice = self.final_choice()
        install_widths(self._layers, table, choice)
        final = table.bytes_of(choice)
        state.extras.update({
            "mixed_precision/argmax_bytes": argmax_bytes, "mixed_precision/final_bytes": final,
            "mixed_precision/budget_bytes": self._target,
            "mixed_precision/final_avg_bits": final * 8 / table.n_weights,
        })

