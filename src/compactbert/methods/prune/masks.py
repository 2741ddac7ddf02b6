"""Pruning masks: where they live, how they are applied, and the exact lowest-k selection.

All masks live in :class:`~compactbert.nn.compressed.CompressedLinear`'s ``weight_mask`` buffer
(bool), so they are part of the model's ``state_dict``. Masks only grow: a unit pruned once stays
pruned, whichever method pruned it.
"""

from __future__ import annotations

import torch
from torch import nn

from ...nn.compressed import CompressedLinear
from ...nn.surgery import compress_modules, encoder_linear_patterns


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly ``k`` entries of 1-D ``scores`` with the lowest values.

    Ties at the threshold go to the entries that come first, so the count is exact and the choice
    deterministic.
    """
    n = scores.numel()
    out = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return out
    if k >= n:
        return ~out
    thr = torch.kthvalue(scores.float().cpu(), k).values.to(scores.device)
    out = scores < thr
    need = k - int(out.sum())
    if need > 0:
        ties = (scores == thr).nonzero().flatten()[:need]
        out[ties] = True
    return out


def bool_mask(layer: CompressedLinear) -> torch.Tensor:
    """The layer's mask as bool (all True without one)."""
    m = layer.weight_mask
    if m is None:
        return torch.ones_like(layer.weight, dtype=torch.bool)
    return m if m.dtype == torch.bool else m != 0


def set_mask(layer: CompressedLinear, mask: torch.Tensor) -> None:
    """Store ``mask`` (bool) and zero the pruned raw weights."""
    old = layer.weight_mask
    if old is not None and old.dtype == torch.bool and old.shape == mask.shape:
        old.copy_(mask)
    else:
        layer.weight_mask = mask.to(torch.bool)
    with torch.no_grad():
        layer.weight.mul_(mask.to(layer.weight.dtype))


def ensure_mask(layer: CompressedLinear) -> None:
    """Give ``layer`` an all-ones mask if it has none (the state dict then has the same keys from the start)."""
    if layer.weight_mask is None:
        layer.weight_mask = torch.ones_like(layer.weight, dtype=torch.bool)


def reapply_masks(layers) -> None:
    """Zero the pruned raw weights of ``layers`` (AdamW would otherwise move them)."""
    with torch.no_grad():
        for layer in layers:
            if layer.weight_mask is not None:
                layer.weight.mul_(layer.weight_mask.to(layer.weight.dtype))


def mask_sparsity(layers) -> float:
    """Fraction of masked-out weight entries over ``layers``."""
    total = sum(layer.weight.numel() for layer in layers)
    zeros = sum(int((~bool_mask(layer)).sum()) for layer in layers)
    return zeros / max(1, total)


def target_layers(model: nn.Module, targets: list[str] | None, where: str) -> dict[str, CompressedLinear]:
    """The ``targets`` (default: every Linear in the encoder layers), swapped for CompressedLinear."""
    patterns = targets if targets is not None else encoder_linear_patterns(model)
    return compress_modules(model, patterns, where=where)  # type: ignore[return-value]

