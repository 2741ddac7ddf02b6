"""A layer's weight as the packed format sees it: exact effective values plus what stores them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import UserError
from ...nn.quant import ActivationQuantizer, Codes, WeightQuantizer

__all__ = ["PackedWeight", "extract"]


@dataclass
class PackedWeight:
    """A weight as the runtime sees it: effective float values plus how to store them compactly.

    Attributes:
        eff: float32 (rows, cols), the exact weight the training-time forward uses.
        mask: bool, kept entries (None: unpruned).
        codes: The quantizer's codes (None: stored as floats).
        quantizer: The weight quantizer that decodes ``codes`` (None with them).
        bias: float32 (rows,) or None.
        source: The parameter's name in the model.
        act: The layer's input quantizer, or None.
    """

    eff: torch.Tensor
    mask: torch.Tensor | None
    codes: Codes | None
    quantizer: WeightQuantizer | None
    bias: torch.Tensor | None
    source: str
    act: ActivationQuantizer | None = None

    def select(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> "PackedWeight":
        """The weight restricted to ``rows`` (output features) and/or ``cols`` (input features)."""
        r = slice(None) if rows is None else rows
        c = slice(None) if cols is None else cols
        return PackedWeight(
            eff=self.eff[r][:, c], mask=self.mask[r][:, c] if self.mask is not None else None,
            codes=self.codes.select(rows, cols) if self.codes is not None else None, quantizer=self.quantizer,
            bias=self.bias[r] if (self.bias is not None and rows is not None) else self.bias,
            source=self.source, act=self.act,
        )


def _checked_codes(module: nn.Module, q: WeightQuantizer, wm: torch.Tensor, mask, source: str):
    """(codes, effective weight) of a quantized layer; the decoded codes must be its effective weight."""
    codes = q.encode(wm)
    limit = torch.pow(2, codes.row_bits)[:, None]
    if codes.stored.numel() and (int(codes.stored.min()) < 0 or bool((codes.stored >= limit).any())):
        raise RuntimeError(f"{source}: codes outside their rows' bit widths")
    eff = q.decode(codes)
    if mask is not None:
        eff = eff * mask.float()
    with torch.no_grad():
        ref = module.effective_weight().detach().float().cpu()
    if not torch.equal(eff, ref):
        raise RuntimeError(
            f"{source}: decoding the quantizer's integer codes does not reproduce its effective weight "
            f"(max diff {float((eff - ref).abs().max()):.3g}); the packing contract is broken"
        )
    return codes, eff


def extract(module: nn.Module, source: str) -> PackedWeight:
    """Read a Linear / Embedding (compressed or not) into a :class:`PackedWeight` (full shape)."""
    w = module.weight.detach().float().cpu()
    if w.dim() != 2:
        raise UserError(f"{source}: expected a 2-D weight, got shape {tuple(w.shape)}")
    mask_t = getattr(module, "weight_mask", None)
    mask = (mask_t.detach().cpu() != 0) if mask_t is not None else None
    wm = w * mask.float() if mask is not None else w
    q = getattr(module, "weight_quantizer", None)
    codes, eff = None, wm
    if q is not None:
        if not isinstance(q, WeightQuantizer):
            raise UserError(f"{source}: weight quantizer kind {q.kind!r} cannot be exported (not a weight quantizer)")
        codes, eff = _checked_codes(module, q, wm, mask, source)
    bias = getattr(module, "bias", None)
    bias = bias.detach().float().cpu() if isinstance(bias, torch.Tensor) else None
    iq = getattr(module, "input_quantizer", None)
    if iq is not None and not isinstance(iq, ActivationQuantizer):
        raise UserError(f"{source}: input quantizer kind {iq.kind!r} cannot be exported")
    return PackedWeight(eff=eff, mask=mask, codes=codes, quantizer=q, bias=bias, source=source, act=iq)
