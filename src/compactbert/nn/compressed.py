"""Linear and embedding layers with three compression slots that stack without switches.

:class:`CompressedLinear` is an ``nn.Linear`` and :class:`CompressedEmbedding` an ``nn.Embedding``
with:

``weight_mask``
    A persistent buffer (``None`` when unpruned) of the weight's shape, bool or float 0/1.
    Pruning methods set it (``layer.weight_mask = mask``) and may update it in place; it is saved in
    the state dict and restored by ``load_state_dict`` even into a fresh layer that has no mask yet.
``weight_quantizer``
    A :class:`~compactbert.nn.quantizers.Quantizer` or ``None``. Setting it calls
    ``quantizer.initialize(masked_weight)`` (learned step sizes need the shape) and moves it to the
    weight's device.
``input_quantizer``
    An activation quantizer applied to the layer's input, or ``None`` (Linear only).

The weight used in forward (:meth:`effective_weight`) is::

    w = weight * mask                 # pruned entries are 0 and get no gradient
    w = weight_quantizer(w) * mask    # re-masked: binary has no zero level; exact no-op otherwise
    y = F.linear(input_quantizer(x), w, bias)

Example::

    lin = CompressedLinear.from_linear(model.classifier)
    lin.weight_mask = lin.weight.abs() > 0.01
    lin.weight_quantizer = TernaryQuantizer()
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import Quantizer

__all__ = ["CompressedLinear", "CompressedEmbedding", "CompressedModule", "is_compressed"]


class _CompressedMixin:
    """The mask and quantizer slots shared by the Linear and Embedding versions."""

    weight: nn.Parameter
    weight_mask: torch.Tensor | None
    weight_quantizer: Quantizer | None

    def _init_slots(self, weight_quantizer=None, input_quantizer=None, weight_mask=None) -> None:
        self.register_buffer("weight_mask", None)  # persistent once set
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        if weight_mask is not None:
            self.weight_mask = weight_mask

    def _adopt(self, module: nn.Module, weight_quantizer=None, input_quantizer=None, weight_mask=None):
        """Share ``module``'s weight (and bias) Parameters (same objects) and training mode, then fill
        the slots: the mask first, since setting the weight quantizer initializes it on the masked weight."""
        for name in ("weight", "bias"):
            if name in self._parameters:  # type: ignore[attr-defined]
                setattr(self, name, getattr(module, name))
        self.train(module.training)  # type: ignore[attr-defined]
        self.weight_mask = weight_mask
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "weight_mask" and value is not None:
            value = self._checked_mask(value)
        if name in ("weight_quantizer", "input_quantizer") and value is not None:
            if not isinstance(value, Quantizer):
                raise TypeError(f"{name} must be a Quantizer or None, got {type(value).__name__}")
            if name == "input_quantizer" and isinstance(self, nn.Embedding):
                raise TypeError("an embedding's input is token ids: it has no input_quantizer")
            if "weight" in self._parameters and self.weight is not None and self.weight.device.type != "meta":
                value.to(self.weight.device)
        super().__setattr__(name, value)  # type: ignore[misc]
        if name == "weight_quantizer" and value is not None and self._ready():
            value.initialize(self.masked_weight().detach())

    def _ready(self) -> bool:
        return "weight" in self._parameters and self.weight is not None and self.weight.device.type != "meta"

    def _checked_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"weight_mask must be a tensor or None, got {type(mask).__name__}")
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"weight_mask shape {tuple(mask.shape)} != weight shape {tuple(self.weight.shape)}")
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ValueError(f"weight_mask must be bool or float 0/1, got {mask.dtype}")
        return mask.detach().to(self.weight.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # A checkpoint may carry a mask this (fresh) layer does not have yet: make room for it.
        key = prefix + "weight_mask"
        if key in state_dict and self.weight_mask is None:
            saved = state_dict[key]
            self.weight_mask = torch.zeros(saved.shape, dtype=saved.dtype, device=self.weight.device)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing, unexpected, errors
        )

    def masked_weight(self) -> torch.Tensor:
        """``weight * mask`` (the weight itself when there is no mask)."""
        if self.weight_mask is None:
            return self.weight
        return self.weight * self.weight_mask.to(self.weight.dtype)

    def effective_weight(self) -> torch.Tensor:
        """The weight forward uses: masked, quantized, masked again. Differentiable (STE)."""
        w = self.masked_weight()
        if self.weight_quantizer is not None:
            w = self.weight_quantizer(w)
            if self.weight_mask is not None:
                w = w * self.weight_mask.to(w.dtype)
        return w

    def quantize_ints(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What a packer stores: ``weight_quantizer.quantize_ints(weight * mask)``.

        ``weight_quantizer.dequantize(codes, scales, zero_points, shape) * mask`` equals
        :meth:`effective_weight` bitwise (the mask product only matters for binary, which has no
        zero level).

        Raises:
            ValueError: the layer has no weight quantizer.
        """
        if self.weight_quantizer is None:
            raise ValueError("this layer has no weight_quantizer: its weight is stored as floats")
        return self.weight_quantizer.quantize_ints(self.masked_weight().detach())

    @property
    def sparsity(self) -> float:
        """Fraction of weight entries the mask removes (0.0 without a mask)."""
        if self.weight_mask is None:
            return 0.0
        return 1.0 - float((self.weight_mask != 0).sum()) / self.weight_mask.numel()

    def _slots_repr(self) -> str:
        parts = []
        if self.weight_mask is not None:
            parts.append(f"sparsity={self.sparsity:.3f}")
        return ", ".join(parts)


class CompressedLinear(_CompressedMixin, nn.Linear):
    """``nn.Linear`` with ``weight_mask``, ``weight_quantizer`` and ``input_quantizer`` slots.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        weight_quantizer: Quantizer for the weight, or None.
        input_quantizer: Quantizer for the input activations, or None.
        weight_mask: Initial mask (weight-shaped, bool or float 0/1), or None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        weight_quantizer: Quantizer | None = None,
        input_quantizer: Quantizer | None = None,
        weight_mask: torch.Tensor | None = None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_slots(weight_quantizer, input_quantizer, weight_mask)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        weight_quantizer: Quantizer | None = None,
        input_quantizer: Quantizer | None = None,
        weight_mask: torch.Tensor | None = None,
    ) -> "CompressedLinear":
        """Wrap ``linear``: the new layer shares its weight and bias Parameters (same objects)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        return new._adopt(linear, weight_quantizer, input_quantizer, weight_mask)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight is :meth:`effective_weight` (mask and quantization
        baked in). The input quantizer cannot be baked into a weight and is dropped."""
        w = self.effective_weight().detach()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=w.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.train(self.training)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in_features)
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.effective_weight(), self.bias)  # (..., out_features)

    def extra_repr(self) -> str:
        extra = self._slots_repr()
        return super().extra_repr() + (", " + extra if extra else "")


class CompressedEmbedding(_CompressedMixin, nn.Embedding):
    """``nn.Embedding`` with ``weight_mask`` and ``weight_quantizer`` slots (XTC quantizes the word
    embeddings). In training mode, a row-local quantizer (binary, ternary, per-row/group int)
    quantizes only the looked-up rows, which gives the same values at a fraction of the cost; in
    eval mode the whole table is quantized, exactly as :meth:`effective_weight` (and the packer) does.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        device=None,
        dtype=None,
        weight_quantizer: Quantizer | None = None,
        weight_mask: torch.Tensor | None = None,
    ):
        super().__init__(
            num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, device=device, dtype=dtype,
        )
        self._init_slots(weight_quantizer, weight_mask=weight_mask)

    @classmethod
    def from_embedding(
        cls,
        emb: nn.Embedding,
        weight_quantizer: Quantizer | None = None,
        weight_mask: torch.Tensor | None = None,
    ) -> "CompressedEmbedding":
        """Wrap ``emb``: the new layer shares its weight Parameter (same object)."""
        new = cls(
            emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, max_norm=emb.max_norm,
            norm_type=emb.norm_type, scale_grad_by_freq=emb.scale_grad_by_freq, sparse=emb.sparse, device="meta",
        )
        return new._adopt(emb, weight_quantizer, weight_mask=weight_mask)

    def to_embedding(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` with mask and quantization baked into its weight."""
        w = self.effective_weight().detach().clone()
        emb = nn.Embedding(
            self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx, max_norm=self.max_norm,
            norm_type=self.norm_type, scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse, _weight=w,
        )
        emb.train(self.training)
        return emb

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids: (batch, seq)
        q = self.weight_quantizer
        if self.training and q is not None and q.row_local and self.max_norm is None:
            rows = F.embedding(ids, self.weight, self.padding_idx, None, self.norm_type,
                               self.scale_grad_by_freq, self.sparse)  # (batch, seq, dim)
            flat = rows.reshape(-1, self.embedding_dim)  # (tokens, dim): each a row of the table
            if self.weight_mask is not None:
                m = F.embedding(ids, self.weight_mask.to(self.weight.dtype)).reshape(-1, self.embedding_dim)
                flat = q(flat * m) * m
            else:
                flat = q(flat)
            return flat.reshape(rows.shape)
        return F.embedding(ids, self.effective_weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)  # (batch, seq, dim)

    def extra_repr(self) -> str:
        extra = self._slots_repr()
        return super().extra_repr() + (", " + extra if extra else "")


CompressedModule = (CompressedLinear, CompressedEmbedding)


def is_compressed(module: nn.Module) -> bool:
    """True for a :class:`CompressedLinear` or :class:`CompressedEmbedding`."""
    return isinstance(module, CompressedModule)
