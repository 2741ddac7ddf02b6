"""Where the bits went: the per-group widths of a mixed-precision model, as a picture and a summary.

A model whose weights carry ``groupbits`` quantizers (the AQ-BERT search, the Hessian allocation,
the uniform twin) has one bit width per group of output rows in each targeted matrix. The report
draws them, one PNG per model:

* rows: the matrices, layer by layer, each layer in the order query, key, value, attn-out, ffn-in,
  ffn-out (:data:`MATRIX_KINDS`; matrices of other names follow, in model order);
* columns: the row groups of each matrix (a matrix with fewer groups leaves its row blank on the
  right: :data:`NO_GROUP` in the data);
* colour: the group's width, 0 (pruned) in a colour of its own, a legend naming each width shown.

:func:`widths_summary` gives the average bits per matrix kind and per layer: the mean of the group
widths over output rows (codes only, scales not counted); within one kind every matrix has the same
shape, so the per-kind average is also the average bits per weight of that kind.

Widths come from a run's ``model/compression.json`` (:func:`widths_of_folder`) or from a packed
directory's ``manifest.json`` (each groupbits tensor's ``quant.spec``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = [
    "MATRIX_KINDS", "NO_GROUP", "matrix_kind", "layer_index", "order_matrices", "widths_matrix",
    "widths_summary", "widths_of_folder", "widths_figsize", "draw_widths", "widths_plot", "WIDTH_COLORS",
    "summary_table", "summary_markdown", "widths_section_html", "widths_file_name", "row_label",
]

MATRIX_KINDS = ("query", "key", "value", "attn-out", "ffn-in", "ffn-out")
#: the value of a cell past the last group of a matrix (rows with fewer groups than the widest)
NO_GROUP = -1
#: the most groups read from one packed tensor's spec (a hostile manifest cannot make a huge picture)
MAX_GROUPS = 1 << 16

# Module-name endings of each kind: BERT / RoBERTa / MiniLM, DistilBERT, and the packed names.
_KIND_SUFFIXES = (
    ("query", (".attention.self.query", ".attention.q_lin", ".attn.q")),
    ("key", (".attention.self.key", ".attention.k_lin", ".attn.k")),
    ("value", (".attention.self.value", ".attention.v_lin", ".attn.v")),
    ("attn-out", (".attention.output.dense", ".attention.out_lin", ".attn.o")),
    ("ffn-in", (".intermediate.dense", ".ffn.lin1", ".ffn.up")),
    ("ffn-out", (".output.dense", ".ffn.lin2", ".ffn.down")),
)
_LAYER = re.compile(r"(?:^|\.)(?:layers?|blocks)\.(\d+)\.")

#: colour of each width: 0 (pruned) dark red, 1..8 bits from light to dark blue-green
WIDTH_COLORS = {
    0: "#b2182b", 1: "#fff7bc", 2: "#fee391", 3: "#c7e9b4", 4: "#7fcdbb",
    5: "#41b6c4", 6: "#1d91c0", 7: "#225ea8", 8: "#0c2c84",
}
_NO_GROUP_COLOR = "#ffffff"


def matrix_kind(name: str) -> str | None:
    """The kind of a matrix from its module name (``...layer.3.attention.self.query`` -> ``"query"``),
    or None for a name of no known kind."""
    name = name.removesuffix(".weight")
    for kind, suffixes in _KIND_SUFFIXES:
        if any(name.endswith(s) for s in suffixes):
            return kind
    return None


def layer_index(name: str) -> int | None:
    """The encoder layer number in a module name (``...layer.3....`` -> 3), or None."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def order_matrices(names: Sequence[str]) -> list[str]:
    """``names`` sorted by layer, then by kind in :data:`MATRIX_KINDS` order; names of no known layer
    or kind keep their order after the known ones of their layer (or after all layers)."""
    def key(item: tuple[int, str]) -> tuple[float, int, int]:
        i, name = item
        layer, kind = layer_index(name), matrix_kind(name)
        return (float("inf") if layer is None else layer,
                len(MATRIX_KINDS) if kind is None else MATRIX_KINDS.index(kind), i)

    return [name for _, name in sorted(enumerate(names), key=key)]


def row_label(name: str) -> str:
    """A short label for a matrix: ``"L3 query"``; the full name when its layer or kind is unknown."""
    layer, kind = layer_index(name), matrix_kind(name)
    return f"L{layer} {kind}" if layer is not None and kind is not None else name.removesuffix(".weight")


def widths_matrix(widths: dict[str, Sequence[int]]) -> tuple[np.ndarray, list[str]]:
    """The data of the picture: ``(matrix, names)``.

    Args:
        widths: ``{matrix name: [bits of each row group]}`` (:func:`widths_of_folder`).

    Returns:
        ``matrix``: int64 ``(len(widths), most groups)``; row ``i`` holds the widths of ``names[i]``
        followed by :data:`NO_GROUP` up to the widest matrix; ``names``: :func:`order_matrices`.
    """
    names = order_matrices(list(widths))
    cols = max((len(widths[n]) for n in names), default=0)
    out = np.full((len(names), cols), NO_GROUP, dtype=np.int64)
    for i, name in enumerate(names):
        out[i, : len(widths[name])] = np.asarray(widths[name], dtype=np.int64)
    return out, names


def _mean_bits(groups: list[tuple[int, int]]) -> float:
    """Mean of widths weighted by rows: ``groups`` = [(bits, rows)]."""
    rows = sum(r for _, r in groups)
    return sum(b * r for b, r in groups) / rows if rows else 0.0


def widths_summary(widths: dict[str, Sequence[int]], rows_per_group: dict[str, int] | None = None) -> dict[str, Any]:
    """Average bits per matrix kind, per layer, per (layer, kind) and over all (mean over output rows).

    Args:
        widths: ``{matrix name: [bits of each row group]}``.
        rows_per_group: rows of one group of each matrix (default 1 for every matrix: every group
            counts the same).

    Returns:
        ``{"by_kind": {kind: bits}, "by_layer": {layer: bits}, "cells": {(layer, kind): bits},
        "overall": bits, "pruned_share": share of the rows at 0 bits}``; kinds without a known name
        count as ``"other"``, layers without a number as ``-1``.
    """
    rpg = rows_per_group or {}
    by_kind: dict[str, list] = {}
    by_layer: dict[int, list] = {}
    cells: dict[tuple[int, str], list] = {}
    everything: list[tuple[int, int]] = []
    for name, bits in widths.items():
        layer = layer_index(name)
        layer = -1 if layer is None else layer
        kind = matrix_kind(name) or "other"
        groups = [(int(b), int(rpg.get(name, 1))) for b in bits]
        for bucket, key in ((by_kind, kind), (by_layer, layer), (cells, (layer, kind))):
            bucket.setdefault(key, []).extend(groups)
        everything.extend(groups)
    pruned = sum(r for b, r in everything if b == 0)
    total_rows = sum(r for _, r in everything)
    kinds = [k for k in (*MATRIX_KINDS, "other") if k in by_kind]
    return {
        "by_kind": {k: _mean_bits(by_kind[k]) for k in kinds},
        "by_layer": {k: _mean_bits(by_layer[k]) for k in sorted(by_layer)},
        "cells": {k: _mean_bits(v) for k, v in cells.items()},
        "overall": _mean_bits(everything),
        "pruned_share": pruned / total_rows if total_rows else 0.0,
    }


def _checked_bits(raw: Any, where: str) -> list[int]:
    if (not isinstance(raw, list) or not raw or len(raw) > MAX_GROUPS
            or any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= 8 for b in raw)):
        raise UserError(f"{where}: group_bits is not a list of 1..{MAX_GROUPS} integers 0..8; "
                        "re-export the model with `compactbert export`")
    return raw


def _packed_widths(folder: Path) -> dict[str, list[int]]:
    from ..export.format.schema import read_json

    manifest = read_json(folder / "manifest.json", folder, "manifest.json")
    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    out: dict[str, list[int]] = {}
    for key, entry in (tensors.items() if isinstance(tensors, dict) else ()):
        quant = entry.get("quant") if isinstance(entry, dict) else None
        spec = quant.get("spec") if isinstance(quant, dict) else None
        if not isinstance(spec, dict) or spec.get("kind") != "groupbits":
            continue
        source = entry.get("source")
        name = (source if isinstance(source, str) and source else str(key)).removesuffix(".weight")
        out[name] = _checked_bits(spec.get("group_bits"), f"packed model {str(folder)!r}: tensor {str(key)[:80]!r}")
    return out


def widths_of_folder(folder: str | Path) -> dict[str, list[int]]:
    """``{matrix name: widths}`` of the groupbits weights of a model folder (its ``compression.json``),
    a run directory (its ``model/``) or a packed directory (its ``manifest.json``); ``{}`` when
    there are none.

    Raises:
        UserError: a compression spec or manifest that cannot be read, or malformed widths.
    """
    from ..methods.mixed_precision.common import widths_from_spec

    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        return _packed_widths(folder)
    for spec in (folder / "compression.json", folder / "model" / "compression.json"):
        if spec.is_file():
            return widths_from_spec(spec)
    return {}


def widths_figsize(n_matrices: int) -> tuple[float, float]:
    """The picture's size in inches: 11 wide, 0.16 per matrix row plus 2.2 for title, axis and legend."""
    return 11.0, round(2.2 + 0.16 * max(n_matrices, 1), 2)


def _colormap(matrix: np.ndarray):
    """(colormap, norm, widths present) for a widths matrix: one colour per value -1..8."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    colors = [_NO_GROUP_COLOR] + [WIDTH_COLORS[b] for b in range(9)]
    cmap = ListedColormap(colors)
    norm = BoundaryNorm(np.arange(-1.5, 9.5, 1.0), cmap.N)
    present = sorted(int(b) for b in np.unique(matrix) if b != NO_GROUP)
    return cmap, norm, present


def draw_widths(widths: dict[str, Sequence[int]], title: str, dpi: int = 100):
    """The picture of :mod:`this module <compactbert.report.widths>` as a matplotlib figure
    (:func:`widths_figsize` inches), or None when ``widths`` is empty. Close it with ``plt.close``.

    The image drawn is exactly :func:`widths_matrix` (``fig.axes[0].images[0].get_array()``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    matrix, names = widths_matrix(widths)
    if matrix.size == 0:
        return None
    cmap, norm, present = _colormap(matrix)
    with plt.rc_context({"font.size": 9, "axes.titlesize": 12}):
        fig, ax = plt.subplots(figsize=widths_figsize(len(names)), dpi=dpi)
        ax.imshow(matrix, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([row_label(n) for n in names], fontsize=7 if len(names) > 40 else 8)
        for i in range(1, len(names)):  # a faint line between layers
            if layer_index(names[i]) != layer_index(names[i - 1]):
                ax.axhline(i - 0.5, color="0.3", lw=0.6)
        ax.set_xlabel("row group (consecutive output rows)")
        ax.set_title(title)
        handles = [Patch(facecolor=WIDTH_COLORS[b], edgecolor="0.4", label="0 bits (pruned)" if b == 0 else f"{b} bits")
                   for b in present]
        if (matrix == NO_GROUP).any():
            handles.append(Patch(facecolor=_NO_GROUP_COLOR, edgecolor="0.4", label="no group"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.5 / widths_figsize(len(names))[1]),
                  ncol=len(handles), frameon=False)
        fig.tight_layout()
    return fig


def widths_plot(widths: dict[str, Sequence[int]], out_png: str | Path, title: str, dpi: int = 100) -> Path | None:
    """Write :func:`draw_widths` to ``out_png``; None (nothing written) when ``widths`` is empty.
    The PNG is :func:`widths_figsize` times ``dpi`` pixels."""
    import matplotlib.pyplot as plt

    fig = draw_widths(widths, title, dpi=dpi)
    if fig is None:
        return None
    out = Path(out_png)
    try:
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def summary_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """:func:`widths_summary` as a table of strings: one row per layer (its kinds' and its own average
    bits), and a last row of each kind's average and the overall one."""
    kinds = list(summary["by_kind"])
    header = ["layer", *kinds, "layer avg"]
    rows = []
    for layer, avg in summary["by_layer"].items():
        cells = [summary["cells"].get((layer, k)) for k in kinds]
        rows.append([str(layer) if layer >= 0 else "-", *("-" if c is None else f"{c:.2f}" for c in cells), f"{avg:.2f}"])
    rows.append(["all", *(f"{summary['by_kind'][k]:.2f}" for k in kinds), f"{summary['overall']:.2f}"])
    return header, rows


def widths_file_name(model_name: str, taken: set[str]) -> str:
    """``widths_<model name, safe for a file name>.png``, unique among ``taken`` (which it joins)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"
    name, n = f"widths_{stem[:80]}.png", 2
    while name in taken:
        name, n = f"widths_{stem[:80]}_{n}.png", n + 1
    taken.add(name)
    return name


_SUMMARY_NOTE = ("average bits: the mean width of the row groups (codes only, scales not counted; 0 = pruned group); "
                 "within a matrix kind every matrix has the same shape, so a kind's average is its bits per weight")


def summary_markdown(model_name: str, png_name: str, summary: dict[str, Any]) -> str:
    """The picture and the summary table of one model, in Markdown."""
    header, rows = summary_table(summary)
    lines = [f"\n## Bit widths: {model_name.replace('|', '/')}\n", f"![widths of {model_name}]({png_name})\n",
             f"{100 * summary['pruned_share']:.1f}% of the rows pruned (0 bits). {_SUMMARY_NOTE}.\n",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def widths_section_html(model_name: str, png: Path, summary: dict[str, Any]) -> str:
    """The picture (embedded) and the summary table of one model, as an HTML fragment."""
    import base64
    import html

    header, rows = summary_table(summary)
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    name = html.escape(model_name)
    parts = [f"<h3>{name}</h3>", f"<img src=\"data:image/png;base64,{data}\" alt=\"bit widths of {name}\">",
             f"<p class=\"note\">{100 * summary['pruned_share']:.1f}% of the rows pruned (0 bits). "
             f"{html.escape(_SUMMARY_NOTE)}.</p>",
             "<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        parts.append("<tr>" + f"<td>{html.escape(r[0])}</td>"
                     + "".join(f"<td class=\"num\">{html.escape(c)}</td>" for c in r[1:]) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)
