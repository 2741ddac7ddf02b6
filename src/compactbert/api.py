"""The verbs of the command line as Python functions. The CLI only parses arguments and calls these.

Example:
    >>> import compactbert
    >>> run = compactbert.finetune("minilm-l6", task="rt", out="runs/teacher", epochs=1)  # doctest: +SKIP
    >>> compactbert.evaluate(run)["metrics"]                                               # doctest: +SKIP
    {'accuracy': 0.78}

Run directory of ``finetune`` (see also :mod:`compactbert.train.loop`)::

    run.json        marker and summary: kind, task, model, version, status, best step/metric
    config.yaml     the resolved arguments (what ``--resume`` must match)
    model/          the best checkpoint (config.json, model.safetensors, tokenizer files)
    checkpoint/     the latest training state, for --resume
    metrics.jsonl   one JSON line per evaluation
    eval.json       {"task", "split", "n", "metrics"} of model/ on the task's dev split
    tensorboard/    with --tensorboard
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
EVAL_FILE = "eval.json"
# What a run writes; --overwrite deletes these (and only these) from the output directory.
RUN_ARTIFACTS = (
    RUN_FILE, CONFIG_FILE, "recipe.yaml", "metrics.jsonl", EVAL_FILE, "model", "checkpoint", "tensorboard",
    "stages", "size.json",
)
# Settings that decide the batches and the optimisation: a resumed run must use the same ones.
_RESUME_KEYS = (
    "model", "task", "data", "epochs", "max_steps", "lr", "batch_size", "max_seq_length", "max_train_samples",
    "max_eval_samples", "seed", "warmup_ratio", "weight_decay",
)
# Examples kept by --max-train-samples / --max-eval-samples: one fixed subset whatever the seed, so
# runs with different seeds (and later compression runs) see the same data.
SUBSET_SEED = 0
# Tensors without a quantizer are stored in fp16 by `export` (and counted so by `size`).
PACKED_FLOAT_BITS = 16


# --------------------------------------------------------------------------------------------------
# Run directories


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a compactbert run directory (it has ``run.json``)."""
    return (Path(path) / RUN_FILE).is_file()


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` and ``config.yaml`` of a run directory as one dict (``{"config": {...}, ...}``)."""
    import yaml

    path = Path(path)
    try:
        info = json.loads((path / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path / RUN_FILE}: {e}") from None
    cfg_path = path / CONFIG_FILE
    if cfg_path.is_file():
        try:
            info["config"] = yaml.safe_load(cfg_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"cannot read {cfg_path}: {str(e).splitlines()[0]}") from None
    info.setdefault("config", {})
    return info


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> str:
    """Decide what to do with an output directory, without writing anything.

    Returns:
        ``"fresh"`` (missing or empty), ``"resume"`` (a run, and ``resume``) or ``"overwrite"``.

    Raises:
        UserError: ``out`` is a file; it exists and is not a run (needs ``overwrite``); it is a
            run and neither ``resume`` nor ``overwrite`` was given; it cannot be created.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {str(out)!r} is a file; expected a directory for the run")
    if out.is_dir():
        if is_run_dir(out):
            if overwrite:
                return "overwrite"
            if resume:
                return "resume"
            raise UserError(
                f"output directory {str(out)!r} already holds a compactbert run; pass --resume to continue it "
                f"or --overwrite to start it again"
            )
        try:
            empty = not any(out.iterdir())
        except OSError as e:
            raise UserError(f"cannot read output directory {str(out)!r}: {e.strerror or e}") from None
        if empty:
            return "fresh"
        if overwrite:
            return "overwrite"
        raise UserError(
            f"output directory {str(out)!r} exists and is not a compactbert run (no {RUN_FILE}); "
            f"choose a new directory or pass --overwrite"
        )
    base = _nearest_existing(out)
    if not base.is_dir():
        raise UserError(f"cannot create output directory {str(out)!r}: {str(base)!r} is a file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"cannot create output directory {str(out)!r}: {str(base)!r} is not writable")
    return "fresh"


def init_run_dir(out: str | os.PathLike, mode: str) -> Path:
    """Create ``out`` (or clear a previous run's files from it for ``"overwrite"``) and check it is writable.

    Only compactbert's own files (:data:`RUN_ARTIFACTS`) are deleted; anything else stays.
    """
    from .train.checkpoint import fsync_dir

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"output directory {str(out)!r} is not writable: {e.strerror or e}") from None
    if mode == "overwrite":
        for name in RUN_ARTIFACTS:
            for p in [out / name, *out.glob(f"{name}.tmp-*"), *out.glob(f"{name}.old-*")]:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        fsync_dir(out)
    return out


def start_run(out: Path, mode: str, info: dict[str, Any], config: dict[str, Any], state, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Create (or reopen, for ``mode == "resume"``) a run directory on the main process.

    A new run gets ``run.json`` (``info``), ``config.yaml`` (``config``) and the ``extra`` text files;
    a resumed run keeps its files and is marked running again. Returns the run's ``info``.
    """
    if state.is_main_process:
        init_run_dir(out, mode)
        if mode == "resume":
            info = {**read_run(out), "status": "running"}
            info.pop("config", None)
            _write_run_files(out, info, None)
        else:
            _write_run_files(out, info, config)
            from .train.checkpoint import atomic_write_text

            for name, text in (extra or {}).items():
                atomic_write_text(out / name, text)
    state.wait_for_everyone()
    return info


def _write_run_files(out: Path, info: dict[str, Any], config: dict[str, Any] | None) -> None:
    import yaml

    from .train.checkpoint import atomic_write_json, atomic_write_text

    if config is not None:
        atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    atomic_write_json(out / RUN_FILE, info)


def _check_resume_config(out: Path, config: dict[str, Any]) -> None:
    saved = read_run(out)["config"]
    diff = [k for k in _RESUME_KEYS if k in saved and saved[k] != config.get(k)]
    if diff:
        was = ", ".join(f"{k}={saved[k]!r}" for k in diff)
        now = ", ".join(f"{k}={config.get(k)!r}" for k in diff)
        raise UserError(
            f"cannot --resume {str(out)!r} with different settings: it was started with {was}, got {now}; "
            f"pass the same settings, or --overwrite to start again"
        )


# --------------------------------------------------------------------------------------------------
# Models


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load/save progress bars and 'newly initialized weights' warnings."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _fix_pad_token(model, tokenizer) -> None:
    # Some tokenizers (GPT-style BPE) have no pad token; batches need one, and RoBERTa-style models
    # derive position ids from it, so the model's config must agree with the tokenizer.
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.sep_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


def model_source(model: str | os.PathLike) -> str:
    """A model folder, hub id or alias for ``model``; a run directory stands for its ``model/``."""
    p = Path(model).expanduser()
    if p.is_dir() and is_run_dir(p):
        if not (p / "model").is_dir():
            raise UserError(f"run {str(model)!r} has no model/ yet (it has not finished an evaluation); resume or rerun it")
        return str(p / "model")
    return str(model)


def load_for_task(model: str | os.PathLike, task) -> tuple[Any, Any]:
    """Load a model with a classification (or regression) head sized for ``task``, and its tokenizer.

    ``model`` is a local folder, a run directory (its ``model/``), a hub id or the alias
    ``minilm-l6`` (see :func:`compactbert.models.resolve_model`). A head of the wrong size is
    replaced by a new one. Weights are read from safetensors only.

    Raises:
        UserError: the model cannot be found or loaded.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .data.tasks import get_task
    from .models import resolve_model

    spec = get_task(task)
    path = resolve_model(model_source(model))
    kwargs: dict[str, Any] = {
        "num_labels": spec.num_labels,
        "problem_type": "regression" if spec.is_regression else "single_label_classification",
    }
    if spec.label_names is not None:
        kwargs["id2label"] = dict(enumerate(spec.label_names))
        kwargs["label2id"] = {n: i for i, n in enumerate(spec.label_names)}
    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            net = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, ignore_mismatched_sizes=True, **kwargs
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"cannot load model {str(model)!r} ({_first_line(e)}); expected a Hugging Face model folder with "
                f"model.safetensors and tokenizer files, a hub id, or the alias 'minilm-l6'"
            ) from None
    _fix_pad_token(net, tokenizer)
    return net, tokenizer


def _load_saved(model_dir: Path, what: str):
    from .nn.io import load_model

    with _quiet_transformers():
        try:
            return load_model(model_dir)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot load {what} {str(model_dir)!r}: {_first_line(e)}") from None


# --------------------------------------------------------------------------------------------------
# finetune


def _train_config(**kwargs):
    from pydantic import ValidationError

    from .train.loop import TrainConfig

    try:
        return TrainConfig(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "setting"
        raise UserError(f"invalid {name.replace('_', '-')} {err.get('input')!r}: {err['msg'].lower()}") from None


def finetune(
    model: str | os.PathLike = "minilm-l6",
    task: str = "rt",
    data: str | os.PathLike | None = None,
    out: str | os.PathLike = "runs/finetune",
    epochs: float = 3.0,
    lr: float = 5e-5,
    batch_size: int = 32,
    max_seq_length: int = 128,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
    bf16: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    eval_every: int | None = None,
    save_every: int | None = None,
    max_steps: int | None = None,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    eval_batch_size: int = 64,
    tensorboard: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune ``model`` on ``task`` and leave a run directory in ``out``.

    Args:
        model: a model folder, a hub id, or ``"minilm-l6"`` (embedded, offline).
        task: a GLUE task (``sst2``, ``mnli``, ``stsb``, ...) or ``rt`` (embedded Rotten Tomatoes).
        data: a GLUE-format folder, a CSV/TSV/JSONL file, a hub dataset (``glue/sst2``), or None for
            the task's default source.
        out: the run directory.
        epochs: passes over the training data (fractions allowed).
        lr: peak learning rate (AdamW, linear warm-up then linear decay).
        batch_size: global batch size (all processes together).
        max_seq_length: longest tokenized input.
        max_train_samples: train on a fixed random subset of this many examples.
        max_eval_samples: evaluate on a fixed random subset of this many examples.
        seed: seed of the new head, batch order and dropout.
        bf16: bf16 autocast; None uses it where the hardware supports it natively.
        resume: continue the run in ``out`` from its last checkpoint.
        overwrite: start again in ``out``, deleting a previous run's files there.
        eval_every: evaluate (and checkpoint) every N steps; None: each epoch.
        save_every: checkpoint every N steps; None: at each evaluation.
        max_steps: stop after this many optimizer steps (overrides ``epochs``).
        warmup_ratio: share of steps for the LR warm-up.
        weight_decay: AdamW weight decay.
        eval_batch_size: batch size for evaluation.
        tensorboard: also write TensorBoard logs in ``out/tensorboard``.
        progress: show a progress bar.

    Returns:
        The run directory. ``out/model`` holds the best checkpoint and ``out/eval.json`` its metrics.

    Raises:
        UserError: unknown task, unreadable or malformed data, model not found, output directory
            that holds something else, or settings out of range. Nothing is written before all
            inputs have been checked.
    """
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from . import __version__
    from .data.batching import encode
    from .data.sources import load_examples
    from .data.tasks import get_task
    from .models import resolve_model
    from .train.loop import bf16_supported, cpu_processes, train

    # ---- check every input before writing anything ----
    # In a multi-process run every process checks (so all stop with the same error), and the main
    # process writes only after all of them have passed the barrier below.
    state = PartialState(cpu=cpu_processes())
    spec = get_task(task)
    out = Path(out)
    mode = check_output_dir(out, resume=resume, overwrite=overwrite)
    cfg = _train_config(
        epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, eval_batch_size=eval_batch_size,
        weight_decay=weight_decay, warmup_ratio=warmup_ratio, bf16=bf16_supported() if bf16 is None else bf16,
        eval_every=eval_every, save_every=save_every, seed=seed, max_seq_length=max_seq_length,
        tensorboard=tensorboard, progress=progress,
    )
    data_ref = None if data is None else str(data)
    if data_ref is not None and Path(data_ref).expanduser().exists():
        data_ref = str(Path(data_ref).expanduser().resolve())
    config = {
        "model": str(model), "task": spec.name, "data": data_ref, "out": str(out), "epochs": epochs,
        "max_steps": max_steps, "lr": lr, "batch_size": batch_size, "eval_batch_size": eval_batch_size,
        "max_seq_length": max_seq_length, "max_train_samples": max_train_samples,
        "max_eval_samples": max_eval_samples, "seed": seed, "bf16": cfg.bf16, "warmup_ratio": warmup_ratio,
        "weight_decay": weight_decay, "eval_every": eval_every, "save_every": save_every,
        "tensorboard": tensorboard,
    }
    if mode == "resume":
        _check_resume_config(out, config)
    if state.num_processes > 1:  # the barrier; and every process takes the main process's decision
        from accelerate.utils import broadcast_object_list

        mode = broadcast_object_list([mode], from_process=0)[0]
    resolve_model(model_source(model))  # a missing path fails here, before the data is read
    train_ex = load_examples(spec, "train", data, max_train_samples, SUBSET_SEED)
    eval_split = spec.eval_splits[0]
    eval_ex = load_examples(spec, eval_split, data, max_eval_samples, SUBSET_SEED)
    set_seed(seed)  # the new head's weights
    net, tokenizer = load_for_task(model, spec)
    train_features = encode(train_ex, tokenizer, max_seq_length)
    eval_features = encode(eval_ex, tokenizer, max_seq_length)

    # ---- write: the run directory, then train ----
    info = {
        "kind": "finetune", "task": spec.name, "model": str(model), "version": __version__,
        "status": "running", "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "num_processes": state.num_processes,
    }
    info = start_run(out, mode, info, config, state)

    with _quiet_transformers():
        result = train(
            net, tokenizer, spec, train_features, eval_features, cfg, out, resume=(mode == "resume"),
        )

    if state.is_main_process:
        evaluation = _evaluate_model_dir(
            out / "model", spec, eval_features, eval_split, cfg.eval_batch_size, cfg.bf16
        )
        from .train.checkpoint import atomic_write_json

        atomic_write_json(out / EVAL_FILE, evaluation)
        info.update(
            status="done", steps=result.steps, best_step=result.best_step, best_metric=result.best_metric,
            finished=_dt.datetime.now().isoformat(timespec="seconds"),
        )
        _write_run_files(out, info, None)
    state.wait_for_everyone()
    return out


# --------------------------------------------------------------------------------------------------
# evaluate


def _evaluate_model_dir(model_dir: Path, spec, features, split: str, batch_size: int, bf16: bool) -> dict:
    from .train.loop import evaluate_model

    net, tokenizer = _load_saved(model_dir, "model")
    metrics = evaluate_model(net, spec, features, batch_size, bf16, tokenizer.pad_token_id)
    return {"task": spec.name, "split": split, "n": len(features), "metrics": metrics}


def _read_config(model: str):
    from transformers import AutoConfig

    from .models import resolve_model

    path = resolve_model(model)
    with _quiet_transformers():
        try:
            return AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot load model {model!r} ({_first_line(e)})") from None


def _check_head(config, spec, path) -> None:
    """Refuse a model whose trained classification head does not fit the task; warn if it has none."""
    import sys

    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        print(
            f"warning: {str(path)!r} has no sequence-classification head; it gets a new random one, "
            f"so its metrics are those of an untrained classifier",
            file=sys.stderr,
        )
        return
    if config.num_labels != spec.num_labels:
        raise UserError(
            f"model {str(path)!r} has a head with {config.num_labels} outputs but task {spec.name} needs "
            f"{spec.num_labels}; evaluate it on the task it was trained for"
        )


def evaluate(
    path: str | os.PathLike,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    split: str | None = None,
    max_eval_samples: int | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    bf16: bool | None = None,
    max_seq_length: int | None = None,
) -> dict[str, Any]:
    """Evaluate a run's model (or any model) on a task's evaluation split.

    Args:
        path: a run directory (its ``model/`` is evaluated), a model folder, a hub id or
            ``"minilm-l6"``.
        task: the task; for a run directory it defaults to the run's task.
        data: where the examples are; for a run directory it defaults to the run's data.
        split: the split (default: the task's first evaluation split, ``dev``).
        max_eval_samples: evaluate a fixed random subset of this many examples.
        out: write the result to this JSON file. Without it the result goes to ``path/eval.json``
            when ``path`` is a run directory and nowhere otherwise.
        batch_size: evaluation batch size (default: the run's, else 64).
        bf16: bf16 autocast (default: the run's setting, else where supported natively).
        max_seq_length: tokenizer truncation (default: the run's, else 128).

    Returns:
        ``{"task": ..., "split": ..., "n": ..., "metrics": {...}}``.

    Raises:
        UserError: unknown path or task, unreadable data, a model whose head does not fit the task.
    """
    from .data.batching import encode
    from .data.sources import _normalize_split, load_examples
    from .data.tasks import get_task
    from .train.checkpoint import atomic_write_json
    from .train.loop import bf16_supported, evaluate_model

    p = Path(path).expanduser()
    run_cfg: dict[str, Any] = {}
    if p.is_dir() and is_run_dir(p):
        run = read_run(p)
        run_cfg = run["config"]
        task = task or run.get("task")
        if data is None:
            data = run_cfg.get("data")
        if not (p / "model").is_dir():
            raise UserError(f"run {str(p)!r} has no model/ yet (it has not finished an evaluation); resume or rerun it")
    if task is None:
        raise UserError(f"no task given for {str(path)!r}; pass --task (e.g. sst2, mnli, rt)")
    spec = get_task(task)
    split = _normalize_split(spec, split or spec.eval_splits[0])
    out_path = Path(out) if out is not None else (p / EVAL_FILE if is_run_dir(p) else None)
    if out_path is not None and out_path.exists() and out_path.is_dir():
        raise UserError(f"--out {str(out_path)!r} is a directory; expected a JSON file path")
    if out_path is not None and not out_path.parent.is_dir():
        raise UserError(f"cannot write {str(out_path)!r}: folder {str(out_path.parent)!r} does not exist")

    is_run = is_run_dir(p)
    if (p / "manifest.json").is_file():  # a packed directory: evaluate the fast runtime itself
        examples = load_examples(spec, split, data, max_eval_samples, SUBSET_SEED)
        logits = packed_logits(p, examples, max_seq_length or 128, batch_size or 64)
        from .data.tasks import compute_metrics

        labels = np.asarray([ex.label for ex in examples])
        metrics = compute_metrics(spec, logits.numpy(), labels)
        result = {"task": spec.name, "split": split, "n": len(examples), "metrics": metrics}
        if out_path is not None:
            atomic_write_json(out_path, result)
        return result
    _check_head(_read_config(str(p / "model") if is_run else str(path)), spec, path)
    examples = load_examples(spec, split, data, max_eval_samples, SUBSET_SEED)
    if is_run:
        net, tokenizer = _load_saved(p / "model", "the model of run")
    else:
        net, tokenizer = load_for_task(str(path), spec)
    seq = max_seq_length or run_cfg.get("max_seq_length") or 128
    features = encode(examples, tokenizer, int(seq))
    if bf16 is None:
        bf16 = run_cfg.get("bf16", bf16_supported())
    bs = batch_size or run_cfg.get("eval_batch_size") or 64
    metrics = evaluate_model(net, spec, features, int(bs), bool(bf16), tokenizer.pad_token_id)
    result = {"task": spec.name, "split": split, "n": len(features), "metrics": metrics}
    if out_path is not None:
        try:
            atomic_write_json(out_path, result)
        except OSError as e:
            raise UserError(f"cannot write {str(out_path)!r}: {e.strerror or e}") from None
    return result


def packed_logits(path: str | os.PathLike, examples, max_seq_length: int = 128, batch_size: int = 64):
    """Logits of a packed directory's runtime on ``examples``: (len(examples), num_labels) float32.

    Examples are run in length-sorted batches (little padding) and returned in their own order.
    """
    import torch

    from .data.batching import encode
    from .runtime import load as load_runtime

    model = load_runtime(path)
    features = encode(examples, model.tokenizer, int(max_seq_length))
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out = torch.zeros(len(features), model.num_labels)
    pad = model.tokenizer.pad_token_id or 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(features[i]["input_ids"]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            types = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                f = features[i]
                n = len(f["input_ids"])
                ids[r, :n] = torch.tensor(f["input_ids"])
                mask[r, :n] = 1
                if "token_type_ids" in f:
                    types[r, :n] = torch.tensor(f["token_type_ids"])
            out[idx] = model(ids, mask, types).float()
    return out


# --------------------------------------------------------------------------------------------------
# compress / size / recipe check


def compress(
    recipe: str | os.PathLike,
    teacher: str | os.PathLike,
    task: str,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Compress ``teacher`` for ``task`` with a recipe. See :func:`compactbert.pipeline.compress`."""
    from .pipeline import compress as _compress

    return _compress(
        find_recipe(recipe), teacher, task, out, data=data, overrides=overrides,
        max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, resume=resume,
        overwrite=overwrite, progress=progress,
    )


def find_recipe(recipe: str | os.PathLike) -> Path:
    """A recipe path; a bare name (``xtc-binary``) is looked up in the ready recipes."""
    p = Path(recipe).expanduser()
    if p.is_file():
        return p
    shipped = Path(__file__).resolve().parents[2] / "recipes"
    for candidate in (shipped / str(recipe), shipped / f"{recipe}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(f.stem for f in shipped.glob("*.yaml")) if shipped.is_dir() else []
    raise UserError(
        f"recipe {str(recipe)!r} does not exist; give a YAML file"
        + (f" or one of the ready recipes: {', '.join(names)}" if names else "")
    )


def recipe_check(recipe: str | os.PathLike, overrides: list[str] | None = None):
    """Validate a recipe file and return the :class:`compactbert.recipe.Recipe`."""
    from .recipe import Recipe

    return Recipe.load(find_recipe(recipe), overrides=overrides)


def size(path: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Packed-size report of a run directory or model folder; writes ``size.json``.

    Tensors without a quantizer are counted at 16 bits, as ``compactbert export`` stores them
    (``PACKED_FLOAT_BITS``), so ``compressed_bytes`` predicts the packed directory's size.
    The report lists every tensor (bits, parameters, sparsity, bytes) and the totals
    ``dense_fp32_bytes``, ``compressed_bytes`` and ``ratio``. It is written to ``out``, or to
    ``PATH/size.json`` for a run directory.
    """
    from .size import size_report
    from .train.checkpoint import atomic_write_json

    p = Path(path)
    if not p.exists():
        raise UserError(f"{str(path)!r} does not exist; expected a run directory or a model folder")
    if (p / "manifest.json").is_file():  # a packed directory: what it stores, from its manifest
        report = packed_size_report(p)
        if out is not None:
            atomic_write_json(Path(out), report)
        return report
    model_dir = Path(model_source(p))
    net, tok = _load_saved(model_dir, "model")
    report = size_report(net, uncompressed_bits=PACKED_FLOAT_BITS)
    report.update(packed_extras(tok, report["compressed_bytes"]))
    target = Path(out) if out is not None else (p / "size.json" if is_run_dir(p) else None)
    if target is not None:
        atomic_write_json(target, report)
    return report


def packed_extras(tokenizer, weights_bytes: int) -> dict[str, int]:
    """What a packed directory adds to the weights: the xz tokenizer, exactly as ``export`` writes
    it, and ``predicted_files_bytes`` (weights + tokenizer; the JSON files add a few KB)."""
    from .export.pack import tokenizer_files

    tok = sum(len(b) for _, b in tokenizer_files(tokenizer)) if tokenizer is not None else 0
    return {"tokenizer_bytes": tok, "predicted_files_bytes": weights_bytes + tok}


def packed_size_report(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`size`'s report for a packed directory, read from its (verified) manifest.

    ``dense_fp32_bytes`` counts the stored tensors' shapes at 4 bytes (after physical removal of
    pruned heads/neurons and vocabulary pruning); ``files_bytes`` is the directory on disk.
    """
    import math

    from .export.pack import packed_size, verify_packed

    manifest = verify_packed(path)
    tensors = []
    for name, t in manifest["tensors"].items():
        params = math.prod(t["shape"])
        tensors.append({
            "name": t.get("source") or name, "shape": t["shape"], "params": params, "bits": t["bits"],
            "sparsity": 0.0, "encoding": t["encoding"], "bytes": t["bytes"],
        })
    dense = sum(4 * t["params"] for t in tensors)
    return {
        "tensors": tensors, "uncompressed_bits": manifest.get("uncompressed_bits", 16),
        "dense_fp32_bytes": dense, "compressed_bytes": manifest["payload_bytes"],
        "ratio": dense / max(1, manifest["payload_bytes"]), "files_bytes": packed_size(path)["total"],
    }


# --------------------------------------------------------------------------------------------------
# export / bench / report


def export(
    path: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "packed",
    prune_vocab: bool = False,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    max_positions: int | None = None,
) -> Path:
    """Export a run directory (its ``model/``) or a model folder.

    Args:
        path: a finetune/compress run directory or a model folder.
        out: the folder to write.
        format: ``packed`` (bit-packed weights, pruned structure removed; load with
            :func:`compactbert.load`) or ``onnx`` (FP32 ONNX for ONNX Runtime).
        prune_vocab: keep only the embedding rows of tokens that occur in the task's training and
            dev data (plus special tokens); the tokenizer is remapped.
        task, data: the task data for ``prune_vocab`` (default: the run's own).
        max_positions: keep only the first N position embeddings (inputs longer than N are refused).

    Returns:
        The output folder.
    """
    out = Path(out)
    if format not in ("packed", "onnx"):
        raise UserError(f"--format {format!r} is not valid; valid: packed, onnx")
    src = Path(path)
    if not src.exists():
        raise UserError(f"{str(path)!r} does not exist; expected a run directory or a model folder")
    if format == "onnx":
        if prune_vocab:
            raise UserError("--prune-vocab applies to --format packed only")
        from .export.onnx import export_onnx_path

        export_onnx_path(src, out)
        return out
    from .export.pack import export_packed

    model_dir = Path(model_source(src))
    net, tokenizer = _load_saved(model_dir, "model")
    texts = None
    if prune_vocab:
        from .data.sources import load_examples
        from .data.tasks import get_task

        run_cfg = read_run(src) if is_run_dir(src) else {"config": {}}
        task = task or run_cfg.get("task")
        if task is None:
            raise UserError("--prune-vocab needs the task data: give --task (and --data) for a model folder")
        spec = get_task(task)
        data = data if data is not None else run_cfg["config"].get("data")
        texts = []
        for split in ("train", *spec.eval_splits):
            for ex in load_examples(spec, split, data):
                texts.append(ex.text_a if ex.text_b is None else (ex.text_a, ex.text_b))
    export_packed(net, tokenizer, out, prune_vocab_texts=texts, max_positions=max_positions)
    return out


def load(path: str | os.PathLike, **kwargs):
    """Load a packed directory into the fast CPU runtime (see :func:`compactbert.runtime.load`)."""
    from .runtime import load as _load

    return _load(path, **kwargs)


def bench(path, baseline=None, task=None, data=None, threads: int = 2, out=None, **kwargs) -> dict[str, Any]:
    """Side-by-side speed, memory, size and accuracy (see :func:`compactbert.bench.core.bench`)."""
    from .bench.core import BENCH_FILE, bench as _bench

    if out is None:
        first = path[0] if isinstance(path, (list, tuple)) else path
        out = Path(first) / BENCH_FILE if first is not None and Path(first).is_dir() else BENCH_FILE
    return _bench(path, baseline, task=task, data=data, threads=threads, out=out, **kwargs)


def report(paths, out: str | os.PathLike = "report", title: str = "compactbert report", show: bool = True) -> Path:
    """Table + plots (accuracy vs bytes / latency) as PNG and HTML (see :func:`compactbert.report.core.report`)."""
    from .report.core import report as _report

    return _report(paths, out, title=title, show=show)
