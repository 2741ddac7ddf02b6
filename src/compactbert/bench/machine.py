"""What machine a benchmark ran on: CPU model, the SIMD / matrix-unit flags that decide which
kernels can run, core count, load and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The CPU features that matter for transformer inference kernels, in rough order of capability.
KERNEL_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)


def cpu_info() -> dict[str, Any]:
    """CPU model name and the :data:`KERNEL_FLAGS` it has (Linux ``/proc/cpuinfo``; best effort elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "flags": [f for f in KERNEL_FLAGS if f in flags]}


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """A JSON-able summary of the machine and the software stack.

    Returns:
        ``{"cpu", "flags" (list of kernel-relevant CPU flags), "avx512", "vnni", "amx", "native_bf16"
        (booleans), "summary" (:func:`flags_summary`), "logical_cpus", "loadavg_1m"
        (load when the benchmark started: others' work on a shared machine skews timings),
        "threads", "python", "platform", "torch", "onnxruntime", "transformers"}``; a library that
        is not installed is reported as None.
    """
    info = cpu_info()
    flags = set(info["flags"])
    info["avx512"] = "avx512f" in flags
    info["vnni"] = bool({"avx512_vnni", "avx_vnni"} & flags)
    info["amx"] = bool({"amx_bf16", "amx_int8", "amx_tile"} & flags)
    info["native_bf16"] = bool({"avx512_bf16", "amx_bf16"} & flags)
    info["summary"] = flags_summary(info)
    info["logical_cpus"] = os.cpu_count()
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux/macOS
        info["loadavg_1m"] = None
    info["threads"] = threads
    info["python"] = platform.python_version()
    info["platform"] = platform.platform(terse=True)
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("torch", "onnxruntime", "transformers", "openvino", "nncf"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = None
    return info


def flags_summary(info: dict[str, Any]) -> str:
    """One line such as ``"AVX-512, VNNI, AVX-512 BF16, AMX (bf16, int8)"`` for tables; what the
    CPU lacks of AVX-512, VNNI, AMX and native bf16 is said too (``"AVX2; no AVX-512, VNNI, AMX,
    native bf16"``): it decides which engines' fast paths exist."""
    flags = set(info.get("flags") or [])
    parts = []
    if "avx512f" in flags:
        parts.append("AVX-512")
    elif "avx2" in flags:
        parts.append("AVX2")
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        parts.append("VNNI")
    if "avx512_bf16" in flags:
        parts.append("AVX-512 BF16")
    amx = [k for k in ("bf16", "int8") if f"amx_{k}" in flags]
    if amx:
        parts.append(f"AMX ({', '.join(amx)})")
    absent = [name for name, have in (
        ("AVX-512", "avx512f" in flags), ("VNNI", bool({"avx512_vnni", "avx_vnni"} & flags)), ("AMX", bool(amx)),
        ("native bf16", bool({"avx512_bf16", "amx_bf16"} & flags)),
    ) if not have]
    line = ", ".join(parts) or "no AVX2"
    return line + (f"; no {', '.join(absent)}" if absent else "")
