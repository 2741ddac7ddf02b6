"""Interleaved rounds: the order models are measured in, and how a figure's rounds become one number.

A benchmark measures every model once per *round* and repeats the rounds (3 by default), so a
slow minute of a shared machine lands on every model rather than on one. Each round starts one model
further along the list (round 0: A B C, round 1: B C A, round 2: C A B): no model always runs first,
right after the harness started, or last. A figure is then the **median** over the rounds with its
**min and max**; a ratio between two models is taken round by round (the two were measured minutes
apart, in the same round) and its median and range are reported the same way.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["schedule", "summarize", "paired_ratios", "combine_rounds", "TIMED_FIGURES"]

# The figures a round measures that get a median and a min-max (the rest are taken from round 0).
TIMED_FIGURES = (
    "latency_ms_bs1_p50", "latency_ms_bs1_p90", "latency_ms_bs1_mean", "throughput_bs32", "ms_per_batch_p50",
    "load_s", "others_cores",
)


def schedule(n_models: int, rounds: int) -> list[tuple[int, int]]:
    """``(round, model index)`` in the order they are measured: every model once per round, each round
    rotated by one (round ``r`` starts with model ``r % n_models``)."""
    if n_models < 1 or rounds < 1:
        return []
    return [(r, (r + k) % n_models) for r in range(rounds) for k in range(n_models)]


def _numbers(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def summarize(values: Sequence[Any]) -> dict[str, float] | None:
    """``{"median", "min", "max"}`` of the numbers among ``values`` (None entries are ignored: a
    round that did not measure the figure); None when there is no number."""
    nums = _numbers(values)
    if not nums:
        return None
    return {"median": float(statistics.median(nums)), "min": min(nums), "max": max(nums)}


def paired_ratios(a: Sequence[Any], b: Sequence[Any], higher_is_better: bool = True) -> list[float]:
    """Round-by-round "times better" ratios of figure lists ``a`` (the model) and ``b`` (the
    baseline): ``a/b`` when higher is better (throughput), ``b/a`` otherwise (latency). Rounds where
    either is missing or not positive are left out."""
    out = []
    for x, y in zip(a, b):
        if not (isinstance(x, (int, float)) and isinstance(y, (int, float)) and x > 0 and y > 0):
            continue
        out.append(x / y if higher_is_better else y / x)
    return out


def combine_rounds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One measurement from a model's rounds (in round order): each of :data:`TIMED_FIGURES` is its
    median, with ``rounds[figure]`` the per-round values; every other key comes from the first round
    (peak memory, kernels: the round that also scored the model)."""
    if not results:
        return {}
    out = dict(results[0])
    out["rounds"] = {}
    for key in TIMED_FIGURES:
        values = [r.get(key) for r in results]
        s = summarize(values)
        if s is None:
            continue
        out[key] = s["median"]
        out["rounds"][key] = [float(v) if isinstance(v, (int, float)) else None for v in values]
    # the largest resident set any round reached (each round is a fresh process)
    peaks = _numbers([r.get("peak_rss_mb") for r in results])
    if peaks:
        out["peak_rss_mb"] = max(peaks)
    return out
