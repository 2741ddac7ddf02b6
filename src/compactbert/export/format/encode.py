"""How one weight is stored: the encoding rule (shared by :mod:`compactbert.size` and the writer)
and the code streams.

The rule (see :mod:`compactbert.size` for the whole accounting). A weight of ``(rows, cols)``
whose row ``r`` takes ``row_bits[r]`` bits per value (a float weight: 16 or 32 everywhere; a
quantizer's :meth:`~compactbert.nn.quant.base.WeightQuantizer.row_bits` otherwise; 0: the row
stores nothing) and whose mask keeps ``M``, is stored in the smallest of

* ``dense``: every value. Not valid when ``M`` removes entries and the quantizer cannot represent 0;
* ``rows``: only when ``M`` is the outer product of kept rows and kept columns: the kept block, plus
  a bitmap of rows and one of columns;
* ``bitmask``: a 1-bit mask plus the kept values;

ties going to the first. Values are stored in one stream per bit width (the rows of that width, in
order, :func:`code_streams`), each padded to whole bytes; each quantizer parameter takes 2 bytes
(fp16) per tensor, stored row or stored row and group (rows of 0 bits store none); a group
layout whose columns were removed adds a bitmap of its original columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...nn.quant import Codes, ScaleLayout, WeightQuantizer
from ...nn.quant.ops import rows_cols
from ..bits import pack_bits, unpack_bits

__all__ = ["ENCODINGS", "ceil8", "StorageSpec", "Plan", "float_spec", "quantizer_spec", "codes_spec",
           "plan_storage", "code_streams", "unpack_code_streams", "encoding_keep"]

ENCODINGS = ("dense", "rows", "bitmask")


def ceil8(nbits: int) -> int:
    """Whole bytes for ``nbits`` bits."""
    return (int(nbits) + 7) // 8


@dataclass
class StorageSpec:
    """What the encoding rule needs to know about a weight's values (not the values themselves).

    Attributes:
        row_bits: (rows,) int64 bits per value of each row.
        n_params: Quantizer parameters (scales, zero points, ...) of each stored row/group/tensor.
        layout: Where those parameters are (None for a float weight).
        groups: Parameters per row in a group layout (the original weight's groups).
        represents_zero: Whether a removed entry can be stored as a value (dense encoding).
        extra_bytes: Bytes every encoding adds (the original-columns bitmap of a group layout).
    """

    row_bits: torch.Tensor
    n_params: int = 0
    layout: ScaleLayout | None = None
    groups: int = 1
    represents_zero: bool = True
    extra_bytes: int = 0

    def param_bytes(self, stored_rows: int) -> int:
        if self.layout is None or not self.n_params:
            return 0
        return 2 * self.n_params * self.layout.count(stored_rows, self.groups)

    def value_bytes(self, rows: torch.Tensor | None, per_row: torch.Tensor) -> int:
        """Bytes of the streams for the values ``per_row`` of each row of ``rows`` (bool, or all)."""
        rb = self.row_bits if rows is None else self.row_bits[rows]
        total = 0
        for b in torch.unique(rb).tolist():
            if b:
                total += ceil8(int(b) * int(per_row[rb == b].sum()))
        return total


def float_spec(shape: tuple[int, ...], bits: int) -> StorageSpec:
    """A weight stored as floats of ``bits`` bits."""
    return StorageSpec(row_bits=torch.full((rows_cols(shape)[0],), int(bits), dtype=torch.int64))


def quantizer_spec(q: WeightQuantizer, shape: tuple[int, ...]) -> StorageSpec:
    """What ``q`` stores for a weight of ``shape`` (before any removal)."""
    layout = q.scale_layout(shape)
    cols = rows_cols(shape)[1]
    groups = cols // layout.group_size if layout.kind == "group" else 1
    return StorageSpec(row_bits=q.row_bits(shape), n_params=len(q.param_names), layout=layout, groups=groups,
                       represents_zero=bool(q.represents_zero))


def codes_spec(codes: Codes, represents_zero: bool) -> StorageSpec:
    """What the writer stores for ``codes`` (possibly after rows or columns were removed)."""
    extra = 0
    if codes.layout.kind == "group" and codes.src_cols is not None:
        extra = ceil8(int(codes.group_count) * int(codes.layout.group_size))
    return StorageSpec(row_bits=codes.row_bits, n_params=len(codes.params), layout=codes.layout,
                       groups=int(codes.group_count or 1), represents_zero=represents_zero, extra_bytes=extra)


@dataclass
class Plan:
    """The chosen encoding of one weight and its bytes (payload, every part padded to whole bytes)."""

    encoding: str
    bytes: int
    nnz: int
    kept_rows: torch.Tensor | None = None  # bool (rows,), encoding "rows" only
    kept_cols: torch.Tensor | None = None  # bool (cols,), encoding "rows" only


def plan_storage(shape: tuple[int, ...], mask: torch.Tensor | None, spec: StorageSpec) -> Plan:
    """The smallest valid encoding of a weight of ``shape`` with ``mask`` (see the module docstring)."""
    rows, cols = rows_cols(shape)
    numel = rows * cols
    stored = spec.row_bits > 0
    keep = (mask.detach() != 0).reshape(rows, cols) if mask is not None else None
    nnz = int(keep.sum()) if keep is not None else numel
    has_holes = nnz < numel
    options: list[tuple[int, int, str]] = []
    if numel == 0:
        options.append((0, 0, "dense"))
    if not has_holes or spec.represents_zero:
        full = torch.full((rows,), cols, dtype=torch.int64)
        options.append((spec.value_bytes(None, full) + spec.param_bytes(int(stored.sum())) + spec.extra_bytes,
                        0, "dense"))
    kept_rows = kept_cols = None
    if has_holes:
        r_any, c_any = keep.any(dim=1), keep.any(dim=0)
        if len(shape) == 2 and torch.equal(keep, r_any[:, None] & c_any[None, :]):
            kept_rows, kept_cols = r_any, c_any
            block = torch.full((int(r_any.sum()),), int(c_any.sum()), dtype=torch.int64)
            nbytes = (spec.value_bytes(r_any, block) + ceil8(rows) + ceil8(cols)
                      + spec.param_bytes(int((stored & r_any).sum())) + spec.extra_bytes)
            options.append((nbytes, 1, "rows"))
        nbytes = (ceil8(numel) + spec.value_bytes(None, keep.sum(dim=1)) + spec.param_bytes(int(stored.sum()))
                  + spec.extra_bytes)
        options.append((nbytes, 2, "bitmask"))
    nbytes, _, enc = min(options)
    if enc != "rows":
        kept_rows = kept_cols = None
    return Plan(encoding=enc, bytes=nbytes, nnz=nnz, kept_rows=kept_rows, kept_cols=kept_cols)


def encoding_keep(plan_or_enc: str, shape: tuple[int, int], kept_rows: torch.Tensor | None = None,
                  kept_cols: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """Bool ``shape`` of the entries an encoding stores (None: all, ``dense``)."""
    if plan_or_enc == "dense":
        return None
    if plan_or_enc == "rows":
        return kept_rows[:, None] & kept_cols[None, :]
    return mask.reshape(shape) != 0


def code_streams(stored: torch.Tensor, row_bits: torch.Tensor, keep: torch.Tensor | None) -> dict[int, torch.Tensor]:
    """Packed codes, one ``uint8`` stream per nonzero width: the kept codes of the rows of that width,
    row-major (``keep`` None: all)."""
    out: dict[int, torch.Tensor] = {}
    for b in sorted(set(row_bits.tolist()) - {0}):
        rows = row_bits == b
        vals = stored[rows] if keep is None else stored[rows][keep[rows]]
        out[int(b)] = pack_bits(vals.reshape(-1), int(b))
    return out


def unpack_code_streams(streams: dict[int, torch.Tensor], row_bits: torch.Tensor, keep: torch.Tensor | None,
                        shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`code_streams`: int64 codes of ``shape``, 0 where nothing is stored.

    Raises:
        ValueError: a width without its stream, or a stream that does not fit the rows.
    """
    widths = set(row_bits.tolist()) - {0}
    if set(streams) != widths:
        raise ValueError(f"code streams for widths {sorted(streams)} do not match the rows' widths {sorted(widths)}")
    out = torch.zeros(shape, dtype=torch.int64)
    for b, packed in streams.items():
        rows = row_bits == b
        sub = out[rows]
        n = int(keep[rows].sum()) if keep is not None else sub.numel()
        if packed.numel() != ceil8(b * n):
            raise ValueError(f"the {b}-bit code stream holds {packed.numel()} bytes; its rows need {ceil8(b * n)}")
        vals = unpack_bits(packed, b, n).to(torch.int64)
        if keep is None:
            sub = vals.reshape(sub.shape)
        else:
            sub[keep[rows]] = vals
        out[rows] = sub
    return out
