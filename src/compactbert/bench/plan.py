"""What a benchmark will measure, decided (and every input checked) before anything runs.

:func:`make_plan` checks the settings, opens every model path (:func:`compactbert.runs.open_path`)
and loads the task's examples; :func:`add_baselines` derives the teacher's variants
(:data:`BASELINE_KINDS`) into the work folder. A new baseline engine is a kind here, its export in
:func:`export_baselines` and a runner in :mod:`compactbert.bench.runners`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..errors import UserError, did_you_mean
from ..runs import MODEL, NAME, ONNX, ONNX_FILE, PACKED, RUN, nearest_existing, open_path
from .result import BENCH_FILE, FP32_BASELINE, NOT_MODEL_FILES

__all__ = ["BASELINE_KINDS", "DEFAULT_BASELINES", "ModelSpec", "BenchSettings", "BenchPlan", "make_plan", "add_baselines"]

# Baselines derived from the teacher. "ort-int8" is ONNX Runtime's quantize_dynamic on the exported
# graph ("just quantize it"); the "-fused" ones first run ORT's transformer optimizer (Attention,
# SkipLayerNorm, BiasGelu fusion), as ORT's BERT tutorials do; "torch-int8" is PyTorch dynamic int8.
BASELINE_KINDS = ("torch-fp32", "ort-fp32", "ort-int8", "torch-int8", "ort-fp32-fused", "ort-int8-fused")
DEFAULT_BASELINES = ("torch-fp32", "ort-fp32", "ort-int8")


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


@dataclass
class BenchSettings:
    """How every model is measured (see :func:`compactbert.bench.core.run_bench` for each)."""

    threads: int = D.THREADS
    seq_len: int = D.BENCH_SEQ_LEN
    batch_size: int = D.BENCH_BATCH_SIZE
    n_warmup: int = D.N_WARMUP
    n_latency: int = D.N_LATENCY
    n_throughput: int = D.N_THROUGHPUT
    max_seq_length: int = D.MAX_SEQ_LENGTH
    isolate: bool = True
    child_timeout: float | None = None

    def check(self) -> None:
        """Raise a UserError naming the first setting out of range."""
        _positive_int(self.threads, "--threads")
        _positive_int(self.seq_len, "sequence length")
        if self.seq_len < 4:
            raise UserError(f"sequence length {self.seq_len} is too short; give at least 4 (special tokens + text), e.g. 128")
        _positive_int(self.batch_size, "batch size")
        _positive_int(self.n_latency, "n_latency")
        _positive_int(self.n_throughput, "n_throughput")
        if isinstance(self.n_warmup, bool) or not isinstance(self.n_warmup, int) or self.n_warmup < 0:
            raise UserError(f"n_warmup must be a non-negative integer, got {self.n_warmup!r}")


@dataclass
class BenchPlan:
    """The models to measure, in order, and what they are measured on.

    Attributes:
        specs: the models (compressed first; the baselines are added by :func:`add_baselines`).
        settings: how they are measured.
        baseline: the FP32 teacher the baselines derive from (None: no baselines).
        baselines: the baseline kinds to derive.
        task: the task whose dev split scores every model (None: timing only).
        split: the split's name.
        examples: the scored examples.
        out_path: where ``bench.json`` goes (None: nowhere).
    """

    specs: list[ModelSpec]
    settings: BenchSettings
    baseline: str | os.PathLike | None = None
    baselines: list[str] = field(default_factory=list)
    task: Any = None
    split: str | None = None
    examples: list = field(default_factory=list)
    out_path: Path | None = None


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


def make_plan(compressed, baseline, baselines: Sequence[str], settings: BenchSettings, task: str | None = None,
              data=None, split: str | None = None, max_eval_samples: int | None = None, out=BENCH_FILE) -> BenchPlan:
    """Check every input of a benchmark and decide what it measures; nothing is run or written.

    Raises:
        UserError: a setting out of range, an unknown baseline kind, no baseline where one is
            needed, a path that is not a model, an unknown task, an output that cannot be written.
    """
    from ..data.tasks import get_task

    settings.check()
    baselines = list(dict.fromkeys(baselines or ()))
    for b in baselines:
        if b not in BASELINE_KINDS:
            raise UserError(f"unknown baseline {b!r}{did_you_mean(b, BASELINE_KINDS)}; valid: {', '.join(BASELINE_KINDS)}")
    if baselines and baseline is None:
        raise UserError("no --baseline given: name the FP32 teacher (a run directory, a model folder or minilm-l6)")
    paths = [] if compressed is None else [compressed] if isinstance(compressed, (str, os.PathLike)) else list(compressed)
    specs = [spec_for_compressed(p) for p in paths]
    if not specs and not baselines:
        raise UserError("nothing to benchmark: give a compressed model directory and/or baselines")
    plan = BenchPlan(specs, settings, baseline, baselines, get_task(task) if task is not None else None)
    plan.out_path = output_path(out)
    if plan.task is not None:
        from ..data.sources import load_examples

        plan.split = split or plan.task.eval_splits[0]
        plan.examples = load_examples(plan.task, plan.split, data, max_eval_samples, D.SUBSET_SEED)
    return plan


def output_path(out: str | os.PathLike | None) -> Path | None:
    """The ``bench.json`` path for ``out`` (a ``.json`` path, or a folder that gets ``bench.json``),
    checked to be writable; None for None."""
    if out is None:
        return None
    out_path = Path(out)
    if out_path.is_dir() or out_path.suffix != ".json":
        out_path = out_path / BENCH_FILE
    if out_path.is_dir():
        raise UserError(f"--out {str(out_path)!r} is a directory; expected a .json file or a folder for bench.json")
    parent = nearest_existing(out_path.parent)
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {str(out_path)!r}: {str(parent)!r} is not a writable directory")
    return out_path


def spec_for_compressed(path: str | os.PathLike) -> ModelSpec:
    """The :class:`ModelSpec` of a model to benchmark: a packed folder, an ONNX file/folder, a run or a
    model folder."""
    t = open_path(path)
    name = t.path.stem if t.path.is_file() else t.path.name
    if t.kind == NAME:
        raise UserError(
            f"model to benchmark {t.given!r} does not exist; expected a packed directory "
            f"(compactbert export --format packed), an ONNX folder or file, or a run directory"
        )
    if t.kind == ONNX and t.path.is_file():
        return ModelSpec(name, "ort", t.path, t.path, t.path.parent)
    if t.kind == ONNX:
        return ModelSpec(name, "ort", t.path / ONNX_FILE, t.path, t.path)
    if t.kind == PACKED:
        return ModelSpec(name, "packed", t.path, t.path, t.path)
    if t.kind in (RUN, MODEL):
        model = t.model_dir()
        return ModelSpec(name, "torch-fp32", model, model, model)
    if t.path.is_file():
        raise UserError(f"model to benchmark {t.given!r} is a file but not .onnx; give a model directory")
    raise UserError(
        f"{t.given!r} is not a model directory (no manifest.json, model.onnx, run.json or config.json); "
        f"expected a packed directory from 'compactbert export', an ONNX folder, a run or a model folder"
    )


def add_baselines(plan: BenchPlan, work: Path, console=None) -> None:
    """Derive the teacher's baseline variants into ``work`` and append them to ``plan.specs``."""
    if not plan.baselines:
        return
    teacher = teacher_folder(plan.baseline, plan.task, work)
    if plan.task is not None:
        from ..loading import config_json, config_num_labels

        cfg = config_json(teacher)
        n_out = config_num_labels(cfg) if cfg is not None else None
        if n_out is not None and n_out != plan.task.num_labels:
            raise UserError(
                f"baseline {str(plan.baseline)!r} has {n_out} outputs but task {plan.task.name} needs "
                f"{plan.task.num_labels}; give the teacher fine-tuned on this task"
            )
    if console:
        console.print(f"[dim]exporting the teacher to ONNX in {work} ...[/dim]")
    onnx_dirs = export_baselines(teacher, plan.baselines, work)
    for b in plan.baselines:
        if b == "torch-fp32":
            plan.specs.append(ModelSpec(FP32_BASELINE, "torch-fp32", teacher, teacher, teacher, "baseline"))
        elif b == "torch-int8":
            plan.specs.append(ModelSpec("teacher-torch-int8", "torch-int8", teacher, teacher, teacher, "baseline"))
        else:
            d = onnx_dirs[b]
            plan.specs.append(ModelSpec(f"teacher-{b}", b, d / ONNX_FILE, d, teacher, "baseline"))


def teacher_folder(baseline: str | os.PathLike, task, work: Path) -> Path:
    """A local folder holding the teacher: a run's model/, a model folder with a head, or (hub id,
    alias, encoder without a head) a copy with a head for the task saved into the work folder."""
    from ..loading import config_json, has_classification_head, load_for_task, quiet_transformers
    from ..models import resolve_model

    t = open_path(baseline)
    if t.kind == RUN:
        return t.model_dir()
    resolved = Path(resolve_model(str(baseline)))
    if resolved.is_dir() and (resolved / "model.safetensors").is_file() and has_classification_head(config_json(resolved) or {}):
        return resolved
    # A hub id, or an encoder without a classification head (the embedded MiniLM): load it with a
    # (new) head for the task and save a local copy for the child processes.
    from ..data.tasks import get_task

    net, tok = load_for_task(str(baseline), task if task is not None else get_task("sst2"))
    out = work / "teacher"
    with quiet_transformers():
        net.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    return out


def export_baselines(teacher: Path, kinds: Sequence[str], work: Path) -> dict[str, Path]:
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
            if f.is_file() and not f.name.endswith(".onnx") and f.name not in NOT_MODEL_FILES:
                shutil.copy2(f, d / f.name)
        make(src_file, d / ONNX_FILE)
        return d

    if "ort-int8" in need:
        folders["ort-int8"] = sibling("ort-int8", fp32 / ONNX_FILE, quantize_onnx_int8)
    if "ort-fp32-fused" in need or "ort-int8-fused" in need:
        fused = sibling("ort-fp32-fused", fp32 / ONNX_FILE, lambda s, d: optimize_onnx(s, d, model.config))
        folders["ort-fp32-fused"] = fused
        if "ort-int8-fused" in need:
            folders["ort-int8-fused"] = sibling("ort-int8-fused", fused / ONNX_FILE, quantize_onnx_int8)
    return folders


def unique_names(specs: list[ModelSpec]) -> None:
    """Rename repeated row names in place: ``a``, ``a-2``, ``a-3``."""
    seen: dict[str, int] = {}
    for s in specs:
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}-{seen[s.name]}"
        else:
            seen[s.name] = 1
