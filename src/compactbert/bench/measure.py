"""Timing and memory measurement of one runner (what runs inside a benchmark's child process).

* **Latency** at batch 1: ``n_warmup`` untimed calls, then ``n_latency`` timed calls, each on one
  row of the timing batch (rows taken in turn); p50 and p90 of the per-call wall time.
* **Throughput** at batch ``batch_size``: ``n_warmup`` untimed calls, then ``n_throughput`` timed
  calls on the whole batch; sequences per second = rows x calls / total time.
* **Memory**: the process's resident-set high-water mark (``VmHWM``, see :func:`peak_rss_mb`) when
  the measurement ends, so library imports + model load + all calls; and the resident set before
  building the runner (bare Python + numpy) and after (libraries + model). Run each model in a fresh
  process for these to mean anything.
* **Predictions** on the accuracy batches, returned as logits for the parent to score.
* **Clock**: ``"wall"`` (``time.perf_counter``, default) or ``"cpu"`` (``time.process_time``: the
  CPU-seconds of every thread of the process, so with 2 threads a call costs ~2x its wall time;
  insensitive to waiting for a core another process holds, but an engine's spin-waiting threads
  count). Throughput under the CPU clock is sequences per CPU-second.
* **Load**: the cores other processes used on average while the latency and throughput calls ran
  (:mod:`compactbert.bench.load`), recorded as ``others_cores``.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import defaults as D

__all__ = ["CLOCKS", "clock_fn", "time_calls", "measure_latency", "measure_throughput", "rss_mb", "peak_rss_mb", "measure_runner"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def clock_fn(clock: str) -> Callable[[], float]:
    """The timer of ``clock`` (``"wall"`` or ``"cpu"``)."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; valid: {', '.join(CLOCKS)}")
    return CLOCKS[clock]


def time_calls(fn: Callable[[], Any], n_warmup: int, n_runs: int, clock: str = "wall") -> list[float]:
    """Call ``fn`` ``n_warmup`` times untimed, then ``n_runs`` times timed; the times in milliseconds
    of ``clock`` (``"wall"`` or ``"cpu"``)."""
    timer = clock_fn(clock)
    for _ in range(n_warmup):
        fn()
    times = []
    for _ in range(n_runs):
        t0 = timer()
        fn()
        times.append((timer() - t0) * 1e3)
    return times


def _rows(feed: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[i : i + 1]) for k, v in feed.items()}


def measure_latency(runner, feed: dict[str, np.ndarray], n_warmup: int = D.N_WARMUP, n_runs: int = D.N_LATENCY,
                    clock: str = "wall") -> dict[str, float]:
    """Batch-1 latency of ``runner`` over the rows of ``feed`` (row ``k % rows`` at call ``k``).

    Returns:
        ``{"p50", "p90", "mean", "min"}`` in milliseconds.
    """
    rows = [_rows(feed, i) for i in range(next(iter(feed.values())).shape[0])]
    k = iter(range(10**12))
    times = time_calls(lambda: runner(rows[next(k) % len(rows)]), n_warmup, n_runs, clock)
    arr = np.asarray(times)
    return {
        "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
        "mean": float(arr.mean()), "min": float(arr.min()),
    }


def measure_throughput(runner, feed: dict[str, np.ndarray], n_warmup: int = 2, n_runs: int = 10,
                       clock: str = "wall") -> dict[str, float]:
    """Sequences per second of ``runner`` on the whole batch ``feed``.

    Returns:
        ``{"seq_per_s", "ms_per_batch_p50", "batch"}``.
    """
    batch = int(next(iter(feed.values())).shape[0])
    times = time_calls(lambda: runner(feed), n_warmup, n_runs, clock)
    return {
        "seq_per_s": batch * len(times) / (sum(times) / 1e3),
        "ms_per_batch_p50": float(np.percentile(times, 50)),
        "batch": batch,
    }


def rss_mb() -> float | None:
    """The process's current resident set in MiB (Linux ``/proc/self/statm``; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return psutil.Process().memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 - memory is best effort
            return None


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, which belongs to the process's own address
    space. ``ru_maxrss`` is not used there: it survives ``fork`` + ``exec``, so a child started by a
    parent that holds a 500 MB model would report the parent's peak. Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure_runner(
    build: Callable[[], Any],
    timing: dict[str, np.ndarray],
    evals: Sequence[dict[str, np.ndarray]] = (),
    batch_size: int = D.BENCH_BATCH_SIZE,
    n_warmup: int = D.N_WARMUP,
    n_latency: int = D.N_LATENCY,
    n_throughput: int = D.N_THROUGHPUT,
    clock: str = "wall",
    meter=None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Build a runner and measure it.

    Args:
        build: makes the runner (timed as the load time; memory before/after is recorded).
        timing: the timing batch, at least ``batch_size`` rows of the benchmark's sequence length.
        evals: accuracy batches (may be empty).
        batch_size: rows of the throughput batch.
        n_warmup, n_latency, n_throughput: untimed and timed calls.
        clock: ``"wall"`` or ``"cpu"`` (see the module docstring).
        meter: a :class:`compactbert.bench.load.LoadMeter` (default: the machine's counters).

    Returns:
        ``(result, logits)``: result has ``load_s``, ``rss_before_load_mb``, ``rss_after_load_mb``,
        ``latency_ms_bs1_p50/p90/mean``, ``throughput_bs32`` (sequences/s at ``batch_size``),
        ``ms_per_batch_p50``, ``kernels``, ``note`` (what the runner wants said about it, or None),
        ``clock``, ``others_cores`` (others' cores while timing, None without counters or when
        the timing was too short for them, see :mod:`compactbert.bench.load`) and
        ``peak_rss_mb``; logits are the concatenated outputs on ``evals`` in batch order (None
        without evals).
    """
    from .load import LoadMeter

    meter = meter if meter is not None else LoadMeter()
    before = rss_mb()
    t0 = time.perf_counter()
    runner = build()
    load_s = time.perf_counter() - t0
    after = rss_mb()

    big = {k: np.ascontiguousarray(v[:batch_size]) for k, v in timing.items()}
    meter.start()
    lat = measure_latency(runner, big, n_warmup, n_latency, clock)
    thr = measure_throughput(runner, big, max(1, n_warmup - 1), n_throughput, clock)
    others = meter.stop()
    logits = None
    if evals:
        logits = np.concatenate([np.asarray(runner(b), dtype=np.float32) for b in evals], axis=0)
    info = getattr(runner, "info", None) or {}
    result = {
        "load_s": load_s,
        "rss_before_load_mb": before,
        "rss_after_load_mb": after,
        "latency_ms_bs1_p50": lat["p50"],
        "latency_ms_bs1_p90": lat["p90"],
        "latency_ms_bs1_mean": lat["mean"],
        "throughput_bs32": thr["seq_per_s"],
        "ms_per_batch_p50": thr["ms_per_batch_p50"],
        "kernels": getattr(runner, "kernels", None),
        "note": info.get("note") if isinstance(info, dict) else None,
        "clock": clock,
        "others_cores": others,
        "peak_rss_mb": peak_rss_mb(),
    }
    return result, logits
