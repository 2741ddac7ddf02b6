"""`compress`: run a recipe's stages on a student that starts as a copy of the teacher.

Run directory of ``compress``::

    run.json          kind "compress", task, teacher, status, per-stage summary
    recipe.yaml       the resolved recipe (after --set overrides): what --resume must match
    config.yaml       the other arguments (task, data, sample limits)
    stages/<i>-<name>/ one training run per stage (model/, checkpoint/, metrics.jsonl, done.json)
    model/            the final compressed model (compression.json beside the safetensors)
    metrics.jsonl     every evaluation of every stage, each line tagged with its stage
    eval.json         metrics of model/ on the dev split
    size.json         packed size of model/ (see compactbert.size)

Resuming: finished stages (``done.json``) are skipped and the next stage starts from the previous
stage's ``model/``; the stage that was interrupted continues from its own checkpoint.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

from .errors import UserError

DONE_FILE = "done.json"
SIZE_FILE = "size.json"


def stage_dir(out: Path, i: int, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "stage"
    return out / "stages" / f"{i}-{safe}"


def compress(
    recipe: str | Path,
    teacher: str | Path,
    task: str,
    out: str | Path,
    data: str | Path | None = None,
    overrides: list[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Compress ``teacher`` for ``task`` with the stages of ``recipe``; return the run directory.

    Args:
        recipe: a recipe YAML file (see ``recipes/``) or a :class:`compactbert.recipe.Recipe`.
        teacher: a fine-tuned run directory or model folder (its head must match the task).
        task: the task name.
        out: the run directory to create (or resume).
        data: the task's data (GLUE folder, file, hub name), as for ``finetune``.
        overrides: ``KEY=VALUE`` overrides of recipe keys (``stages.0.epochs=1``).
        max_train_samples: train on a fixed subset of this many examples.
        max_eval_samples: evaluate on a fixed subset of this many examples.
        resume: continue an interrupted run in ``out``.
        overwrite: replace a previous run in ``out``.
        progress: show progress bars.

    Raises:
        UserError: bad recipe, task, data, teacher or output directory (checked before writing).
    """
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from . import __version__
    from .api import (
        EVAL_FILE, PACKED_FLOAT_BITS, SUBSET_SEED, packed_extras, _load_saved, _quiet_transformers, _train_config,
        _write_run_files, check_output_dir, load_for_task, start_run,
    )
    from .data.batching import encode
    from .export.pack import round_floats_to_fp16
    from .nn.io import save_model
    from .data.sources import load_examples
    from .data.tasks import get_task
    from .recipe import Recipe
    from .size import size_report
    from .train.checkpoint import atomic_write_json
    from .train.loop import bf16_supported, cpu_processes, evaluate_model, train

    # ---- check every input before writing anything ----
    spec = get_task(task)
    rec = recipe if isinstance(recipe, Recipe) else Recipe.load(recipe, overrides=overrides)
    out = Path(out)
    mode = check_output_dir(out, resume=resume, overwrite=overwrite)
    config = {
        "teacher": str(teacher), "task": spec.name, "data": None if data is None else str(data),
        "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples,
    }
    if mode == "resume":
        _check_same(out, rec, config)
    train_ex = load_examples(spec, "train", data, max_train_samples, SUBSET_SEED)
    eval_split = spec.eval_splits[0]
    eval_ex = load_examples(spec, eval_split, data, max_eval_samples, SUBSET_SEED)
    teacher_net, tokenizer = load_for_task(teacher, spec)
    _check_teacher_head(teacher, spec)
    teacher_net.eval().requires_grad_(False)
    _dry_run(rec, teacher_net, tokenizer, spec, str(recipe))
    eval_features = encode(eval_ex, tokenizer, rec.max_seq_length)
    bf16 = rec.bf16 and bf16_supported()

    state = PartialState(cpu=cpu_processes())
    info: dict[str, Any] = {
        "kind": "compress", "task": spec.name, "teacher": str(teacher), "version": __version__,
        "status": "running", "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "stages": [st.name for st in rec.stages],
    }
    info = start_run(out, mode, info, config, state, extra={"recipe.yaml": rec.to_yaml()})

    # ---- the stages ----
    student = None
    summaries = []
    train_features = None  # the un-augmented training set, tokenized once for every stage that uses it
    for i, st in enumerate(rec.stages):
        sdir = stage_dir(out, i, st.name)
        if (sdir / DONE_FILE).is_file():
            summaries.append(json.loads((sdir / DONE_FILE).read_text()))
            student = None  # load lazily from this stage's model/ if a later stage runs
            continue
        if student is None:
            if i == 0:
                student = copy.deepcopy(teacher_net).requires_grad_(True).train()
            else:
                prev = stage_dir(out, i - 1, rec.stages[i - 1].name) / "model"
                student, _ = _load_saved(prev, f"stage {i - 1} model")
        if st.augment is not None:
            from .data.augment import augment_examples

            train_examples = augment_examples(train_ex, st.augment.n_aug, st.augment.p, seed=st.augment.seed)
            features = encode(train_examples, tokenizer, rec.max_seq_length)
        else:
            train_examples = train_ex
            if train_features is None:
                train_features = encode(train_ex, tokenizer, rec.max_seq_length)
            features = train_features
        cfg = _train_config(
            epochs=st.epochs or 1.0, max_steps=st.steps, lr=st.lr, batch_size=st.batch_size,
            weight_decay=st.weight_decay, warmup_ratio=st.warmup_ratio, max_grad_norm=st.max_grad_norm,
            bf16=bf16, eval_every=st.eval_every, seed=rec.seed, max_seq_length=rec.max_seq_length,
            keep=st.keep, progress=progress,
        )
        methods = [m.model_copy(deep=True) for m in st.methods]  # fresh lifecycle per run
        needs_teacher = any(m.needs_teacher for m in methods)
        set_seed(rec.seed)
        if state.is_main_process and progress:
            print(f"stage {i} '{st.name}': {len(train_examples)} training examples, "
                  f"{', '.join(m.type for m in methods) or 'no methods'}")  # type: ignore[attr-defined]
        with _quiet_transformers():
            result = train(
                student, tokenizer, spec, features, eval_features,
                cfg, sdir, methods=methods, teacher=teacher_net if needs_teacher else None,
                resume=(mode == "resume"),
            )
        student = result.model
        summary = {"stage": i, "name": st.name, "steps": result.steps, "metrics": result.metrics}
        summaries.append(summary)
        if state.is_main_process:
            atomic_write_json(sdir / DONE_FILE, summary)
        state.wait_for_everyone()

    # ---- the final model, its metrics and its size ----
    if state.is_main_process:
        last = stage_dir(out, len(rec.stages) - 1, rec.stages[-1].name) / "model"
        tmp = out / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # the final model holds exactly what `export` stores (floats as fp16 values), so the packed
        # model predicts what eval.json measured (see round_floats_to_fp16)
        # (saving is exact, so the object in hand is the model as saved: evaluated and sized below)
        final, last_tok = _load_saved(last, f"stage {len(rec.stages) - 1} model")
        round_floats_to_fp16(final)
        save_model(final, last_tok, tmp)
        shutil.rmtree(out / "model", ignore_errors=True)
        tmp.rename(out / "model")
        _merge_metrics(out, rec)
        # A model with activation quantizers is evaluated in FP32: bf16 autocast moves activations
        # across their code boundaries (0.5-0.7 points on SST-2), and the packed runtime computes
        # those models exactly (int8 products), i.e. like the FP32 evaluation.
        act_quant = any(getattr(m, "input_quantizer", None) is not None for m in final.modules())
        metrics = evaluate_model(final, spec, eval_features, 64, bf16 and not act_quant, tokenizer.pad_token_id)
        atomic_write_json(out / EVAL_FILE, {"task": spec.name, "split": eval_split, "n": len(eval_features), "metrics": metrics})
        report = size_report(final, uncompressed_bits=PACKED_FLOAT_BITS)
        report.update(packed_extras(tokenizer, report["compressed_bytes"]))
        atomic_write_json(out / SIZE_FILE, report)
        info.update(status="done", stage_results=summaries, finished=_dt.datetime.now().isoformat(timespec="seconds"))
        _write_run_files(out, info, None)
    state.wait_for_everyone()
    return out


def _dry_run(rec, teacher_net, tokenizer, spec, source: str) -> None:
    """Attach every stage's methods to a throw-away copy of the student, before anything is written.

    Errors that depend on the model (a target pattern that matches no module, a layer index past
    the teacher's depth, a group size that does not divide a row) surface here, naming the recipe
    key, instead of after the run directory has been created.
    """
    from .methods.base import TrainState

    probe = copy.deepcopy(teacher_net).requires_grad_(True)  # like the student: trainable
    for i, st in enumerate(rec.stages):
        state = TrainState(
            model=probe, teacher=teacher_net, total_steps=1000, steps_per_epoch=1000, task=spec,
            tokenizer=tokenizer, extras={"bf16": False, "dry_run": True},
        )
        for j, m in enumerate(st.methods):
            try:
                m.model_copy(deep=True).attach(state)
            except UserError as e:
                raise UserError(f"{source}: stages.{i}.methods.{j} ({m.type}): {e}") from None  # type: ignore[attr-defined]
        probe = state.model
    del probe


def _check_same(out: Path, rec, config: dict[str, Any]) -> None:
    """A resumed run must use the recipe and data it started with."""
    from .api import read_run
    from .recipe import Recipe

    old = read_run(out)
    if old.get("kind") != "compress":
        raise UserError(f"{str(out)!r} is a {old.get('kind')!r} run, not a compress run; use another --out")
    saved = out / "recipe.yaml"
    if saved.is_file() and Recipe.from_yaml(saved.read_text(), str(saved)) != rec:
        raise UserError(
            f"--resume: the recipe differs from the one {str(out)!r} started with ({saved}); "
            "resume with the same recipe and --set values, or use --overwrite"
        )
    for k, v in config.items():
        was = old.get("config", {}).get(k, v)
        if was != v and not _same_path(was, v):
            raise UserError(f"--resume: {k} was {was!r} in {str(out)!r}, now {v!r}; use the same value")


def _same_path(a: Any, b: Any) -> bool:
    """Two spellings of one existing file or folder (``../data`` and ``/work/data``)."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _check_teacher_head(teacher, spec) -> None:
    """Warn when the teacher's head was not trained for the task (distilling from it is pointless)."""
    import warnings

    from .api import model_source
    from .models import resolve_model

    path = Path(resolve_model(model_source(teacher)))
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        archs = cfg.get("architectures") or []
        if not any("SequenceClassification" in a for a in archs):
            warnings.warn(
                f"teacher {str(teacher)!r} has no fine-tuned classification head; run `compactbert finetune` "
                "first and pass its run directory as --teacher",
                stacklevel=3,
            )


def _merge_metrics(out: Path, rec) -> None:
    lines = []
    for i, st in enumerate(rec.stages):
        f = stage_dir(out, i, st.name) / "metrics.jsonl"
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.strip():
                    lines.append(json.dumps({"stage": i, "stage_name": st.name, **json.loads(line)}))
    from .train.checkpoint import atomic_write_text

    atomic_write_text(out / "metrics.jsonl", "\n".join(lines) + ("\n" if lines else ""))
