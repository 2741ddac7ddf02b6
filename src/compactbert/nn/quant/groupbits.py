"""The groupbits kind: several bit widths inside one weight, one per group of output rows.

A weight's rows are split into consecutive groups of ``row_group_size`` rows; group ``g`` is
quantized at ``group_bits[g]`` bits (1..8) with per-row asymmetric uniform quantization
(:func:`asym_fake_quant`), or is removed (0 bits: its rows are zeros and take no bytes). All groups
at one width is plain per-row asymmetric int-k (AQ-BERT's uniform baseline)::

    q = GroupBitsQuantizer(row_group_size=16, group_bits=[4, 2, 0, 8])   # a (64, in) weight
    layer.weight_quantizer = q
    q.set_group_bits([2, 2, 4, 0])          # a search may change the widths between steps

Per row ``r`` of a group of ``b > 0`` bits: ``min_r`` and ``scale_r = (max_r - min_r) / (2^b - 1)``
are rounded to fp16 values, the codes are ``round((w - min_r) / scale_r)`` in ``[0, 2^b - 1]`` and
a value is ``code * scale_r + min_r``. Stored: the codes at ``b`` bits, an fp16 scale and an fp16
minimum per row; nothing for a 0-bit group. The packed model decodes bitwise to the training-time
values. ``group_bits`` is a persistent buffer: it is saved and loaded with the state dict.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ...errors import UserError
from .base import WeightQuantizer, register_quantizer
from .codes import ScaleLayout
from .ops import MIN_STEP, StraightThrough, check_bits, fp16_values, rows_cols, ste

__all__ = ["GroupBitsQuantizer", "asym_fake_quant", "asym_row_codes"]

MAX_BITS = 8


def asym_row_codes(w: torch.Tensor, qmax: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row asymmetric codes of a 2-D float32 ``w`` (no gradient).

    Args:
        w: (rows, cols) float32.
        qmax: the highest code, ``2^bits - 1``: an int, or a (rows, 1) float tensor (one per row).

    Returns:
        (codes (rows, cols) float32 exact integers in [0, qmax], scales (rows, 1), minimums (rows, 1)),
        scales and minimums holding fp16 values; ``codes * scales + minimums`` is the fake value.
    """
    w = w.detach()
    mins = fp16_values(w.amin(dim=1, keepdim=True))
    top = w.amax(dim=1, keepdim=True)
    scales = fp16_values((top - mins) / qmax).clamp_min(MIN_STEP)
    codes = torch.round(((w - mins) / scales).clamp_min(0.0))
    codes = torch.minimum(codes, qmax) if isinstance(qmax, torch.Tensor) else codes.clamp_max(float(qmax))
    return codes, scales, mins


def _asym_values(w: torch.Tensor, qmax: torch.Tensor | int) -> torch.Tensor:
    codes, scales, mins = asym_row_codes(w, qmax)
    return codes * scales + mins


def asym_fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row (dim 0) asymmetric uniform fake quantization of a 2-D weight at ``bits`` (0..8).

    Scales and minimums are fp16 values (so a packer stores them exactly); the gradient reaches
    ``w`` straight through. ``bits == 0`` gives zeros (gradient still straight through).
    """
    bits = check_bits(bits, 0, MAX_BITS, "asym_fake_quant")
    if w.dim() != 2:
        raise ValueError(f"asym_fake_quant expects a 2-D weight (rows, cols), got shape {tuple(w.shape)}")
    if bits == 0:
        return ste(torch.zeros_like(w), w)
    qmax = 2**bits - 1
    return StraightThrough.apply(w, lambda x: _asym_values(x.float(), qmax).to(x.dtype))


def _checked_group_bits(group_bits: Any) -> list[int]:
    vals = group_bits.tolist() if isinstance(group_bits, torch.Tensor) else group_bits
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not vals:
        raise UserError(f"group_bits={group_bits!r} is not valid; valid: a non-empty list of integers 0..8")
    return [check_bits(b, 0, MAX_BITS, f"group_bits[{i}]") for i, b in enumerate(vals)]


@register_quantizer
class GroupBitsQuantizer(WeightQuantizer):
    """Per-row asymmetric quantization with one bit width per group of rows (0 = group removed).

    Args:
        row_group_size: Consecutive output rows per group; must divide the weight's rows.
        group_bits: Bits of each group, 0..8 (0: the group's rows are zero and stored as nothing);
            as many entries as the weight has groups.
    """

    kind = "groupbits"
    represents_zero = False  # a row's levels need not include 0: a mask inside a row is stored as a mask
    param_names = ("scales", "mins")
    recipe_keys = ("row_group_size",)
    recipe_bits = (1, 8, 8)

    def __init__(self, row_group_size: int, group_bits: Sequence[int]):
        super().__init__()
        if isinstance(row_group_size, bool) or not isinstance(row_group_size, int) or row_group_size < 1:
            raise UserError(f"row_group_size={row_group_size!r} is not valid; valid: a positive integer")
        self.row_group_size = row_group_size
        self.register_buffer("group_bits", torch.tensor(_checked_group_bits(group_bits), dtype=torch.int64))

    # -- description -----------------------------------------------------------------------
    @classmethod
    def check_recipe(cls, options: dict[str, Any], given: set[str]) -> None:
        if options["row_group_size"] is None:
            raise ValueError("weight 'groupbits' needs row_group_size (output rows per group, e.g. 64)")

    @classmethod
    def from_recipe(cls, bits: int, options: dict[str, Any], shape: tuple[int, ...]) -> "GroupBitsQuantizer":
        """Every group at ``bits`` (the uniform form); the weight's rows decide the number of groups."""
        size = options["row_group_size"]
        return cls(size, [bits] * max(1, rows_cols(shape)[0] // size))

    @classmethod
    def describe_recipe(cls, bits: int, options: dict[str, Any]) -> str:
        return (f"groupbits weights ({bits} bit per row group of {options['row_group_size']} rows, "
                "asymmetric per row)")

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "row_group_size": self.row_group_size, "group_bits": self.group_bits.tolist()}

    @property
    def bits(self) -> int:  # type: ignore[override]
        """The widest group's bits."""
        return int(self.group_bits.max())

    @property
    def num_groups(self) -> int:
        return int(self.group_bits.numel())

    def set_group_bits(self, group_bits: Sequence[int] | torch.Tensor) -> None:
        """Change the bits of every group (same number of groups); takes effect at the next forward."""
        vals = _checked_group_bits(group_bits)
        if len(vals) != self.num_groups:
            raise UserError(f"set_group_bits: {len(vals)} values given; this weight has {self.num_groups} row groups")
        self.group_bits.copy_(torch.tensor(vals, dtype=torch.int64))

    def check_shape(self, shape, where: str = "") -> None:
        rows, _ = rows_cols(shape)
        at = f"{where}: " if where else ""
        if rows % self.row_group_size:
            raise UserError(f"{at}row_group_size={self.row_group_size} does not divide the {rows} rows of a weight "
                            f"of shape {tuple(shape)}; valid: a divisor of {rows}")
        if rows // self.row_group_size != self.num_groups:
            raise UserError(f"{at}group_bits has {self.num_groups} entries but a weight of shape {tuple(shape)} has "
                            f"{rows // self.row_group_size} groups of {self.row_group_size} rows")

    def scale_layout(self, shape) -> ScaleLayout:
        return ScaleLayout("row")

    def row_bits(self, shape) -> torch.Tensor:
        self.check_shape(shape)
        return self.group_bits.detach().cpu().repeat_interleave(self.row_group_size)

    # -- quantize --------------------------------------------------------------------------
    def _row_qmax(self, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(highest code per row (rows, 1) float32, 1 for 0-bit rows; bool (rows,) 0-bit rows)."""
        rb = self.group_bits.to(device).repeat_interleave(self.row_group_size)
        qmax = (torch.pow(2.0, rb.clamp_min(1).float()) - 1.0).reshape(rows, 1)
        return qmax, rb == 0

    def _codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes, scales, minimums, 0-bit rows) of a weight, as in the module docstring; 0-bit rows
        have codes, scales and minimums 0."""
        self.check_shape(tuple(w.shape))
        rows, cols = rows_cols(w.shape)
        qmax, off = self._row_qmax(rows, w.device)
        codes, scales, mins = asym_row_codes(w.detach().float().reshape(rows, cols), qmax)
        keep = (~off).float()[:, None]
        return codes * keep, scales * keep, mins * keep, off

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return StraightThrough.apply(w, self._fake)

    def _fake(self, w: torch.Tensor) -> torch.Tensor:
        codes, scales, mins, off = self._codes(w)
        out = (codes * scales + mins).masked_fill(off[:, None], 0.0)
        return out.reshape(w.shape).to(w.dtype)

    def quantize_ints(self, w):
        """uint8 codes of ``w``'s shape, fp16-valued scales (rows,) and minimums (rows,) as the third
        result (where other kinds return zero points)."""
        with torch.no_grad():
            codes, scales, mins, _ = self._codes(w)
        rows = codes.shape[0]
        return codes.to(torch.uint8).reshape(w.shape), scales.reshape(rows), mins.reshape(rows)

    def dequantize(self, ints, scales, zero_points, shape):
        rows, cols = rows_cols(shape)
        _, off = self._row_qmax(rows, ints.device)
        values = ints.reshape(rows, cols).float() * scales.float().reshape(rows, 1) + zero_points.float().reshape(rows, 1)
        return values.masked_fill(off[:, None], 0.0).reshape(shape)

    def decode_values(self, stored, params):
        return stored * params["scales"] + params["mins"]
