"""The integer codes of a quantized weight, as a packer stores them: :class:`Codes`.

A weight quantizer turns a 2-D weight ``(rows, cols)`` into

* ``stored``: unsigned integer codes, ``0 <= stored[r, c] < 2 ** row_bits[r]``;
* ``row_bits``: the bit width of each row (one value for every row of a uniform quantizer;
  0 for a row that stores nothing and reads as zeros);
* ``params``: named float tensors (fp16 values) such as ``scales`` or ``zero_points``, laid out
  per tensor ``(1,)``, per row ``(rows,)`` or per group of ``group_size`` columns
  ``(rows, groups)`` (:class:`ScaleLayout`).

How codes and parameters become values belongs to the quantizer kind
(:meth:`~compactbert.nn.quant.base.WeightQuantizer.decode`); where the parameters of an element
are, and what a selection of rows or columns keeps, belongs to the layout and lives here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ScaleLayout", "Codes", "LAYOUTS", "bit_runs", "bits_from_runs"]

LAYOUTS = ("tensor", "row", "group")


@dataclass(frozen=True)
class ScaleLayout:
    """Which elements share a parameter: the whole tensor, a row, or ``group_size`` consecutive
    columns of a row."""

    kind: str
    group_size: int | None = None

    def __post_init__(self):
        if self.kind not in LAYOUTS:
            raise ValueError(f"unknown scale layout {self.kind!r}; valid: {', '.join(LAYOUTS)}")
        if (self.kind == "group") != (self.group_size is not None):
            raise ValueError("a group layout needs a group_size, and only a group layout has one")

    @property
    def per_row(self) -> bool:
        """Whether the parameters are indexed by row (row and group layouts)."""
        return self.kind != "tensor"

    def shape(self, rows: int, cols: int) -> tuple[int, ...]:
        """Shape of one parameter tensor for a ``(rows, cols)`` weight."""
        if self.kind == "tensor":
            return (1,)
        if self.kind == "row":
            return (rows,)
        return (rows, cols // int(self.group_size))

    def count(self, stored_rows: int, groups: int) -> int:
        """Parameters of one kind stored for ``stored_rows`` rows (``groups`` per row, group layout)."""
        if self.kind == "tensor":
            return 1
        return stored_rows * (groups if self.kind == "group" else 1)

    def expand(self, t: torch.Tensor, rows: int, cols: int, src_cols: torch.Tensor | None = None) -> torch.Tensor:
        """One parameter tensor in this layout -> one value per element, shape ``(rows, cols)``.

        ``src_cols`` (group layout): the original column of each column, once columns were removed.
        """
        if self.kind == "tensor":
            return t.reshape(1, 1).expand(rows, cols)
        if self.kind == "row":
            return t.reshape(rows, 1).expand(rows, cols)
        src = src_cols if src_cols is not None else torch.arange(cols)
        return t.reshape(rows, -1)[:, torch.div(src, int(self.group_size), rounding_mode="floor")]


@dataclass
class Codes:
    """A quantized weight's codes, bit widths and parameters (see the module docstring).

    Attributes:
        stored: (rows, cols) int64 codes, each below ``2 ** row_bits`` of its row.
        row_bits: (rows,) int64 bit width per row (0: the row stores nothing and is zero).
        params: name -> parameter tensor in ``layout`` (float32 holding fp16 values).
        layout: Where the parameters are.
        src_cols: (cols,) int64, group layout only, once columns were removed: the original column
            of each column (so each column still finds its group). None: columns are the original ones.
        group_count: Groups per row of the original weight (group layout), else None.
    """

    stored: torch.Tensor
    row_bits: torch.Tensor
    params: dict[str, torch.Tensor]
    layout: ScaleLayout
    src_cols: torch.Tensor | None = None
    group_count: int | None = field(default=None)

    def __post_init__(self):
        if self.layout.kind == "group" and self.group_count is None:
            self.group_count = int(self.stored.shape[1]) // int(self.layout.group_size)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.stored.shape[0]), int(self.stored.shape[1])

    @property
    def uniform_bits(self) -> int | None:
        """The one bit width of every row, or None when rows differ (an empty weight: None)."""
        if self.row_bits.numel() == 0:
            return None
        b = int(self.row_bits[0])
        return b if bool((self.row_bits == b).all()) else None

    def expand(self, name: str) -> torch.Tensor:
        """Parameter ``name`` as one value per element, shape ``(rows, cols)``."""
        rows, cols = self.shape
        return self.layout.expand(self.params[name], rows, cols, self.src_cols)

    def select(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> "Codes":
        """The codes of ``rows`` (bool mask or indices) and/or ``cols`` only."""
        r = slice(None) if rows is None else rows
        c = slice(None) if cols is None else cols
        params = {n: (t[r] if (rows is not None and self.layout.per_row) else t) for n, t in self.params.items()}
        src = self.src_cols
        if cols is not None and self.layout.kind == "group":
            base = src if src is not None else torch.arange(self.shape[1])
            src = base[cols]
        return Codes(stored=self.stored[r][:, c], row_bits=self.row_bits[r], params=params, layout=self.layout,
                     src_cols=src, group_count=self.group_count)


def bit_runs(row_bits: torch.Tensor) -> list[list[int]]:
    """Run-length form ``[[bits, count], ...]`` of a per-row bit-width vector (for the manifest)."""
    runs: list[list[int]] = []
    for b in row_bits.tolist():
        if runs and runs[-1][0] == b:
            runs[-1][1] += 1
        else:
            runs.append([int(b), 1])
    return runs


def bits_from_runs(runs, rows: int, where: str = "row_bits") -> torch.Tensor:
    """Inverse of :func:`bit_runs`; checks that the runs cover exactly ``rows`` rows of 0..8 bits."""
    ok = isinstance(runs, list) and all(
        isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in x)
        and 0 <= x[0] <= 8 and x[1] >= 1 for x in runs)
    if not ok or sum(x[1] for x in runs) != rows:
        raise ValueError(f"{where}: {str(runs)[:80]} is not a list of [bits 0..8, count] runs covering {rows} rows")
    if not runs:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([torch.full((n,), b, dtype=torch.int64) for b, n in runs])
