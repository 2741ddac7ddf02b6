"""Scatter plots of accuracy against a cost (bytes, latency), log-scaled, every point labelled.

Labels are placed greedily: for each point, candidate offsets around it are tried nearest first,
and the first whose text box overlaps no other label, no marker and stays inside the axes is kept;
a label pushed away from its point gets a thin leader line. The Pareto front (the models no other
model beats on both axes) is drawn as a dashed step line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["scatter_plot", "draw_scatter", "pareto_front", "KIND_STYLE"]

# Marker and colour per kind of model; anything else falls back to "other".
KIND_STYLE: dict[str, tuple[str, str, str]] = {
    # kind: (legend label, colour, marker)
    "packed": ("compactbert packed", "#1f77b4", "o"),
    "torch-fp32": ("PyTorch FP32", "#222222", "s"),
    "torch-int8": ("PyTorch dynamic int8", "#8c564b", "v"),
    "ort-fp32": ("ONNX Runtime FP32", "#7f7f7f", "D"),
    "ort-int8": ("ONNX Runtime int8", "#ff7f0e", "^"),
    "ort-fp32-fused": ("ONNX Runtime FP32 (fused)", "#bcbd22", "D"),
    "ort-int8-fused": ("ONNX Runtime int8 (fused)", "#d62728", "^"),
    "run": ("training-time model", "#2ca02c", "P"),
    "other": ("other", "#9467bd", "X"),
}


def _style(kind: str | None) -> str:
    if not kind:
        return "other"
    if kind in KIND_STYLE:
        return kind
    if kind.startswith("run"):
        return "run"
    if kind in ("onnx", "ort"):
        return "ort-fp32"
    if kind == "model":
        return "torch-fp32"
    return "other"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not dominated by another (lower or equal cost and higher or equal accuracy), by cost.

    Args:
        points: ``(cost, accuracy)`` pairs; lower cost and higher accuracy are better.
    """
    front: list[tuple[float, float]] = []
    best = -math.inf
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if a > best:
            front.append((c, a))
            best = a
    return front


def _candidates() -> list[tuple[float, float, str, str]]:
    """Label offsets in points (dx, dy, ha, va), nearest first, in rings around the point."""
    out = []
    for r in (9, 18, 30, 44, 60):
        for dx, dy in ((1, 0.6), (1, -0.6), (-1, 0.6), (-1, -0.6), (0, 1), (0, -1), (1, 1.4), (-1, 1.4), (1, -1.4), (-1, -1.4)):
            ha = "left" if dx > 0 else ("right" if dx < 0 else "center")
            va = "bottom" if dy > 0 else "top"
            out.append((dx * r, dy * r, ha, va))
    return out


def _place_labels(fig, ax, xs, ys, labels, fontsize: float) -> list[tuple[float, float, float, float]]:
    """Annotate each point with its label; returns the labels' boxes in pixels (x0, y0, x1, y1)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    # Markers are obstacles too (a box of ~10 px around each point).
    obstacles = []
    for x, y in zip(xs, ys):
        px, py = ax.transData.transform((x, y))
        obstacles.append((px - 7, py - 7, px + 7, py + 7))
    legend = ax.get_legend()
    if legend is not None:
        lb = legend.get_window_extent(renderer)
        obstacles.append((lb.x0, lb.y0, lb.x1, lb.y1))

    def free(bb) -> bool:
        box = (bb.x0 - 2, bb.y0 - 1, bb.x1 + 2, bb.y1 + 1)
        if box[0] < axes_box.x0 or box[2] > axes_box.x1 or box[1] < axes_box.y0 or box[3] > axes_box.y1:
            return False
        return not any(box[0] < o[2] and box[2] > o[0] and box[1] < o[3] and box[3] > o[1] for o in obstacles)

    # Place the most crowded points first: they have the fewest free spots.
    def crowding(i: int) -> float:
        px, py = ax.transData.transform((xs[i], ys[i]))
        return -sum(1 for j in range(len(xs)) if j != i and
                    math.dist((px, py), ax.transData.transform((xs[j], ys[j]))) < 80)

    boxes: list[tuple[float, float, float, float]] = []
    for i in sorted(range(len(xs)), key=crowding):
        chosen = None
        for dx, dy, ha, va in _candidates():
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, fontsize=fontsize, zorder=5)
            bb = t.get_window_extent(renderer)
            if free(bb):
                chosen = (t, dx, dy, bb)
                break
            t.remove()
        if chosen is None:  # no free spot: nearest position anyway, so the point is still named
            dx, dy, ha, va = _candidates()[0]
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, fontsize=fontsize, zorder=5)
            chosen = (t, dx, dy, t.get_window_extent(renderer))
        t, dx, dy, bb = chosen
        if math.hypot(dx, dy) > 20:
            t.remove()
            t = ax.annotate(labels[i], (xs[i], ys[i]), xytext=(dx, dy), textcoords="offset points",
                            ha=t.get_ha(), va=t.get_va(), fontsize=fontsize, zorder=5,
                            arrowprops=dict(arrowstyle="-", color="0.55", lw=0.8, shrinkA=0, shrinkB=4))
        obstacles.append((bb.x0 - 2, bb.y0 - 1, bb.x1 + 2, bb.y1 + 1))
        boxes.append((bb.x0, bb.y0, bb.x1, bb.y1))
    return boxes


def _log_ticks_formatter(unit: str):
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _pos):
        if v <= 0:
            return ""
        if unit == "bytes":
            for name, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
                if v >= div:
                    return f"{v / div:g} {name}"
            return f"{v:g} B"
        return f"{v:g}{unit}"

    return FuncFormatter(fmt)


def draw_scatter(
    entries: list[dict[str, Any]],
    x_key: str,
    xlabel: str,
    title: str,
    x_unit: str = "",
    higher_x_better: bool = False,
    ylabel: str | None = None,
    dpi: int = 150,
):
    """Draw the plot of :func:`scatter_plot` without saving it.

    Args:
        entries: models from :func:`compactbert.report.collect.collect`.
        x_key: the cost field (``file_bytes``, ``latency_ms_bs1_p50``, ``throughput_bs32``).
        xlabel, title: axis label and title.
        x_unit: ``"bytes"`` for size ticks (kB/MB/GB), else a suffix for tick labels (``" ms"``).
        higher_x_better: for the Pareto front (throughput: higher is better).
        ylabel: y axis label (default "accuracy (%)").
        dpi: resolution; the figure is 9 x 6.4 inches (1350 x 960 pixels at 150 dpi).

    Returns:
        ``(figure, label_boxes)`` (boxes in pixels, one per labelled point), or ``(None, [])`` when
        no model has both values. Close the figure with ``matplotlib.pyplot.close``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter

    pts = [e for e in entries if isinstance(e.get(x_key), (int, float)) and e[x_key] > 0
           and isinstance(e.get("accuracy"), (int, float))]
    if not pts:
        return None, []
    xs = [float(e[x_key]) for e in pts]
    ys = [100.0 * float(e["accuracy"]) for e in pts]
    labels = [str(e["name"]) for e in pts]

    fontsize = 12
    with plt.rc_context({"font.size": fontsize, "axes.titlesize": 15, "axes.labelsize": 13,
                         "xtick.labelsize": 11, "ytick.labelsize": 11, "legend.fontsize": 10.5}):
        fig, ax = plt.subplots(figsize=(9, 6.4), dpi=dpi)
        ax.set_xscale("log")
        # Room around the points for the labels: a third of the data's span (at least half a decade
        # in all) on each side, and the y range padded by 35% of its spread (at least one point).
        lo, hi = min(xs), max(xs)
        span = max(math.log10(hi) - math.log10(lo), 0.5)
        ax.set_xlim(10 ** (math.log10(lo) - 0.35 * span), 10 ** (math.log10(hi) + 0.35 * span))
        ylo, yhi = min(ys), max(ys)
        pad = max(0.35 * (yhi - ylo), 1.0)
        ax.set_ylim(ylo - pad, yhi + pad)
        # Labelled ticks at 1-2-5 within a few decades, at powers of ten beyond; unlabelled minors.
        decades = 1.7 * span
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2.6 else (1.0,)))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.xaxis.set_major_formatter(_log_ticks_formatter(x_unit))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)

        front = pareto_front([(-x if higher_x_better else x, y) for x, y in zip(xs, ys)])
        if len(front) > 1:
            fx = [(-c if higher_x_better else c) for c, _ in front]
            fy = [a for _, a in front]
            ax.step(fx, fy, where="post", ls="--", lw=1.2, color="0.6", zorder=1, label="Pareto front")

        seen = set()
        for e, x, y in zip(pts, xs, ys):
            key = _style(e.get("kind"))
            name, color, marker = KIND_STYLE[key]
            # Squares (the FP32 teacher) are drawn larger and below, so a model sitting on the same
            # spot (its ONNX Runtime FP32 twin) does not hide it.
            big = marker == "s"
            ax.scatter([x], [y], s=120 if big else 70, color=color, marker=marker, edgecolor="white",
                       linewidth=0.8, zorder=3 if big else 4, label=None if key in seen else name)
            seen.add(key)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel or "accuracy (%)")
        ax.set_title(title)
        # The legend goes under the axes, where it cannot cover a point or a label.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(4, len(seen) + 1), frameon=False,
                  handletextpad=0.3, columnspacing=1.2)
        fig.tight_layout()
        boxes = _place_labels(fig, ax, xs, ys, labels, fontsize=fontsize - 1)
    return fig, boxes


def scatter_plot(
    entries: list[dict[str, Any]],
    x_key: str,
    out_png: str | Path,
    xlabel: str,
    title: str,
    *,
    dpi: int = 150,
    **style: Any,
) -> Path | None:
    """Accuracy (y, in %) against ``entry[x_key]`` (x, log scale), one labelled point per model.

    Args:
        out_png: the PNG to write.
        dpi: resolution; the figure is 9 x 6.4 inches (1350 x 960 pixels at 150 dpi).
        style: ``x_unit``, ``higher_x_better``, ``ylabel``; these and the other arguments are
            those of :func:`draw_scatter`.

    Returns:
        The PNG path, or None when no model has both values (nothing is written).
    """
    import matplotlib.pyplot as plt

    fig, _ = draw_scatter(entries, x_key, xlabel, title, dpi=dpi, **style)
    if fig is None:
        return None
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out
