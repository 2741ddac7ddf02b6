"""``compactbert bench``: the compressed model next to its FP32 teacher and the teacher's ONNX Runtime
int8 version, measured in one run on the same inputs.

For every model: batch-1 latency (p50, p90), batch-32 throughput at sequence length 128, peak memory,
bytes on disk, and the task metric when a task is given. Each model runs in a **fresh child
process** (:mod:`compactbert.bench.child`) with the same thread settings, so its peak memory is its own
and no model inherits another's warm caches or thread pools. The teacher's ONNX files are exported
into a temporary folder during the run (:mod:`compactbert.export.onnx`).

Inputs (see :mod:`compactbert.bench.inputs`): timing rows are 128 *real* tokens (dev-set text
concatenated when a task is given, random token ids otherwise; no padding); accuracy is measured on
the dev set with ordinary length-sorted, dynamically padded batches.

``bench.json`` (see :func:`run_bench` for every key)::

    {"version": 1, "date": "...", "task": "sst2" | null, "threads": 2, "seq_len": 128, "batch_size": 32,
     "inputs": "...", "machine": {"cpu", "flags", "logical_cpus", "loadavg_1m", ...},
     "models": [{"name", "kind", "role", "path", "latency_ms_bs1_p50", "latency_ms_bs1_p90",
                 "throughput_bs32", "peak_rss_mb", "file_bytes", "weights_bytes", "accuracy",
                 "metric", "kernels", ...}, ...],
     "ratios": {"baselines": {"fp32": name, "ort_int8": name},
                "vs_fp32": {model: {"throughput_bs32": x, "latency_bs1_p50": x, ...}},
                "vs_ort_int8": {...}}}

Ratios are "times better": > 1 means the model is faster / smaller than the baseline.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import _nearest_existing
from ..errors import UserError, did_you_mean

__all__ = [
    "BENCH_FILE",
    "DEFAULT_BASELINES",
    "BASELINE_KINDS",
    "ModelSpec",
    "run_bench",
    "bench",
    "compute_ratios",
    "print_bench_table",
    "model_bytes",
]

BENCH_FILE = "bench.json"
BENCH_VERSION = 1
# Baselines derived from the teacher. "ort-int8" is ONNX Runtime's quantize_dynamic on the exported
# graph ("just quantize it"); the "-fused" ones first run ORT's transformer optimizer (Attention,
# SkipLayerNorm, BiasGelu fusion), as ORT's BERT tutorials do; "torch-int8" is PyTorch dynamic int8.
BASELINE_KINDS = ("torch-fp32", "ort-fp32", "ort-int8", "torch-int8", "ort-fp32-fused", "ort-int8-fused")
DEFAULT_BASELINES = ("torch-fp32", "ort-fp32", "ort-int8")
FP32_BASELINE = "teacher-fp32"
ORT_INT8_BASELINE = "teacher-ort-int8"

# Files that describe a model folder rather than being part of it: not counted as its bytes.
_NOT_MODEL_FILES = {"bench.json", "eval.json", "size.json", "onnx_export.json", "onnx_quantize.json"}
_WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".bin", ".onnx_data", ".data")


@dataclass
class ModelSpec:
    """One model of a benchmark.

    Attributes:
        name: the row name (``teacher-fp32``, the packed folder's name, ...).
        kind: the runner kind (:mod:`compactbert.bench.runners`).
        path: what the runner loads (folder or ``.onnx`` file).
        files: the folder (or file) whose bytes are the model's size on disk.
        tokenizer_dir: where the model's tokenizer is.
        role: ``"compressed"`` or ``"baseline"``.
    """

    name: str
    kind: str
    path: Path
    files: Path
    tokenizer_dir: Path
    role: str = "compressed"


# --------------------------------------------------------------------------------------------------
# Sizes


def model_bytes(path: str | os.PathLike) -> tuple[int, int]:
    """``(file_bytes, weights_bytes)`` of a model folder or file.

    ``file_bytes`` is every file of the folder (recursively; weights, config, tokenizer, manifest),
    except reports written about it (``bench.json``, ``eval.json``, ``size.json``, ...).
    ``weights_bytes`` counts only the weight files (``.safetensors``, ``.onnx``, ...). For a single
    file both are its size.
    """
    p = Path(path)
    if p.is_file():
        n = p.stat().st_size
        return n, n
    total = weights = 0
    for f in p.rglob("*"):
        if not f.is_file() or f.name in _NOT_MODEL_FILES:
            continue
        n = f.stat().st_size
        total += n
        if f.name.endswith(_WEIGHT_SUFFIXES):
            weights += n
    return total, weights


# --------------------------------------------------------------------------------------------------
# Resolving the models


def _is_run_dir(p: Path) -> bool:
    return (p / "run.json").is_file()


def _spec_for_compressed(path: str | os.PathLike) -> ModelSpec:
    """What kind of thing ``path`` is: a packed folder, an ONNX file/folder, a run or a HF folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(
            f"model to benchmark {str(path)!r} does not exist; expected a packed directory "
            f"(compactbert export --format packed), an ONNX folder or file, or a run directory"
        )
    name = p.stem if p.is_file() else p.name
    if p.is_file():
        if p.suffix != ".onnx":
            raise UserError(f"model to benchmark {str(path)!r} is a file but not .onnx; give a model directory")
        return ModelSpec(name, "ort", p, p, p.parent)
    if (p / "manifest.json").is_file():
        return ModelSpec(name, "packed", p, p, p)
    if (p / "model.onnx").is_file():
        return ModelSpec(name, "ort", p / "model.onnx", p, p)
    if _is_run_dir(p):
        if not (p / "model" / "config.json").is_file():
            raise UserError(f"run {str(p)!r} has no model/ yet; let it finish or give another directory")
        return ModelSpec(name, "torch-fp32", p / "model", p / "model", p / "model")
    if (p / "config.json").is_file():
        return ModelSpec(name, "torch-fp32", p, p, p)
    raise UserError(
        f"{str(path)!r} is not a model directory (no manifest.json, model.onnx, run.json or config.json); "
        f"expected a packed directory from 'compactbert export', an ONNX folder, a run or a model folder"
    )


def _teacher_folder(baseline: str | os.PathLike, task, work: Path) -> Path:
    """A local folder holding the teacher: a run's model/, a model folder, or (hub id / alias) a copy
    saved into the work folder."""
    p = Path(baseline).expanduser()
    if p.is_dir() and _is_run_dir(p):
        if not (p / "model" / "config.json").is_file():
            raise UserError(f"baseline run {str(p)!r} has no model/ yet; let it finish or give a model folder")
        return p / "model"
    from ..api import load_for_task
    from ..models import resolve_model

    resolved = resolve_model(str(baseline))
    if Path(resolved).is_dir() and (Path(resolved) / "model.safetensors").is_file() and _has_head(Path(resolved)):
        return Path(resolved)
    # A hub id, or an encoder without a classification head (the embedded MiniLM): load it with a
    # (new) head for the task and save a local copy for the child processes.
    from ..data.tasks import get_task

    net, tok = load_for_task(str(baseline), task if task is not None else get_task("sst2"))
    out = work / "teacher"
    from .runners import quiet_transformers

    with quiet_transformers():
        net.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    return out


def _has_head(folder: Path) -> bool:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def _load_tokenizer(folder: Path, kind: str):
    """The model's own tokenizer (a packed folder keeps it, possibly vocab-pruned, under tokenizer/)."""
    from transformers import AutoTokenizer

    from .runners import quiet_transformers

    with quiet_transformers():
        try:
            if kind == "packed":
                from ..export.pack import load_packed_tokenizer

                tok = load_packed_tokenizer(folder)
                if tok is None:
                    raise OSError("the packed directory has no tokenizer")
                return tok
            return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot load the tokenizer of {str(folder)!r}: {str(e).splitlines()[0]}") from None


def _export_baselines(teacher: Path, kinds: Sequence[str], work: Path) -> dict[str, Path]:
    """Export the teacher's ONNX files (FP32, int8, fused variants) as the baselines need them.

    Returns ``{kind: folder}``, each folder holding ``model.onnx``, ``config.json`` and the tokenizer.
    """
    from ..export.onnx import export_onnx, optimize_onnx, quantize_onnx_int8
    from .runners import quiet_load

    need = [k for k in kinds if k.startswith("ort")]
    if not need:
        return {}
    model, tok = quiet_load(str(teacher))
    model = model.float()
    folders: dict[str, Path] = {}
    fp32 = work / "ort-fp32"
    export_onnx(model, tok, fp32)
    folders["ort-fp32"] = fp32

    def sibling(kind: str, src_file: Path, make) -> Path:
        d = work / kind
        d.mkdir(parents=True, exist_ok=True)
        for f in fp32.iterdir():  # config + tokenizer travel with every variant
            if f.is_file() and not f.name.endswith(".onnx") and f.name not in _NOT_MODEL_FILES:
                shutil.copy2(f, d / f.name)
        make(src_file, d / "model.onnx")
        return d

    if "ort-int8" in need:
        folders["ort-int8"] = sibling("ort-int8", fp32 / "model.onnx", quantize_onnx_int8)
    if "ort-fp32-fused" in need or "ort-int8-fused" in need:
        fused = sibling("ort-fp32-fused", fp32 / "model.onnx", lambda s, d: optimize_onnx(s, d, model.config))
        folders["ort-fp32-fused"] = fused
        if "ort-int8-fused" in need:
            folders["ort-int8-fused"] = sibling("ort-int8-fused", fused / "model.onnx", quantize_onnx_int8)
    return folders


# --------------------------------------------------------------------------------------------------
# Running


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the compactbert package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_child(job: dict, threads: int, timeout: float | None) -> dict:
    job_file = Path(job["result"]).with_suffix(".job.json")
    job_file.write_text(json.dumps(job))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "compactbert.bench.child", str(job_file)],
            env=_child_env(threads), capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    try:
        result = json.loads(Path(job["result"]).read_text())
    except (OSError, json.JSONDecodeError):
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"error": f"child exited with status {proc.returncode}: {' | '.join(tail)}"}
    if "error" in result and proc.stderr:
        result["stderr_tail"] = proc.stderr.strip().splitlines()[-5:]
    return result


def _run_inline(job: dict, threads: int) -> dict:
    from .child import run_job

    try:
        result = run_job(job)
    except UserError as e:
        return {"user_error": str(e)}
    except Exception as e:  # noqa: BLE001 - as a failed child: recorded on the model's row
        return {"error": f"{type(e).__name__}: {e}"}
    result["peak_rss_mb"] = None  # the parent's own peak would be meaningless
    return result


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


def compute_ratios(models: list[dict], baseline: str) -> dict[str, dict[str, float]]:
    """Every other model compared with the model named ``baseline``, as "times better" ratios.

    Returns:
        ``{model: {"throughput_bs32": this/base, "latency_bs1_p50": base/this, "latency_bs1_p90":
        base/this, "file_bytes": base/this, "weights_bytes": base/this, "peak_rss": base/this,
        "accuracy_delta": this - base (absolute, same unit as accuracy)}}``; a ratio whose inputs
        are missing is left out. Empty when the baseline is not among ``models``.
    """
    base = next((m for m in models if m.get("name") == baseline), None)
    if base is None:
        return {}

    def div(a, b):
        return (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 and a > 0 else None

    out: dict[str, dict[str, float]] = {}
    for m in models:
        if m["name"] == baseline:
            continue
        r = {
            "throughput_bs32": div(m.get("throughput_bs32"), base.get("throughput_bs32")),
            "latency_bs1_p50": div(base.get("latency_ms_bs1_p50"), m.get("latency_ms_bs1_p50")),
            "latency_bs1_p90": div(base.get("latency_ms_bs1_p90"), m.get("latency_ms_bs1_p90")),
            "file_bytes": div(base.get("file_bytes"), m.get("file_bytes")),
            "weights_bytes": div(base.get("weights_bytes"), m.get("weights_bytes")),
            "peak_rss": div(base.get("peak_rss_mb"), m.get("peak_rss_mb")),
        }
        if isinstance(m.get("accuracy"), (int, float)) and isinstance(base.get("accuracy"), (int, float)):
            r["accuracy_delta"] = m["accuracy"] - base["accuracy"]
        out[m["name"]] = {k: v for k, v in r.items() if v is not None}
    return out


def _unique_names(specs: list[ModelSpec]) -> None:
    seen: dict[str, int] = {}
    for s in specs:
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}-{seen[s.name]}"
        else:
            seen[s.name] = 1


def run_bench(
    compressed_dir: str | os.PathLike | Sequence[str | os.PathLike] | None,
    baseline: str | os.PathLike | None,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    threads: int = 2,
    out: str | os.PathLike | None = BENCH_FILE,
    seq_len: int = 128,
    batch_size: int = 32,
    n_warmup: int = 3,
    n_latency: int = 50,
    n_throughput: int = 10,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    split: str | None = None,
    max_eval_samples: int | None = None,
    max_seq_length: int = 128,
    isolate: bool = True,
    child_timeout: float | None = None,
    keep_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark compressed model(s) against the teacher's FP32 and ONNX Runtime int8 versions.

    Args:
        compressed_dir: a packed directory (or several), an ONNX folder/file, a run or a model
            folder; None to benchmark the baselines only.
        baseline: the FP32 teacher: a run directory, a model folder, a hub id or ``minilm-l6``.
            Needed when ``baselines`` is not empty.
        task: score every model on this task's dev split (None: no accuracy, random-token inputs).
        data: where the task's examples are (see :func:`compactbert.data.sources.load_examples`).
        threads: intra-op threads for every model (torch.set_num_threads, ORT intra_op_num_threads,
            OMP/MKL_NUM_THREADS of each child).
        out: where to write the result: a ``.json`` path, or a folder that gets ``bench.json``;
            None writes nothing.
        seq_len: tokens per timing row (all real tokens, no padding).
        batch_size: rows of the throughput batch (the ``throughput_bs32`` key keeps its name).
        n_warmup: untimed calls before each timing.
        n_latency: timed batch-1 calls (p50/p90 over these).
        n_throughput: timed full-batch calls.
        baselines: which teacher variants to run, from :data:`BASELINE_KINDS`
            (default ``torch-fp32``, ``ort-fp32``, ``ort-int8``).
        split: the evaluation split (default: the task's first).
        max_eval_samples: score on a fixed random subset of this many dev examples.
        max_seq_length: truncation of the dev examples for accuracy.
        isolate: run each model in a fresh child process (needed for meaningful peak memory; with
            False, ``peak_rss_mb`` is null).
        child_timeout: seconds before a child is stopped (None: no limit).
        keep_dir: keep the exported ONNX files and inputs in this folder (default: a temporary one).
        progress: print one line per model as it is measured.

    Returns:
        The bench.json content: ``version``, ``date``, ``task``, ``split``, ``n_eval``, ``threads``,
        ``seq_len``, ``batch_size``, ``n_warmup``, ``n_latency``, ``n_throughput``, ``inputs``
        (how the timing rows were made), ``isolated``, ``machine``, ``models`` (one dict per model:
        ``name``, ``kind``, ``role``, ``path``, ``latency_ms_bs1_p50``, ``latency_ms_bs1_p90``,
        ``latency_ms_bs1_mean``, ``throughput_bs32``, ``ms_per_batch_p50``, ``peak_rss_mb``,
        ``rss_before_load_mb``, ``rss_after_load_mb``, ``load_s``, ``file_bytes``,
        ``weights_bytes``, ``accuracy``, ``metric``, ``metrics``, ``agreement_vs_fp32``,
        ``kernels``, and ``error`` when it failed) and ``ratios``.

    Raises:
        UserError: a path that is not a model, an unknown task or baseline kind, settings out of
            range, no baseline where one is needed, a compressed model that fails to load.
    """
    import numpy as np

    from ..data.tasks import compute_metrics, get_task
    from .inputs import eval_batches, save_inputs, timing_batch
    from .machine import machine_info

    # ---- check the inputs before any work ----
    threads = _check_positive_int(threads, "--threads")
    seq_len = _check_positive_int(seq_len, "sequence length")
    if seq_len < 4:
        raise UserError(f"sequence length {seq_len} is too short; give at least 4 (special tokens + text), e.g. 128")
    batch_size = _check_positive_int(batch_size, "batch size")
    for value, what in ((n_latency, "n_latency"), (n_throughput, "n_throughput")):
        _check_positive_int(value, what)
    if isinstance(n_warmup, bool) or not isinstance(n_warmup, int) or n_warmup < 0:
        raise UserError(f"n_warmup must be a non-negative integer, got {n_warmup!r}")
    baselines = list(dict.fromkeys(baselines or ()))
    for b in baselines:
        if b not in BASELINE_KINDS:
            raise UserError(f"unknown baseline {b!r}{did_you_mean(b, BASELINE_KINDS)}; valid: {', '.join(BASELINE_KINDS)}")
    if baselines and baseline is None:
        raise UserError("no --baseline given: name the FP32 teacher (a run directory, a model folder or minilm-l6)")
    if compressed_dir is None:
        paths: list = []
    elif isinstance(compressed_dir, (str, os.PathLike)):
        paths = [compressed_dir]
    else:
        paths = list(compressed_dir)
    specs = [_spec_for_compressed(p) for p in paths]
    if not specs and not baselines:
        raise UserError("nothing to benchmark: give a compressed model directory and/or baselines")
    spec = get_task(task) if task is not None else None
    out_path = None
    if out is not None:
        out_path = Path(out)
        if out_path.is_dir() or out_path.suffix != ".json":
            out_path = out_path / BENCH_FILE
        if out_path.is_dir():
            raise UserError(f"--out {str(out_path)!r} is a directory; expected a .json file or a folder for bench.json")
        parent = _nearest_existing(out_path.parent)
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UserError(f"cannot write {str(out_path)!r}: {str(parent)!r} is not a writable directory")
    examples = []
    split_name = None
    if spec is not None:
        from ..data.sources import load_examples

        split_name = split or spec.eval_splits[0]
        examples = load_examples(spec, split_name, data, max_eval_samples, 0)

    console = _console() if progress else None
    tmp = None
    if keep_dir is not None:
        work = Path(keep_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="compactbert-bench-")
        work = Path(tmp.name)
    try:
        # ---- the baselines, derived from the teacher ----
        if baselines:
            teacher = _teacher_folder(baseline, spec, work)
            if spec is not None:
                n_out = _num_labels(teacher)
                if n_out is not None and n_out != spec.num_labels:
                    raise UserError(
                        f"baseline {str(baseline)!r} has {n_out} outputs but task {spec.name} needs "
                        f"{spec.num_labels}; give the teacher fine-tuned on this task"
                    )
            if console:
                console.print(f"[dim]exporting the teacher to ONNX in {work} ...[/dim]")
            onnx_dirs = _export_baselines(teacher, baselines, work)
            for b in baselines:
                if b == "torch-fp32":
                    specs.append(ModelSpec(FP32_BASELINE, "torch-fp32", teacher, teacher, teacher, "baseline"))
                elif b == "torch-int8":
                    specs.append(ModelSpec("teacher-torch-int8", "torch-int8", teacher, teacher, teacher, "baseline"))
                else:
                    d = onnx_dirs[b]
                    specs.append(ModelSpec(f"teacher-{b}", b, d / "model.onnx", d, teacher, "baseline"))
        _unique_names(specs)

        # ---- inputs, per tokenizer ----
        texts = [(e.text_a, e.text_b) for e in examples] or None
        input_files: dict[str, tuple[Path, list, list]] = {}
        labels: list = []
        for s in specs:
            key = str(s.tokenizer_dir.resolve())
            if key in input_files:
                continue
            tok = _load_tokenizer(s.tokenizer_dir, s.kind)
            timing = timing_batch(tok, texts, max(batch_size, 8), seq_len, seed=0)
            evals, order = [], []
            if examples:
                evals, order, labels = eval_batches(tok, examples, max_seq_length, batch_size)
            f = work / f"inputs-{len(input_files)}.npz"
            save_inputs(f, timing, evals)
            input_files[key] = (f, order, evals)

        # ---- measure each model ----
        results: list[dict[str, Any]] = []
        preds: dict[str, np.ndarray] = {}
        for i, s in enumerate(specs, start=1):
            f, order, evals = input_files[str(s.tokenizer_dir.resolve())]
            if console:
                console.print(f"[{i}/{len(specs)}] {s.name} ({s.kind}) ...")
            job = {
                "kind": s.kind, "path": str(s.path), "threads": threads, "inputs": str(f),
                "batch_size": batch_size, "n_warmup": n_warmup, "n_latency": n_latency,
                "n_throughput": n_throughput, "result": str(work / f"result-{i}.json"),
                "logits": str(work / f"logits-{i}.npy") if evals else None,
            }
            r = _run_child(job, threads, child_timeout) if isolate else _run_inline(job, threads)
            if "user_error" in r:
                raise UserError(f"{s.name}: {r['user_error']}")
            file_bytes, weights_bytes = model_bytes(s.files)
            entry: dict[str, Any] = {
                "name": s.name, "kind": s.kind, "role": s.role, "path": str(s.files),
                "latency_ms_bs1_p50": r.get("latency_ms_bs1_p50"), "latency_ms_bs1_p90": r.get("latency_ms_bs1_p90"),
                "latency_ms_bs1_mean": r.get("latency_ms_bs1_mean"), "throughput_bs32": r.get("throughput_bs32"),
                "ms_per_batch_p50": r.get("ms_per_batch_p50"), "peak_rss_mb": r.get("peak_rss_mb"),
                "rss_before_load_mb": r.get("rss_before_load_mb"), "rss_after_load_mb": r.get("rss_after_load_mb"),
                "load_s": r.get("load_s"), "file_bytes": file_bytes, "weights_bytes": weights_bytes,
                "accuracy": None, "metric": None, "metrics": None, "agreement_vs_fp32": None,
                "kernels": r.get("kernels"),
            }
            if console and "error" not in r:
                console.print(
                    f"[dim]  bs1 p50 {r['latency_ms_bs1_p50']:.2f} ms, {r['throughput_bs32']:.1f} seq/s at batch "
                    f"{batch_size}, peak RSS {_fmt(r.get('peak_rss_mb'), '.0f')} MB[/dim]"
                )
            if "error" in r:
                entry["error"] = r["error"]
                if console:
                    console.print(f"[red]  failed: {r['error']}[/red]")
            elif spec is not None and job["logits"] and Path(job["logits"]).is_file():
                from ..data.batching import restore_order

                logits = restore_order(order, np.load(job["logits"]))  # (n, num_labels)
                if logits.shape[-1] != spec.num_labels:
                    entry["error"] = f"{logits.shape[-1]} outputs but task {spec.name} needs {spec.num_labels}"
                else:
                    metrics = compute_metrics(spec, logits, labels)
                    metric = "accuracy" if "accuracy" in metrics else spec.main_metric
                    entry.update(accuracy=metrics[metric], metric=metric, metrics=metrics)
                    preds[s.name] = logits
            results.append(entry)

        if FP32_BASELINE in preds and spec is not None and not spec.is_regression:
            ref = preds[FP32_BASELINE].argmax(-1)
            for entry in results:
                if entry["name"] in preds:
                    entry["agreement_vs_fp32"] = float((preds[entry["name"]].argmax(-1) == ref).mean())
    finally:
        if tmp is not None:
            tmp.cleanup()

    inputs_desc = (
        f"timing rows: {seq_len} real tokens each, no padding, cut from the {spec.name} {split_name} text"
        if spec is not None else f"timing rows: {seq_len} random non-special token ids each, no padding"
    )
    if spec is not None:
        inputs_desc += f"; accuracy: {len(examples)} {split_name} examples, length-sorted batches of {batch_size}, padded per batch"
    result: dict[str, Any] = {
        "version": BENCH_VERSION,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "task": spec.name if spec is not None else None,
        "split": split_name,
        "n_eval": len(examples) if spec is not None else None,
        "threads": threads,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "n_warmup": n_warmup,
        "n_latency": n_latency,
        "n_throughput": n_throughput,
        "inputs": inputs_desc,
        "isolated": bool(isolate),
        "machine": machine_info(threads),
        "models": results,
        "ratios": {
            "baselines": {"fp32": FP32_BASELINE, "ort_int8": ORT_INT8_BASELINE},
            "vs_fp32": compute_ratios(results, FP32_BASELINE),
            "vs_ort_int8": compute_ratios(results, ORT_INT8_BASELINE),
        },
    }
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out_path.with_suffix(".json.tmp")
        tmp_out.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp_out, out_path)
    return result


def _num_labels(folder: Path) -> int | None:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if "num_labels" in cfg:
        return int(cfg["num_labels"])
    if isinstance(cfg.get("id2label"), dict):
        return len(cfg["id2label"])
    return 2  # transformers' default


# --------------------------------------------------------------------------------------------------
# Display


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}" if n / div < 100 else f"{n / div:.0f} {unit}"
    return f"{n} B"


def _fmt(x: Any, spec: str, suffix: str = "") -> str:
    return "-" if not isinstance(x, (int, float)) else format(x, spec) + suffix


def print_bench_table(result: dict[str, Any], console=None, path: str | os.PathLike | None = None) -> None:
    """Print the models side by side (rich table), the kernels each used and where the JSON is."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        import sys as _sys

        # Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
        console = Console(soft_wrap=True, width=None if _sys.stdout.isatty() else 160)
    m = result.get("machine") or {}
    from .machine import flags_summary

    title = (
        f"bench: {result.get('threads')} threads, seq {result.get('seq_len')}, batch {result.get('batch_size')}"
        + (f", {result['task']} {result.get('split')} (n={result.get('n_eval')})" if result.get("task") else "")
        + f" - {m.get('cpu', '?')} [{flags_summary(m)}]"
    )
    vs32 = (result.get("ratios") or {}).get("vs_fp32", {})
    vsq = (result.get("ratios") or {}).get("vs_ort_int8", {})
    table = Table(title=title, title_justify="left")
    for col, just in (
        ("model", "left"), ("kind", "left"), ("bs1 p50 ms", "right"), ("bs1 p90 ms", "right"),
        (f"bs{result.get('batch_size', 32)} seq/s", "right"), ("x fp32", "right"), ("x ort-int8", "right"), ("peak RSS MB", "right"),
        ("size", "right"), ("x smaller", "right"), ("accuracy", "right"),
    ):
        table.add_column(col, justify=just)
    for e in result.get("models", []):
        acc = e.get("accuracy")
        acc_s = "-" if acc is None else f"{100 * acc:.2f}" + ("" if e.get("metric") in (None, "accuracy") else f" ({e['metric']})")
        r32, rq = vs32.get(e["name"], {}), vsq.get(e["name"], {})
        table.add_row(
            e["name"] + (" [red](failed)[/red]" if e.get("error") else ""), e.get("kind", ""),
            _fmt(e.get("latency_ms_bs1_p50"), ".2f"), _fmt(e.get("latency_ms_bs1_p90"), ".2f"),
            _fmt(e.get("throughput_bs32"), ".1f"), _fmt(r32.get("throughput_bs32"), ".2f", "x"),
            _fmt(rq.get("throughput_bs32"), ".2f", "x"), _fmt(e.get("peak_rss_mb"), ".0f"),
            _fmt_bytes(e.get("file_bytes")), _fmt(r32.get("file_bytes"), ".1f", "x"), acc_s,
        )
    console.print(table)
    for e in result.get("models", []):
        line = e.get("error") or e.get("kernels") or "-"
        console.print(f"  [bold]{e['name']}[/bold]: {line}", highlight=False)
    load = m.get("loadavg_1m")
    if isinstance(load, (int, float)) and m.get("logical_cpus") and load > 0.5 * m["logical_cpus"]:
        console.print(
            f"[yellow]note: the 1-minute load average was {load:.1f} on {m['logical_cpus']} CPUs when the "
            f"benchmark started; other work skews the timings[/yellow]"
        )
    if path is not None:
        console.print(f"wrote {path}")


def bench(
    path: str | os.PathLike | Sequence[str | os.PathLike] | None,
    baseline: str | os.PathLike | None = None,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    threads: int = 2,
    out: str | os.PathLike | None = BENCH_FILE,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    seq_len: int = 128,
    batch_size: int = 32,
    n_warmup: int = 3,
    n_latency: int = 50,
    n_throughput: int = 10,
    split: str | None = None,
    max_eval_samples: int | None = None,
    show: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """API verb ``compactbert.bench``: :func:`run_bench`, then the table on screen.

    Example:
        >>> r = compactbert.bench("packed/xtc", baseline="runs/teacher", task="sst2")  # doctest: +SKIP
        >>> r["ratios"]["vs_fp32"]["xtc"]["throughput_bs32"]                             # doctest: +SKIP
        6.3
    """
    result = run_bench(
        path, baseline, task=task, data=data, threads=threads, out=out, seq_len=seq_len, batch_size=batch_size,
        n_warmup=n_warmup, n_latency=n_latency, n_throughput=n_throughput, baselines=baselines, split=split,
        max_eval_samples=max_eval_samples, progress=progress,
    )
    if show:
        written = None
        if out is not None:
            written = Path(out) if Path(out).suffix == ".json" and not Path(out).is_dir() else Path(out) / BENCH_FILE
        print_bench_table(result, path=written)
    return result
