"""``compactbert report``: one table and three plots for any set of runs, packed models and benchmarks.

:func:`make_report` writes into ``out_dir``:

* ``report.md``: the table in Markdown;
* ``accuracy_vs_bytes.png``, ``accuracy_vs_latency.png`` (batch-1 p50) and
  ``accuracy_vs_throughput.png`` (batch 32): log-scaled x, every model labelled; a plot is skipped
  when no model has both of its values;
* ``widths_<model>.png``, one per model whose weights carry ``groupbits`` quantizers (a mixed-precision
  run or its packed export): the bit width of every row group of every matrix, with a table of the
  average bits per layer and matrix kind (see :mod:`compactbert.report.widths`);
* ``index.html``: the table and the plots (embedded, so the page is one self-contained file);
* ``report.json``: the collected entries.

"x smaller" and "x fp32 speed" compare each model with the FP32 teacher measured in the same
benchmark (never across two bench.json files); models outside a benchmark compare with the first FP32
teacher in the report, else with the largest model.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from .collect import collect

__all__ = ["make_report", "report", "format_table", "PLOTS"]

# (file, x field, x label, title, x unit, higher x is better)
PLOTS = (
    ("accuracy_vs_bytes.png", "file_bytes", "size on disk (log scale)", "Accuracy vs size", "bytes", False),
    ("accuracy_vs_latency.png", "latency_ms_bs1_p50", "latency at batch 1, p50 (ms, log scale)",
     "Accuracy vs latency", " ms", False),
    ("accuracy_vs_throughput.png", "throughput_bs32", "throughput at batch 32 (sequences/s, log scale)",
     "Accuracy vs throughput", "", True),
)


def fmt_bytes(n: Any) -> str:
    """``1234567`` -> ``"1.23 MB"`` (SI units, 3 significant digits); ``"-"`` when unknown."""
    if not isinstance(n, (int, float)):
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            v = n / div
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def _num(x: Any, spec: str, suffix: str = "") -> str:
    return format(x, spec) + suffix if isinstance(x, (int, float)) else "-"


def _is_fp32_teacher(e: dict[str, Any]) -> bool:
    return e.get("role") == "baseline" and e.get("kind") == "torch-fp32"


def _references(entries: list[dict[str, Any]]) -> dict[int, dict[str, Any] | None]:
    """For each entry (by index), the model its ratios compare with: the FP32 teacher of its own
    benchmark; for entries outside a benchmark, the first FP32 teacher in the report, else the
    largest model. Ratios are never taken between two different benchmarks."""
    teachers = {e.get("group"): e for e in entries if _is_fp32_teacher(e) and e.get("group")}
    first = next((e for e in entries if _is_fp32_teacher(e)), None)
    if first is None:
        sized = [e for e in entries if isinstance(e.get("file_bytes"), (int, float))]
        first = max(sized, key=lambda e: e["file_bytes"]) if sized else None
    out: dict[int, dict[str, Any] | None] = {}
    for i, e in enumerate(entries):
        group = e.get("group")
        out[i] = teachers.get(group) if group is not None else first
    return out


def _times(x: float | None) -> str:
    """A ratio as ``"6.3x"`` (``"0.052x"`` below 0.1)."""
    if x is None:
        return "-"
    return f"{x:.2g}x" if x < 0.1 else (f"{x:.2f}x" if x < 10 else f"{x:.1f}x")


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0:
        return a / b
    return None


COLUMNS = (
    "model", "kind", "task (metric)", "accuracy (%)", "size", "x smaller", "bs1 p50 ms", "bs1 p90 ms",
    "bs32 seq/s", "x fp32 speed", "peak RSS MB",
)


def table_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The table as strings, one row per entry in :data:`COLUMNS` order (the same text in every format)."""
    refs = _references(entries)
    rows = []
    for i, e in enumerate(entries):
        ref = refs[i]
        task = e.get("task") or "-"
        if e.get("metric") and e.get("metric") != "accuracy":
            task = f"{task} ({e['metric']})"
        acc = e.get("accuracy")
        smaller = _ratio(ref.get("file_bytes"), e.get("file_bytes")) if ref is not None and e is not ref else None
        speed = _ratio(e.get("throughput_bs32"), ref.get("throughput_bs32")) if ref is not None and e is not ref else None
        rows.append([
            str(e["name"]), str(e.get("kind") or "-"), task,
            _num(None if acc is None else 100 * acc, ".2f"), fmt_bytes(e.get("file_bytes")),
            _times(smaller), _num(e.get("latency_ms_bs1_p50"), ".2f"), _num(e.get("latency_ms_bs1_p90"), ".2f"),
            _num(e.get("throughput_bs32"), ".1f"), _times(speed), _num(e.get("peak_rss_mb"), ".0f"),
        ])
    return rows


def format_table(entries: list[dict[str, Any]]) -> str:
    """The table in Markdown."""
    rows = table_rows(entries)
    right = {i for i, c in enumerate(COLUMNS) if c not in ("model", "kind", "task (metric)")}
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(COLUMNS))) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.95em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.35em 0.7em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
"""


def _html(entries: list[dict[str, Any]], plots: list[Path], title: str, widths: list[dict[str, Any]] = ()) -> str:
    rows = table_rows(entries)
    left = {"model", "kind", "task (metric)"}
    out = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=\"note\">generated {_dt.datetime.now().isoformat(timespec='seconds')} by compactbert report from "
        f"{len(entries)} model(s)</p>",
        "<h2>Models</h2>", "<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>",
    ]
    for r in rows:
        cells = "".join(
            f"<td>{html.escape(v)}</td>" if COLUMNS[i] in left else f"<td class=\"num\">{html.escape(v)}</td>"
            for i, v in enumerate(r)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    out.append("<p class=\"note\">accuracy: the task's accuracy (or its main metric where named). size: bytes on "
               "disk of the model's files (or a run's predicted packed size). x smaller / x fp32 speed: against "
               "the FP32 teacher of the same benchmark (else the first FP32 teacher, else the largest model).</p>")
    for png in plots:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        out.append(f"<h2>{html.escape(png.stem.replace('_', ' '))}</h2>")
        out.append(f"<img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(png.name)}\">")
    if widths:
        from .widths import widths_section_html

        out.append("<h2>Bit widths per row group</h2>")
        out.extend(widths_section_html(w["name"], w["tmp_png"], w["summary"]) for w in widths)
    details = [e for e in entries if e.get("kernels") or e.get("bytes_source")]
    if details:
        out.append("<h2>Details</h2><ul>")
        for e in details:
            bits = [f"<b>{html.escape(str(e['name']))}</b>"]
            if e.get("kernels"):
                bits.append(f"kernels: {html.escape(str(e['kernels']))}")
            if e.get("bytes_source"):
                bits.append(f"size from {html.escape(str(e['bytes_source']))}")
            if e.get("threads"):
                bits.append(f"{e['threads']} threads")
            bits.append(f"source: {html.escape(str(e.get('source')))}")
            out.append("<li>" + " &mdash; ".join(bits) + "</li>")
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def make_report(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike, title: str = "compactbert report",
                overwrite: bool = False) -> dict[str, Any]:
    """Collect the models under ``paths`` and write the table, plots and HTML page into ``out_dir``.

    Args:
        paths: run directories, packed directories, model folders, bench.json / eval.json /
            size.json files (see :mod:`compactbert.report.collect`).
        out_dir: the folder to write: new, empty or an earlier report (replaced as a whole);
            another folder only with ``overwrite``; never one of ``paths`` or a folder holding or
            inside one. Written into a staging folder and renamed into place.
        title: the page title.
        overwrite: replace a non-empty ``out_dir`` that is not an earlier report.

    Returns:
        ``{"out_dir", "html", "markdown", "json", "plots": [png paths], "entries": [...]}``.

    Raises:
        UserError: a path that does not exist or holds nothing to report, a malformed file, or an
            output folder that may not be written (see :func:`compactbert.outdir.check_output`).
    """
    from ..outdir import check_output, staged_output
    from .plots import scatter_plot

    paths = list(paths)
    entries = collect(paths)
    out = Path(out_dir)
    check_output(out, own=is_report_output, sources=[Path(p) for p in paths], overwrite=overwrite, command="report")
    with staged_output(out) as tmp:
        plots: list[Path] = []
        for fname, key, xlabel, ptitle, unit, higher in PLOTS:
            png = scatter_plot(entries, key, tmp / fname, xlabel, ptitle, x_unit=unit, higher_x_better=higher)
            if png is not None:
                plots.append(out / png.name)
        widths = write_widths_plots(entries, tmp)
        (tmp / "report.md").write_text(f"# {title}\n\n" + format_table(entries)
                                       + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
                                       + "".join(w["markdown"] for w in widths))
        (tmp / "index.html").write_text(_html(entries, [tmp / p.name for p in plots], title, widths))
        (tmp / "report.json").write_text(json.dumps({"entries": entries}, indent=2) + "\n")
    return {"out_dir": out, "html": out / "index.html", "markdown": out / "report.md", "json": out / "report.json",
            "plots": plots, "widths_plots": [out / w["tmp_png"].name for w in widths], "entries": entries}


def write_widths_plots(entries: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """One ``widths_<model>.png`` in ``folder`` per entry with groupbits widths; returns, per picture,
    ``{"name", "tmp_png", "summary", "markdown"}`` (the PNG's path in ``folder``)."""
    from .widths import summary_markdown, widths_file_name, widths_plot, widths_summary

    out: list[dict[str, Any]] = []
    taken: set[str] = set()
    for e in entries:
        if not e.get("widths"):
            continue
        png = widths_plot(e["widths"], folder / widths_file_name(str(e["name"]), taken), f"Bit widths: {e['name']}")
        if png is None:
            continue
        summary = widths_summary(e["widths"])
        out.append({"name": str(e["name"]), "tmp_png": png, "summary": summary,
                    "markdown": summary_markdown(str(e["name"]), png.name, summary)})
    return out


def is_report_output(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier report and nothing else (``report`` replaces it)."""
    names = {p.name for p in folder.iterdir()}
    own = {"index.html", "report.md", "report.json", *(fname for fname, *_ in PLOTS)}
    return "report.json" in names and all(n in own or (n.startswith("widths_") and n.endswith(".png")) for n in names)


def report(paths: Sequence[str | os.PathLike], out: str | os.PathLike = "report", title: str = "compactbert report",
           show: bool = True, overwrite: bool = False) -> Path:
    """API verb ``compactbert.report``: :func:`make_report`, then the table and the files on screen.

    Returns:
        The path of ``index.html``.

    Example:
        >>> compactbert.report(["runs/teacher", "packed/xtc", "bench.json"], out="report")  # doctest: +SKIP
        PosixPath('report/index.html')
    """
    result = make_report(paths, out, title=title, overwrite=overwrite)
    if show:
        from rich.console import Console
        from rich.table import Table

        import sys

        console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
        table = Table(title=title, title_justify="left")
        for c in COLUMNS:
            table.add_column(c, justify="left" if c in ("model", "kind", "task (metric)") else "right")
        for r in table_rows(result["entries"]):
            table.add_row(*r)
        console.print(table)
        for p in [result["html"], result["markdown"], *result["plots"], *result["widths_plots"]]:
            console.print(f"wrote {p}", highlight=False)
    return result["html"]
