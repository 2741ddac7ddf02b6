"""``compactbert bench``: compressed models next to the engines a user would run the uncompressed
teacher on, measured in one run on the same inputs, in interleaved rounds.

For every model: batch-1 latency (p50, p90), batch-32 throughput at sequence length 128, peak memory,
bytes on disk, and the task metric when a task is given. Each model runs in a **fresh child
process** (:mod:`compactbert.bench.child`) with the same thread settings, so its peak memory is its own
and no model inherits another's warm caches or thread pools. The teacher's variants (ONNX, OpenVINO
IR, packed) are derived into a temporary folder during the run (:mod:`compactbert.bench.plan`).

**Rounds** (:mod:`compactbert.bench.rounds`): every model is measured once per round (3 by default),
each round rotated by one, and each timed figure is the median over the rounds with its min and max;
ratios are taken round by round and reported as a median with a range. **Load**
(:mod:`compactbert.bench.load`): each timing records the cores other processes used meanwhile;
contended timings are listed and warned about (a busy machine changes the ranking, not just the
numbers). ``clock="cpu"`` times process CPU time instead of wall time.

Inputs (see :mod:`compactbert.bench.inputs`): timing rows are 128 *real* tokens (dev-set text
concatenated when a task is given, random token ids otherwise; no padding); accuracy is measured on
the dev set with ordinary length-sorted, dynamically padded batches.

``bench.json``::

    {"version": 2, "date": "...", "task": "sst2" | null, "split": "dev" | null, "n_eval": 872 | null,
     "threads": 2, "seq_len": 128, "batch_size": 32, "n_warmup": 3, "n_latency": 50, "n_throughput": 10,
     "inputs": "...", "isolated": true, "rounds": 3, "clock": "wall",
     "machine": {"cpu", "flags", "avx512", "vnni", "amx", "native_bf16", "summary", "logical_cpus",
                 "loadavg_1m", "torch", "onnxruntime", "openvino", ...},
     "load": {"loadavg_start", "loadavg_end", "others_cores_median", "others_cores_max", "contended": [...],
              "warning": str | null},
     "models": [{"name", "kind", "role", "path", "latency_ms_bs1_p50", "latency_ms_bs1_p90",
                 "throughput_bs32", "peak_rss_mb", "file_bytes", "weights_bytes", "accuracy",
                 "metric", "agreement_vs_fp32", "kernels", "note", "others_cores", "rounds",
                 "spread": {figure: {"min", "max", "rounds": [...]}}, "skipped"?, "error"?, ...}, ...],
     "ratios": {"baselines": {"fp32": name, "ort_int8": name, "teacher_runtime": name},
                "vs_fp32": {model: {"throughput_bs32": x, "throughput_bs32_range": [lo, hi],
                                    "latency_bs1_p50": x, ...}},
                "vs_ort_int8": {...}, "vs_teacher_runtime": {...}}}

Ratios are "times better": > 1 means the model is faster / smaller than the baseline. "vs the
teacher through compactbert's runtime" separates what compression gained from what the runtime did.

:func:`run_bench` goes in three steps: :mod:`.plan` (check the inputs, decide the models, derive
the teacher's baselines), :mod:`.run` (the inputs per tokenizer, then the rounds) and
:mod:`.result` (rows, ratios, load, ``bench.json``, the table).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import defaults as D
from .plan import BASELINE_KINDS, DEFAULT_BASELINES, BenchSettings, ModelSpec, add_baselines, make_plan, unique_names
from .load import loadavg
from .result import BENCH_FILE, bench_result, compute_ratios, load_summary, model_bytes, print_bench_table, write_result
from .run import measure_models, prepare_inputs

__all__ = [
    "BENCH_FILE",
    "DEFAULT_BASELINES",
    "BASELINE_KINDS",
    "ModelSpec",
    "run_bench",
    "compute_ratios",
    "print_bench_table",
    "model_bytes",
]


def run_bench(
    compressed_dir: str | os.PathLike | Sequence[str | os.PathLike] | None,
    baseline: str | os.PathLike | None,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    threads: int = D.THREADS,
    out: str | os.PathLike | None = BENCH_FILE,
    seq_len: int = D.BENCH_SEQ_LEN,
    batch_size: int = D.BENCH_BATCH_SIZE,
    n_warmup: int = D.N_WARMUP,
    n_latency: int = D.N_LATENCY,
    n_throughput: int = D.N_THROUGHPUT,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    split: str | None = None,
    max_eval_samples: int | None = None,
    max_seq_length: int = D.MAX_SEQ_LENGTH,
    isolate: bool = True,
    child_timeout: float | None = None,
    keep_dir: str | os.PathLike | None = None,
    progress: bool = True,
    rounds: int = D.BENCH_ROUNDS,
    clock: str = "wall",
    backends: Sequence[str] = ("compactbert",),
) -> dict[str, Any]:
    """Benchmark compressed model(s) against the teacher on the engines users would pick instead.

    Args:
        compressed_dir: a packed directory (or several), an ONNX folder/file, a run or a model
            folder; None to benchmark the baselines only.
        baseline: the FP32 teacher: a run directory, a model folder, a hub id or ``minilm-l6``.
            Needed when ``baselines`` is not empty.
        task: score every model on this task's dev split (None: no accuracy, random-token inputs).
        data: where the task's examples are (see :func:`compactbert.data.sources.load_examples`).
        threads: intra-op threads for every model (torch.set_num_threads, ORT intra_op_num_threads,
            OMP/MKL_NUM_THREADS of each child).
        out: a ``.json`` path, or a folder that gets ``bench.json``; None writes nothing.
        seq_len: tokens per timing row (all real tokens, no padding).
        batch_size: rows of the throughput batch (the ``throughput_bs32`` key keeps its name).
        n_warmup, n_latency, n_throughput: untimed calls before each timing; timed batch-1 calls
            (p50/p90 over these); timed full-batch calls.
        baselines: which teacher variants to run, from :data:`BASELINE_KINDS` (OpenVINO ones need
            ``pip install compactbert[bench]``; without it their rows are skipped, with the reason).
        split: the evaluation split (default: the task's first).
        max_eval_samples: score on a fixed random subset of this many dev examples.
        max_seq_length: truncation of the dev examples for accuracy.
        isolate: run each model in a fresh child process (needed for meaningful peak memory; with
            False, ``peak_rss_mb`` is null).
        child_timeout: seconds before a child is stopped (None: no limit).
        keep_dir: keep the exported ONNX files and inputs in this folder (default: a temporary one).
        progress: print one line per model as it is measured.
        rounds: interleaved rounds (every model once per round, each round rotated by one); each
            timed figure is the median over the rounds, with its min and max in the row's ``spread``.
        clock: ``"wall"`` or ``"cpu"`` (process CPU time, all threads: see
            :mod:`compactbert.bench.measure`).
        backends: each packed model is measured on each of these (``compactbert``,
            ``onnxruntime``, ``openvino``, ``auto``; rows ``NAME@BACKEND`` for the others).

    Returns:
        The bench.json content (keys in the module docstring; each model's row also has
        ``latency_ms_bs1_mean``, ``ms_per_batch_p50``, ``rss_before_load_mb``,
        ``rss_after_load_mb``, ``load_s``, ``metrics``, and ``error`` when it failed).

    Raises:
        UserError: a path that is not a model, an unknown task or baseline kind, settings out of
            range, no baseline where one is needed, a compressed model that fails to load.
    """
    settings = BenchSettings(threads, seq_len, batch_size, n_warmup, n_latency, n_throughput, max_seq_length,
                             isolate, child_timeout, rounds, clock, tuple(backends))
    plan = make_plan(compressed_dir, baseline, baselines, settings, task, data, split, max_eval_samples, out)
    console = _console() if progress else None
    tmp = None if keep_dir is not None else tempfile.TemporaryDirectory(prefix="compactbert-bench-")
    work = Path(keep_dir) if keep_dir is not None else Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        add_baselines(plan, work, console)
        unique_names(plan.specs)
        inputs = prepare_inputs(plan, work)
        avg_start = loadavg()
        rows = measure_models(plan, inputs, work, console)
        avg_end = loadavg()
    finally:
        if tmp is not None:
            tmp.cleanup()
    load = load_summary(rows, os.cpu_count(), settings.threads, avg_start, avg_end)
    result = bench_result(plan, rows, load)
    if plan.out_path is not None:
        write_result(result, plan.out_path)
    return result


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)
