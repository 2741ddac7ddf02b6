"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

PyTorch's CPU allocator takes every tensor from ``malloc``. glibc serves blocks above its mmap
threshold (128 KiB at first, at most 32 MiB) with fresh ``mmap`` pages, and returns them on free, so
a new tensor of a few MB - a quantized copy of a weight matrix, an activation - is page-faulted in
again at every step. On this project's Xeon that made an element-wise op on a fresh 2 MB tensor
2.5x slower than on a reused one (``benchmarks/RESULTS.md``, QAT step cost). Raising the mmap and
trim thresholds keeps those pages in the heap for the next step, which is what jemalloc/tcmalloc
(often ``LD_PRELOAD``-ed for PyTorch on CPU) do by design. The cost: the process's resident memory
stays near its peak, as with any caching allocator.

Training calls :func:`keep_freed_memory` once. Set ``COMPACTBERT_MALLOC_TUNING=0`` to turn it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: tensors below this come from (and go back to) the heap

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once. True when they are set.

    A no-op (False) off Linux, with another C library, or when ``COMPACTBERT_MALLOC_TUNING=0``.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("COMPACTBERT_MALLOC_TUNING", "1").strip() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting the mmap threshold also stops glibc's dynamic adjustment.
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    return _done
