"""Benchmarks: latency, throughput, memory, size and accuracy of a compressed model next to its
FP32 teacher and the teacher's ONNX Runtime int8 version (see :mod:`compactbert.bench.core`)."""

from .core import (
    BASELINE_KINDS,
    BENCH_FILE,
    DEFAULT_BASELINES,
    bench,
    compute_ratios,
    model_bytes,
    print_bench_table,
    run_bench,
)

__all__ = [
    "BASELINE_KINDS",
    "BENCH_FILE",
    "DEFAULT_BASELINES",
    "bench",
    "compute_ratios",
    "model_bytes",
    "print_bench_table",
    "run_bench",
]
