"""The report of a ``compactbert sweep``: the Pareto fronts, the "pick this" summary, a table and
the plots (accuracy vs bytes, accuracy vs latency) as Markdown, PNG and one HTML page.

Everything here reads the ``sweep.json`` content (see :mod:`compactbert.workflows.sweep`): a
``teacher`` dict, the ``points`` (``status`` ``"done"`` or ``"failed"``; ``accuracy`` in [0, 1],
``packed_bytes``, and with a benchmark ``latency_ms_bs1_p50`` and ``throughput_bs32``) and the
benchmark's other ``baselines``. The fronts and the plots are taken over the same models: the
finished points, the FP32 teacher and the benchmark's baselines.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .core import fmt_bytes
from .plots import pareto_front, scatter_plot

__all__ = [
    "TOLERANCES", "COSTS", "front_names", "pick_summary", "summary_lines", "plot_entries", "sweep_table",
    "write_sweep_report",
]

TOLERANCES = (0.5, 1.0, 2.0)  # points of the teacher's metric (x 100) the summary allows
# (cost key in a plot entry, what the front is called in sweep.json, PNG, axis label, title, tick unit)
COSTS = (
    ("file_bytes", "bytes", "accuracy_vs_bytes.png", "size on disk (log scale)", "Accuracy vs size", "bytes"),
    ("latency_ms_bs1_p50", "latency", "accuracy_vs_latency.png", "latency at batch 1, p50 (ms, log scale)",
     "Accuracy vs latency", " ms"),
)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def front_names(entries: list[dict[str, Any]], cost_key: str) -> list[str]:
    """Names of the entries on the Pareto front of accuracy (higher is better) against ``cost_key``
    (lower is better), cheapest first; entries without both numbers are left out."""
    pts = [(float(e[cost_key]), float(e["accuracy"]), str(e["name"])) for e in entries
           if _num(e.get(cost_key)) and e[cost_key] > 0 and _num(e.get("accuracy"))]
    front = set(pareto_front([(c, a) for c, a, _ in pts]))
    return [n for c, a, n in sorted(pts) if (c, a) in front]


def plot_entries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The models of the plots and fronts: finished points (kind ``packed``), the FP32 teacher and
    the benchmark's other baselines, with the keys :func:`compactbert.report.plots.scatter_plot` reads."""
    out = []
    for p in result.get("points", []):
        if p.get("status") == "done":
            out.append({"name": p["name"], "kind": "packed", "accuracy": p.get("accuracy"),
                        "file_bytes": p.get("packed_bytes"), "latency_ms_bs1_p50": p.get("latency_ms_bs1_p50")})
    t = result.get("teacher") or {}
    if t:
        out.append({"name": t.get("name", "teacher"), "kind": "torch-fp32", "accuracy": t.get("accuracy"),
                    "file_bytes": t.get("file_bytes"), "latency_ms_bs1_p50": t.get("latency_ms_bs1_p50")})
    for b in result.get("baselines", []):
        out.append({k: b.get(k) for k in ("name", "kind", "accuracy", "file_bytes", "latency_ms_bs1_p50")})
    return out


def _pick(p: dict[str, Any], teacher: dict[str, Any]) -> dict[str, Any]:
    out = {k: p.get(k) for k in ("name", "accuracy", "packed_bytes", "latency_ms_bs1_p50", "throughput_bs32")}
    out["x_smaller"] = teacher["file_bytes"] / p["packed_bytes"] if _num(teacher.get("file_bytes")) and _num(p.get("packed_bytes")) and p["packed_bytes"] > 0 else None
    tl, pl = teacher.get("latency_ms_bs1_p50"), p.get("latency_ms_bs1_p50")
    out["x_faster"] = tl / pl if _num(tl) and _num(pl) and pl > 0 else None
    return out


def pick_summary(points: list[dict[str, Any]], teacher: dict[str, Any],
                 tolerances: tuple[float, ...] = TOLERANCES) -> list[dict[str, Any]]:
    """For each tolerance (points of the metric x 100), the smallest and the fastest finished point
    whose accuracy is at most that far below the teacher's.

    Returns:
        ``[{"within_points", "min_accuracy", "smallest": {...} | None, "fastest": {...} | None}]``;
        ``fastest`` is None when no qualifying point has a measured latency. Ties go to the more
        accurate point, then to the name.
    """
    ref = teacher.get("accuracy")
    out = []
    for tol in tolerances:
        ok = [p for p in points if p.get("status") == "done" and _num(p.get("accuracy")) and _num(ref)
              and (ref - p["accuracy"]) * 100 <= tol + 1e-9]
        sized = [p for p in ok if _num(p.get("packed_bytes"))]
        timed = [p for p in ok if _num(p.get("latency_ms_bs1_p50"))]
        smallest = min(sized, key=lambda p: (p["packed_bytes"], -p["accuracy"], p["name"])) if sized else None
        fastest = min(timed, key=lambda p: (p["latency_ms_bs1_p50"], -p["accuracy"], p["name"])) if timed else None
        out.append({
            "within_points": tol, "min_accuracy": None if not _num(ref) else ref - tol / 100,
            "smallest": None if smallest is None else _pick(smallest, teacher),
            "fastest": None if fastest is None else _pick(fastest, teacher),
        })
    return out


def _times(x: Any) -> str:
    return f"{x:.1f}x" if _num(x) else "-"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The "pick this" summary as plain lines (the CLI prints them; the report shows them)."""
    t = result.get("teacher") or {}
    benched = any(_num(p.get("latency_ms_bs1_p50")) for p in result.get("points", []))
    acc = f"{100 * t['accuracy']:.2f}%" if _num(t.get("accuracy")) else "?"
    lines = [f"teacher: {acc} {t.get('metric') or 'accuracy'} ({t.get('task')} {t.get('split')}, n={t.get('n')}), "
             f"{fmt_bytes(t.get('file_bytes'))} FP32 on disk"]
    for s in result.get("summary", []):
        head = f"within {s['within_points']:g} point(s) of the teacher"
        sm, fa = s["smallest"], s["fastest"]
        if sm is None:
            lines.append(f"{head}: no point")
            continue
        text = f"{head}: smallest {sm['name']} ({fmt_bytes(sm['packed_bytes'])}, {_times(sm['x_smaller'])} smaller, {100 * sm['accuracy']:.2f}%)"
        if fa is not None:
            text += (f"; fastest {fa['name']} ({fa['latency_ms_bs1_p50']:.2f} ms at batch 1, "
                     f"{_times(fa['x_faster'])} the teacher's speed, {100 * fa['accuracy']:.2f}%)")
        else:
            text += "; fastest: not measured (no benchmark)" if not benched else "; fastest: none measured"
        lines.append(text)
    failed = [p["name"] for p in result.get("points", []) if p.get("status") == "failed"]
    if failed:
        lines.append(f"failed points ({len(failed)}): {', '.join(failed)} (errors in sweep.json)")
    return lines


SWEEP_COLUMNS = (
    "point", "recipe", "grid", "status", "accuracy (%)", "Δ teacher (pts)", "size", "x smaller", "bs1 p50 ms",
    "bs32 seq/s", "x teacher speed", "front (size / latency)", "steps",
)


def _cell(x: Any, spec: str) -> str:
    return format(x, spec) if _num(x) else "-"


def sweep_table(result: dict[str, Any]) -> list[list[str]]:
    """One row of strings per point (in :data:`SWEEP_COLUMNS` order), the teacher first."""
    t = result.get("teacher") or {}
    fronts = result.get("pareto", {})
    on = {k: set(v) for k, v in fronts.items()}
    t_name = t.get("name", "teacher")

    def marks(name: str) -> str:
        return " / ".join("yes" if name in on.get(k, ()) else "-" for k in ("bytes", "latency"))

    rows = [[t_name, "(FP32 teacher)", "", "reference", _cell(100 * t["accuracy"] if _num(t.get("accuracy")) else None, ".2f"),
             "", fmt_bytes(t.get("file_bytes")), "1.0x", _cell(t.get("latency_ms_bs1_p50"), ".2f"),
             _cell(t.get("throughput_bs32"), ".1f"), "1.0x" if _num(t.get("latency_ms_bs1_p50")) else "-", marks(t_name), ""]]
    for p in result.get("points", []):
        grid = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (p.get("grid") or {}).items())
        pick = _pick(p, t) if p.get("status") == "done" else {}
        delta = 100 * (p["accuracy"] - t["accuracy"]) if _num(p.get("accuracy")) and _num(t.get("accuracy")) else None
        status = p.get("status", "?") if p.get("status") != "failed" else f"failed: {p.get('error', '')}"[:120]
        rows.append([
            p["name"], str(p.get("recipe")), grid, status, _cell(100 * p["accuracy"] if _num(p.get("accuracy")) else None, ".2f"),
            _cell(delta, "+.2f"), fmt_bytes(p.get("packed_bytes")), _times(pick.get("x_smaller")),
            _cell(p.get("latency_ms_bs1_p50"), ".2f"), _cell(p.get("throughput_bs32"), ".1f"),
            _times(pick.get("x_faster")), marks(p["name"]) if p.get("status") == "done" else "", str(p.get("steps") or "-"),
        ])
    return rows


def _markdown(result: dict[str, Any], plots: list[Path], title: str) -> str:
    rows = sweep_table(result)
    left = {"point", "recipe", "grid", "status", "front (size / latency)"}
    out = [f"# {title}", ""]
    if result.get("description"):
        out += [str(result["description"]), ""]
    out += ["## Pick this", ""] + [f"- {line}" for line in summary_lines(result)] + ["", "## Points", ""]
    out.append("| " + " | ".join(SWEEP_COLUMNS) + " |")
    out.append("|" + "|".join("---" if c in left else "---:" for c in SWEEP_COLUMNS) + "|")
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    out.append("")
    out.append("size: bytes on disk of the packed export; x smaller and x teacher speed (batch-1 p50 latency) "
               "against the FP32 teacher; front: on the Pareto front of accuracy vs size / vs latency.")
    out += [f"\n![{p.stem}]({p.name})" for p in plots]
    return "\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:.92em}th,td{border-bottom:1px solid #ddd;padding:.3em .6em}"
        "th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "img{max-width:100%;border:1px solid #eee}.note{color:#666;font-size:.9em}")


def _html(result: dict[str, Any], plots: list[Path], title: str) -> str:
    left = {"point", "recipe", "grid", "status", "front (size / latency)"}
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    if result.get("description"):
        out.append(f"<p>{esc(str(result['description']))}</p>")
    out.append("<h2>Pick this</h2><ul>" + "".join(f"<li>{esc(s)}</li>" for s in summary_lines(result)) + "</ul>")
    out.append("<h2>Points</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in SWEEP_COLUMNS) + "</tr>")
    for r in sweep_table(result):
        out.append("<tr>" + "".join(f"<td>{esc(v)}</td>" if SWEEP_COLUMNS[i] in left else f"<td class=\"num\">{esc(v)}</td>"
                                    for i, v in enumerate(r)) + "</tr>")
    out.append("</table><p class=\"note\">size: bytes on disk of the packed export; x smaller and x teacher speed "
               "against the FP32 teacher; front: on the Pareto front of accuracy vs size / vs latency.</p>")
    for png in plots:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        out.append(f"<h2>{esc(png.stem.replace('_', ' '))}</h2><img src=\"data:image/png;base64,{data}\" alt=\"{esc(png.name)}\">")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_sweep_report(result: dict[str, Any], out_dir: str | Path, title: str = "compactbert sweep") -> dict[str, Any]:
    """Write ``report.md``, ``index.html`` and the PNG plots of a sweep into ``out_dir``.

    A plot is left out (and a stale one removed) when fewer than one model has both its numbers
    (no latency without a benchmark). Returns ``{"html", "markdown", "plots"}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = plot_entries(result)
    plots: list[Path] = []
    for key, _, fname, xlabel, ptitle, unit in COSTS:
        png = scatter_plot(entries, key, out / fname, xlabel, ptitle, x_unit=unit)
        if png is not None:
            plots.append(png)
        elif (out / fname).exists():
            (out / fname).unlink()
    md = out / "report.md"
    md.write_text(_markdown(result, plots, title))
    page = out / "index.html"
    page.write_text(_html(result, plots, title))
    return {"html": page, "markdown": md, "plots": plots}
