"""Reports: a table and plots (accuracy vs size, latency, throughput) of runs, packed models and
benchmarks, as Markdown, PNG and one HTML page (see :mod:`compactbert.report.core`)."""

from ..lazy import callable_verb
from .collect import collect
from .core import format_table, make_report, report

__all__ = ["collect", "format_table", "make_report", "report"]


callable_verb(__name__, "report")  # compactbert.report(...) is the verb even after this is imported
