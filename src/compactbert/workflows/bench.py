"""``bench``: measure models side by side (:func:`compactbert.bench.core.run_bench`), write
``bench.json`` beside the first model by default, and show the table."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..bench.result import BENCH_FILE


def default_out(path) -> Path:
    """Where ``bench`` writes without ``out``: the first model folder's ``bench.json``, else ``./bench.json``."""
    first = path[0] if isinstance(path, (list, tuple)) else path
    return Path(first) / BENCH_FILE if first is not None and Path(first).is_dir() else Path(BENCH_FILE)


def bench(
    path: str | os.PathLike | Sequence[str | os.PathLike] | None,
    baseline: str | os.PathLike | None = None,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    threads: int = D.THREADS,
    out: str | os.PathLike | None = None,
    show: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Side-by-side speed, memory, size and accuracy: :func:`compactbert.bench.core.run_bench`, then
    the table on screen.

    ``out`` defaults to :func:`default_out`; ``options`` are run_bench's other settings
    (``baselines``, ``seq_len``, ``batch_size``, ``n_warmup``, ``n_latency``, ``n_throughput``,
    ``split``, ``max_eval_samples``, ``progress``, ...).

    Example:
        >>> r = compactbert.bench("packed/xtc", baseline="runs/teacher", task="sst2")  # doctest: +SKIP
        >>> r["ratios"]["vs_fp32"]["xtc"]["throughput_bs32"]                             # doctest: +SKIP
        6.3
    """
    from ..bench.core import run_bench
    from ..bench.plan import output_path
    from ..bench.result import print_bench_table

    out = default_out(path) if out is None else out
    result = run_bench(path, baseline, task=task, data=data, threads=threads, out=out, **options)
    if show:
        print_bench_table(result, path=output_path(out))
    return result
