"""The processes of a training run: accelerate's set-up, CPU data parallelism, bf16 support."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .loop import TrainConfig


def bf16_supported() -> bool:
    """True when this machine runs bf16 matmuls natively (CUDA bf16, or a CPU with AVX512-BF16/AMX)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch builds
        return False


def cpu_processes() -> bool:
    """True when several processes were launched (``WORLD_SIZE`` > 1) on a machine without CUDA.

    accelerate only sets up CPU data parallelism (gloo) when told ``cpu=True``; its own
    ``accelerate launch --cpu`` starts a single process unless MPI is installed, so CPU runs are
    launched with ``accelerate launch --multi_gpu --num_processes N`` or ``torchrun
    --nproc_per_node N`` (both start N processes through torch.distributed) and told here.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _check_cpu_launch() -> None:
    """Warn when ``accelerate launch --cpu --num_processes N`` started one process instead of N."""
    asked_several = "MASTER_ADDR" in os.environ and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    if asked_several and "WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ:
        print(
            "warning: this is a single process: `accelerate launch --cpu` starts several CPU processes only "
            "through MPI; use `accelerate launch --multi_gpu --num_processes N -m compactbert ...` or "
            "`torchrun --nproc_per_node N -m compactbert ...` (both work without a GPU)",
            file=sys.stderr,
        )


class Processes:
    """This run's processes (accelerate): who writes, the device, which slice of a global batch is mine.

    Creating it seeds every RNG (``set_seed(seed, device_specific=True)``: dropout streams differ per
    process, as in any DDP run).
    """

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        # split_batches: the batch size is global (we slice each global batch ourselves, see docstring).
        # Mixed precision is our own torch.autocast rather than Accelerator(mixed_precision=...): the
        # accelerate state is a per-process singleton whose precision cannot change afterwards, and one
        # Python process may run several trainings (fine-tune in fp32, then compress in bf16).
        self.accelerator = acc = Accelerator(mixed_precision="no", split_batches=True, cpu=cpu_processes())
        self.is_main, self.rank, self.world, self.device = acc.is_main_process, acc.process_index, acc.num_processes, acc.device
        if self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main and self.world == 1:
            _check_cpu_launch()
        if cfg.bf16 and not bf16_supported():
            print("warning: bf16 requested but this machine has no native bf16; it will be slow", file=sys.stderr)
        set_seed(cfg.seed, device_specific=True)

    def my_slice(self, global_batch: list[int]) -> list[int]:
        """This process's contiguous share of a global batch (may be empty for a tiny last batch)."""
        return np.array_split(np.asarray(global_batch), self.world)[self.rank].tolist()

    def gather(self, items: list) -> list:
        """Every process's ``items``, concatenated in process order."""
        from accelerate.utils import gather_object

        return gather_object(items) if self.world > 1 else items

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)
