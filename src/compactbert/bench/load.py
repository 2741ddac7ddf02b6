"""How busy the machine was while a model was timed: the CPU that *other* processes used.

A benchmark child reads the machine's CPU counters (Linux ``/proc/stat``: time every CPU spent
busy, steal time included: a hypervisor running someone else on our cores is contention too) and
its own CPU time (``time.process_time``: all its threads) before and after each timing phase. What
the machine used beyond the child's own use, divided by the wall time, is the average number of
cores other processes took meanwhile (``others_cores``).

Under contention the ranking changes, not just the numbers: on a shared 2-core machine PyTorch
engines (ours included) slowed 15-90x at batch 1 while ONNX Runtime and OpenVINO slowed 1.3-5x.
:func:`contention_warning` says so when others took cores the benchmark needed: more than
``cores - threads`` (the cores the benchmark left free) plus a small tolerance.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CpuSample", "LoadMeter", "read_machine_busy", "others_cores", "contention_warning", "loadavg",
           "TOLERANCE_CORES", "MIN_WINDOW_S"]

# Others may use this much on top of the free cores before a timing counts as contended: the
# kernel's own work and the counters' 10 ms granularity.
TOLERANCE_CORES = 0.15
# A window shorter than this is not measured: /proc/stat counts in 10 ms ticks, so one tick in a
# 30 ms window would read as a third of a core.
MIN_WINDOW_S = 0.5
# /proc/stat "cpu" columns that are busy time: user nice system idle iowait irq softirq steal
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)


def read_machine_busy(path: str = "/proc/stat") -> float | None:
    """CPU-seconds every CPU of the machine has spent busy since boot (steal included); None where
    ``/proc/stat`` cannot be read (not Linux)."""
    try:
        with open(path) as f:
            first = f.readline().split()
        ticks = [int(v) for v in first[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    if not first or first[0] != "cpu" or len(ticks) < 8:
        return None
    return sum(ticks[i] for i in _BUSY_COLUMNS) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """One reading: ``wall`` (seconds, monotonic), ``busy`` (machine busy CPU-seconds, or None),
    ``own`` (this process's CPU-seconds)."""

    wall: float
    busy: float | None
    own: float


def others_cores(a: CpuSample, b: CpuSample, cpus: int | None = None) -> float | None:
    """Average cores used by other processes between readings ``a`` and ``b``, within ``[0,
    cpus]``; None without machine counters or when the window is shorter than :data:`MIN_WINDOW_S`."""
    dt = b.wall - a.wall
    if a.busy is None or b.busy is None or dt < MIN_WINDOW_S:
        return None
    value = max(0.0, ((b.busy - a.busy) - (b.own - a.own)) / dt)
    return min(value, float(cpus)) if cpus else value


class LoadMeter:
    """Readings around a timed phase: ``meter.start()`` ... ``meter.stop()`` -> others' cores.

    The readers are injectable (tests give fake counters): ``read_busy()`` machine busy
    CPU-seconds, ``read_own()`` this process's CPU-seconds, ``clock()`` wall seconds.
    """

    def __init__(self, read_busy: Callable[[], float | None] = read_machine_busy,
                 read_own: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic,
                 cpus: int | None = None):
        self.read_busy, self.read_own, self.clock = read_busy, read_own, clock
        self.cpus = cpus if cpus is not None else os.cpu_count()
        self._start: CpuSample | None = None

    def sample(self) -> CpuSample:
        return CpuSample(self.clock(), self.read_busy(), self.read_own())

    def start(self) -> None:
        self._start = self.sample()

    def stop(self) -> float | None:
        """Others' average cores since :meth:`start` (None without counters or a start)."""
        if self._start is None:
            return None
        return others_cores(self._start, self.sample(), self.cpus)


def contention_warning(others: float | None, cpus: int | None, threads: int, where: str = "") -> str | None:
    """A one-line warning when other processes used cores the benchmark's ``threads`` needed, else None.

    Contended means ``others > max(cpus - threads, 0) + TOLERANCE_CORES``: beyond the cores the
    benchmark left free. ``where`` names the model/round for the message.
    """
    if others is None or not cpus:
        return None
    free = max(int(cpus) - int(threads), 0)
    if others <= free + TOLERANCE_CORES:
        return None
    at = f" while timing {where}" if where else ""
    return (f"other processes used {others:.2f} of {cpus} cores{at} (the benchmark runs {threads} threads, "
            f"{free} core(s) free): timings are contended and the ranking may change; rerun on an idle machine")


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None
