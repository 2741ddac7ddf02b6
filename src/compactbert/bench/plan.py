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
from .result import BENCH_FILE, FP32_BASELINE, NOT_MODEL_FILES, RUNTIME_BASELINE

__all__ = ["BASELINE_KINDS", "DEFAULT_BASELINES", "ModelSpec", "BenchSettings", "BenchPlan", "make_plan", "add_baselines",
           "missing_engine", "CALIBRATION_SIZE"]

# Baselines derived from the teacher: what a user would run instead of compressing.
# * "torch-fp32" / "torch-bf16": the teacher in PyTorch eager, FP32 and cast to bf16 (labelled
#   "emulated" on a CPU without native bf16, where it is measured anyway); "torch-int8": PyTorch
#   dynamic int8.
# * "ort-int8": ONNX Runtime's quantize_dynamic on the exported graph ("just quantize it"); the
#   "-fused" ones first run ORT's transformer optimizer (Attention, SkipLayerNorm, BiasGelu fusion),
#   as ORT's BERT tutorials do.
# * "ov-fp32" (precision forced to f32), "ov-default" (OpenVINO's own choice: bf16 on CPUs with native bf16 (AMX or AVX512-BF16), f32
#   elsewhere), "ov-int8" (NNCF post-training int8, calibrated on CALIBRATION_SIZE training
#   examples): need the optional `bench` extra (pip install compactbert[bench]); without it their
#   rows say so and are skipped.
# * "runtime": the teacher packed and run through compactbert's own runtime, so a compressed model's
#   gain is split into the compression's and the runtime's (the "x teacher-runtime" column).
BASELINE_KINDS = (
    "torch-fp32", "torch-bf16", "ort-fp32", "ort-int8", "torch-int8", "ort-fp32-fused", "ort-int8-fused",
    "ov-fp32", "ov-default", "ov-int8", "runtime",
)
DEFAULT_BASELINES = ("torch-fp32", "torch-bf16", "ort-int8", "ort-int8-fused", "ov-fp32", "ov-default", "ov-int8",
                     "runtime")
# Row names of the baselines (kinds not listed are "teacher-<kind>").
BASELINE_NAMES = {"torch-fp32": FP32_BASELINE, "runtime": RUNTIME_BASELINE}
CALIBRATION_SIZE = 300  # training examples NNCF calibrates ov-int8 on
OV_FILE = "model.xml"  # an OpenVINO IR baseline's graph (weights in model.bin beside it)
# The optional packages each engine needs, and how to get them.
ENGINE_PACKAGES = {"ov": ("openvino",), "ov-int8": ("openvino", "nncf")}
BENCH_EXTRA_HINT = "pip install 'compactbert[bench]'"


def missing_engine(kind: str) -> str | None:
    """Why the engine of baseline ``kind`` cannot run here (an optional package is not installed),
    or None when it can."""
    import importlib.util

    need = ENGINE_PACKAGES.get(kind) or (ENGINE_PACKAGES["ov"] if kind.startswith("ov") else ())
    absent = [m for m in need if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    return f"skipped: {' and '.join(absent)} not installed ({BENCH_EXTRA_HINT})"


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
        skip: why the model is not measured (an optional engine is not installed), or None.
    """

    name: str
    kind: str
    path: Path
    files: Path
    tokenizer_dir: Path
    role: str = "compressed"
    skip: str | None = None


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
    rounds: int = D.BENCH_ROUNDS
    clock: str = "wall"
    backends: tuple[str, ...] = ("compactbert",)

    def check(self) -> None:
        """Raise a UserError naming the first setting out of range."""
        _positive_int(self.threads, "--threads")
        _positive_int(self.rounds, "--rounds")
        if self.clock not in ("wall", "cpu"):
            raise UserError(f"--clock {self.clock!r} is not valid; valid: wall, cpu")
        from ..runtime.engines import BACKENDS

        if not self.backends:
            raise UserError(f"--backends is empty; valid: a comma-separated list of {', '.join(BACKENDS)}")
        for b in self.backends:
            if b not in BACKENDS:
                raise UserError(f"--backends: {b!r} is not valid{did_you_mean(b, BACKENDS)}; valid: {', '.join(BACKENDS)}")
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
        data: where the task's examples are (the calibration set of ``ov-int8`` comes from its
            training split).
    """

    specs: list[ModelSpec]
    settings: BenchSettings
    baseline: str | os.PathLike | None = None
    baselines: list[str] = field(default_factory=list)
    task: Any = None
    split: str | None = None
    examples: list = field(default_factory=list)
    out_path: Path | None = None
    data: Any = None


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
    specs = on_backends(specs, settings.backends)
    if not specs and not baselines:
        raise UserError("nothing to benchmark: give a compressed model directory and/or baselines")
    plan = BenchPlan(specs, settings, baseline, baselines, get_task(task) if task is not None else None)
    plan.out_path = output_path(out)
    plan.data = data
    if plan.task is not None:
        from ..data.sources import load_examples

        plan.split = split or plan.task.eval_splits[0]
        plan.examples = load_examples(plan.task, plan.split, data, max_eval_samples, D.SUBSET_SEED)
    return plan


def on_backends(specs: list[ModelSpec], backends: Sequence[str]) -> list[ModelSpec]:
    """Each packed model once per backend (``compactbert`` keeps its name and kind ``packed``; others
    are named ``NAME@BACKEND``, kind ``packed-BACKEND``); an engine that is not installed gives a
    skipped row. Other models are kept as they are."""
    from ..runtime.engines import available_engines

    out: list[ModelSpec] = []
    for spec in specs:
        if spec.kind != "packed":
            out.append(spec)
            continue
        for b in dict.fromkeys(backends):
            if b == "compactbert":
                out.append(spec)
                continue
            skip = None
            if b in ("onnxruntime", "openvino") and b not in available_engines():
                skip = f"skipped: {b} not installed ({BENCH_EXTRA_HINT})"
            out.append(ModelSpec(f"{spec.name}@{b}", f"packed-{b}", spec.path, spec.files, spec.tokenizer_dir,
                                 spec.role, skip))
    return out


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


# Folder / file names that say nothing about the model (what compress and export write inside a
# run); a row is named after the folder above them instead.
GENERIC_NAMES = frozenset({"packed", "model", "onnx", "export"})


def spec_for_compressed(path: str | os.PathLike) -> ModelSpec:
    """The :class:`ModelSpec` of a model to benchmark: a packed folder, an ONNX file/folder, a run or a
    model folder."""
    t = open_path(path)
    name = t.path.stem if t.path.is_file() else t.path.name
    if name in GENERIC_NAMES and t.path.resolve().parent.name:  # runs/xtc-binary/packed -> "xtc-binary"
        name = t.path.resolve().parent.name
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
    """Derive the teacher's baseline variants into ``work`` and append them to ``plan.specs``
    (a variant whose engine is not installed gets a row that says so, see :func:`missing_engine`)."""
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
    skips = {b: missing_engine(b) for b in plan.baselines}
    runnable = [b for b in plan.baselines if skips[b] is None]
    if console:
        console.print(f"[dim]deriving the teacher's baselines ({', '.join(runnable) or 'none'}) in {work} ...[/dim]")
    folders = export_baselines(teacher, runnable, work, calibration_feeds(plan, teacher, runnable))
    for b in plan.baselines:
        name = BASELINE_NAMES.get(b, f"teacher-{b}")
        if skips[b] is not None:
            plan.specs.append(ModelSpec(name, b, teacher, teacher, teacher, "baseline", skip=skips[b]))
        elif b in ("torch-fp32", "torch-bf16", "torch-int8"):
            plan.specs.append(ModelSpec(name, b, teacher, teacher, teacher, "baseline"))
        elif b == "runtime":
            d = folders[b]
            plan.specs.append(ModelSpec(name, "packed", d, d, d, "baseline"))
        else:
            d = folders[b]
            model_file = d / (OV_FILE if b.startswith("ov") else ONNX_FILE)
            plan.specs.append(ModelSpec(name, b, model_file, d, teacher, "baseline"))


def calibration_feeds(plan: BenchPlan, teacher: Path, kinds: Sequence[str]) -> list[dict]:
    """The ``ov-int8`` calibration set: up to :data:`CALIBRATION_SIZE` training examples of the task
    (``--data`` itself when it is one file), one feed each, tokenized by the teacher's tokenizer;
    without a task, the random-token timing rows of the teacher. Empty when ``ov-int8`` is not asked."""
    if "ov-int8" not in kinds:
        return []
    from .inputs import eval_batches, timing_batch
    from .runners import quiet_load

    _, tok = quiet_load(str(teacher))
    if plan.task is None:
        rows = timing_batch(tok, None, 64, plan.settings.seq_len, seed=1)
        return [{k: v[i : i + 1] for k, v in rows.items()} for i in range(64)]
    from .. import defaults as D
    from ..data.sources import load_examples

    examples = load_examples(plan.task, "train", plan.data, CALIBRATION_SIZE, D.SUBSET_SEED)
    batches, _, _ = eval_batches(tok, examples, plan.settings.max_seq_length, 1)
    return batches


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


def export_baselines(teacher: Path, kinds: Sequence[str], work: Path, calibration: Sequence[dict] = ()) -> dict[str, Path]:
    """Export the teacher's variants the baselines need: ONNX files (FP32, int8, fused), OpenVINO IR
    (FP32, NNCF int8 calibrated on the ``calibration`` feeds) and the teacher packed for the runtime.

    Returns ``{kind: folder}``; an ONNX folder holds ``model.onnx``, an OpenVINO one ``model.xml``
    (+ ``.bin``), each with ``config.json`` and the tokenizer; ``runtime`` is a packed directory.
    """
    from ..export.onnx import export_onnx, optimize_onnx, quantize_onnx_int8
    from .runners import quiet_load

    need = [k for k in kinds if k.startswith(("ort", "ov")) or k == "runtime"]
    if not need:
        return {}
    model, tok = quiet_load(str(teacher))
    model = model.float()
    folders: dict[str, Path] = {}
    if "runtime" in need:
        from ..export.pack import export_packed

        folders["runtime"] = work / "teacher-packed"
        export_packed(model, tok, folders["runtime"])
    if not any(k.startswith(("ort", "ov")) for k in need):
        return folders
    fp32 = work / "ort-fp32"
    export_onnx(model, tok, fp32)
    folders["ort-fp32"] = fp32

    def sibling(kind: str, src_file: Path, make) -> Path:
        d = work / kind
        d.mkdir(parents=True, exist_ok=True)
        for f in fp32.iterdir():  # config + tokenizer travel with every variant
            if f.is_file() and not f.name.endswith(".onnx") and f.name not in NOT_MODEL_FILES:
                shutil.copy2(f, d / f.name)
        make(src_file, d / (OV_FILE if kind.startswith("ov") else ONNX_FILE))
        return d

    if "ort-int8" in need:
        folders["ort-int8"] = sibling("ort-int8", fp32 / ONNX_FILE, quantize_onnx_int8)
    if "ort-fp32-fused" in need or "ort-int8-fused" in need:
        fused = sibling("ort-fp32-fused", fp32 / ONNX_FILE, lambda s, d: optimize_onnx(s, d, model.config))
        folders["ort-fp32-fused"] = fused
        if "ort-int8-fused" in need:
            folders["ort-int8-fused"] = sibling("ort-int8-fused", fused / ONNX_FILE, quantize_onnx_int8)
    if "ov-fp32" in need or "ov-default" in need:
        folders["ov-fp32"] = folders["ov-default"] = sibling("ov-fp32", fp32 / ONNX_FILE, openvino_ir)
    if "ov-int8" in need:
        folders["ov-int8"] = sibling("ov-int8", fp32 / ONNX_FILE, lambda s, d: openvino_int8_ir(s, d, calibration))
    return folders


def openvino_ir(onnx_file: Path, xml: Path) -> Path:
    """The ONNX model as OpenVINO IR (``model.xml`` + ``model.bin``), weights kept in FP32."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)
    return xml


def openvino_int8_ir(onnx_file: Path, xml: Path, calibration: Sequence[dict]) -> Path:
    """NNCF post-training int8 quantization of the ONNX model (transformer preset, calibrated on the
    ``calibration`` feeds: dicts of int64 ``(1, seq)`` arrays), saved as OpenVINO IR."""
    import contextlib
    import io
    import logging

    import nncf
    import openvino as ov

    if not calibration:
        raise ValueError("ov-int8 needs calibration feeds")
    nncf.set_log_level(logging.ERROR)
    model = ov.convert_model(str(onnx_file))
    names = [p.get_any_name() for p in model.inputs]
    data = nncf.Dataset(list(calibration), lambda feed: {n: feed[n] for n in names if n in feed})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        quantized = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration))
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    return xml


def unique_names(specs: list[ModelSpec]) -> None:
    """Rename repeated row names in place: ``a``, ``a-2``, ``a-3``."""
    seen: dict[str, int] = {}
    for s in specs:
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}-{seen[s.name]}"
        else:
            seen[s.name] = 1
