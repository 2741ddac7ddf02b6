"""Benchmarks: latency, throughput, memory, size and accuracy of a compressed model next to its
FP32 teacher and the teacher's ONNX Runtime int8 version (see :mod:`compactbert.bench.core`).

The verb ``compactbert bench`` (defaults, the table on screen) is :func:`compactbert.workflows.bench.bench`.
"""

from ..lazy import callable_verb
from .core import (
    BASELINE_KINDS,
    BENCH_FILE,
    DEFAULT_BASELINES,
    compute_ratios,
    model_bytes,
    print_bench_table,
    run_bench,
)

__all__ = [
    "BASELINE_KINDS",
    "BENCH_FILE",
    "DEFAULT_BASELINES",
    "compute_ratios",
    "model_bytes",
    "print_bench_table",
    "run_bench",
]


callable_verb(__name__, "bench")  # compactbert.bench(...) is the verb even after this is imported
