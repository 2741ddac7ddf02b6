"""The packed models' int8 product (runtime.kernels.int8_product): exact, and run by one of oneDNN's
optimized kernels rather than its scalar reference matmul (which is exact too, but ~4,500x slower:
what signed int8 sources got on an AVX-512 VNNI CPU without AMX)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from compactbert.runtime.kernels import int8_product, onednn_int8_max_level

PROBE = """
import torch
from compactbert.runtime.kernels import int8_product
g = torch.Generator().manual_seed(0)
codes = torch.randint(-127, 128, (64, 384), dtype=torch.int8, generator=g)
levels = torch.randint(-1, 2, (256, 384), dtype=torch.int8, generator=g)
packed = torch.ops.onednn.qlinear_prepack(levels, None)
int8_product(codes, packed, torch.ones(256), torch.zeros(256, dtype=torch.int64))
"""


def test_int8_product_is_exact_with_full_range_codes():
    limit = onednn_int8_max_level()
    assert limit in (64, 127), "the x86 CPUs we run on (AVX2, VNNI, AMX) all have an exact int8 product"
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-127, 128, (33, 96), dtype=torch.int8, generator=g)
    codes[0], codes[1] = 127, -127
    levels = torch.randint(-limit, limit + 1, (40, 96), dtype=torch.int8, generator=g)
    levels[0], levels[1] = limit, -limit
    scales = torch.rand(40, generator=g) + 0.5
    y = int8_product(codes, torch.ops.onednn.qlinear_prepack(levels, None), scales, torch.zeros(40, dtype=torch.int64))
    want = codes.double() @ levels.double().T * scales.double()
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=0)


def test_int8_product_runs_on_an_optimized_onednn_kernel_not_the_reference_one():
    assert torch.backends.mkldnn.is_available(), "the CPU build of torch ships oneDNN"
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    impls = [line.split(",")[6] for line in out.splitlines() if line.startswith("onednn_verbose") and ",exec,cpu,matmul," in line]
    assert impls, out[-2000:]
    assert not any(i.startswith("ref") for i in impls), impls
