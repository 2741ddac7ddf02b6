"""``compress``: run a recipe's stages on a student that starts as a copy of the teacher.

Run directory of ``compress``::

    run.json          kind "compress", task, teacher, status, per-stage summary
    recipe.yaml       the resolved recipe (after --set overrides): what --resume must match
    config.yaml       the other arguments (teacher, task, data, sample limits) and the evaluation
                      settings the run used (max_seq_length, bf16, eval_batch_size), which
                      ``compactbert eval RUN`` reuses
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
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..errors import UserError, short_repr
from ..fileio import path_exists, user_path
from ..loading import config_json, has_classification_head, load_for_task, load_saved, quiet_transformers
from ..runs import EVAL_FILE, MODEL_DIR, RECIPE_FILE, SIZE_FILE, model_source, read_run
from .evaluate import evaluation_bf16
from .finetune import train_config
from .rundir import check_output_dir, check_resume_settings, finish_run, now, start_run
from .size import model_size_report

DONE_FILE = "done.json"
# The arguments a resumed run must repeat (the recipe is compared as a whole).
RESUME_KEYS = ("teacher", "model", "task", "data", "eval_data", "max_train_samples", "max_eval_samples")
RECIPES_DIR = Path(__file__).resolve().parents[3] / "recipes"  # the ready recipes of a source checkout


def stage_dir(out: Path, i: int, name: str) -> Path:
    """The run directory of stage ``i`` (named ``name``) inside the compress run ``out``."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "stage"
    return out / "stages" / f"{i}-{safe}"


def find_recipe(recipe: str | os.PathLike) -> Path:
    """A recipe path; a bare name (``xtc-binary``) is looked up in the ready recipes."""
    p = user_path(recipe)
    if path_exists(p) and p.is_file():  # path_exists: False for names the OS refuses (too long)
        return p
    for candidate in (RECIPES_DIR / str(recipe), RECIPES_DIR / f"{recipe}.yaml"):
        if path_exists(candidate) and candidate.is_file():
            return candidate
    names = sorted(f.stem for f in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise UserError(
        f"recipe {short_repr(str(recipe), 400)} does not exist; give a YAML file"
        + (f" or one of the ready recipes: {', '.join(names)}" if names else "")
    )


def recipe_check(recipe: str | os.PathLike, overrides: list[str] | None = None):
    """Validate a recipe file (or ready-recipe name) and return the :class:`compactbert.recipe.Recipe`."""
    from ..recipe import Recipe

    return Recipe.load(find_recipe(recipe), overrides=overrides)


@dataclass
class _Inputs:
    """Everything ``compress`` checked and loaded before writing anything."""

    spec: Any
    rec: Any
    mode: str
    config: dict[str, Any]
    train_ex: list
    eval_split: str
    eval_features: list
    teacher_net: Any
    tokenizer: Any
    bf16: bool
    train_features: list | None = None  # the un-augmented training set, tokenized once for all stages
    student_net: Any = None  # the student's start (--model) when it is not a copy of the teacher
    evaluator: Any = None  # a label-free run's EmbeddingEvaluator (upstream.py)
    extras: dict[str, Any] | None = None  # state.extras for the methods (the sentence pooling)
    skipped: list[str] | None = None  # methods left out for want of a --teacher (if_no_teacher: skip)


def compress(
    recipe,
    teacher: str | os.PathLike | None,
    task: str,
    out: str | os.PathLike,
    data: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    model: str | os.PathLike | None = None,
    eval_data: str | os.PathLike | None = None,
) -> Path:
    """Compress ``teacher`` (or ``model``) for ``task`` with the stages of ``recipe``; return the run directory.

    Args:
        recipe: a recipe YAML file (see ``recipes/``), the name of a ready recipe
            (``xtc-binary``) or a :class:`compactbert.recipe.Recipe`.
        teacher: a fine-tuned run directory or model folder (its head must match the task); None
            when ``model`` is given (then a recipe's distillation needs ``if_no_teacher: skip``).
            For ``task="corpus"``: the dense model to distil from (default: ``model`` itself).
        task: the task name, or ``corpus``: label-free upstream compression on the sentences of
            ``data`` (see :mod:`compactbert.workflows.upstream`).
        out: the run directory to create (or resume).
        data: the task's data (GLUE folder, file, hub name), as for ``finetune``; for ``corpus``:
            ``general-en`` (default, embedded) or a ``.txt`` / ``.jsonl`` file.
        model: where the student starts, when it is not a copy of the teacher: a model folder or a
            run directory, e.g. an upstream run (its masks and quantizers are kept; a new task head).
        eval_data: ``corpus`` only: STS-B data (a GLUE folder) to score the sentence embeddings on.
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

    from .. import __version__
    from ..train.loop import cpu_processes

    out = Path(out)
    refs = {"teacher": teacher, "model": model, "eval_data": eval_data}
    inp = _check_inputs(recipe, overrides, refs, task, out, data, max_train_samples, max_eval_samples, resume, overwrite)
    state = PartialState(cpu=cpu_processes())
    info: dict[str, Any] = {
        "kind": "compress", "task": inp.spec.name, "teacher": inp.config["teacher"], "version": __version__,
        "status": "running", "created": now(), "stages": [st.name for st in inp.rec.stages],
    }
    if model is not None:
        info["model"] = str(model)
    if inp.skipped:
        info["skipped_methods"] = inp.skipped
    info = start_run(out, inp.mode, info, inp.config, state, extra={RECIPE_FILE: inp.rec.to_yaml()})
    summaries, student = [], None
    for i in range(len(inp.rec.stages)):
        summary, student = _run_stage(inp, out, i, student, state, progress)
        summaries.append(summary)
    if state.is_main_process:
        _finish(inp, out)
        finish_run(out, info, stage_results=summaries)
    state.wait_for_everyone()
    return out


def _check_inputs(recipe, overrides, refs: dict[str, Any], task, out: Path, data, max_train_samples, max_eval_samples,
                  resume: bool, overwrite: bool) -> _Inputs:
    """Check every input (recipe, output directory, data, teacher, the recipe on the teacher) and
    load what the stages need, before anything is written."""
    from ..data.tasks import get_task, is_corpus_task
    from ..recipe import Recipe
    from ..train.loop import bf16_supported

    source = recipe if isinstance(recipe, Recipe) else find_recipe(recipe)
    teacher, model = refs["teacher"], refs["model"]
    corpus = is_corpus_task(task)
    spec = None if corpus else get_task(task)
    if teacher is None and model is None:
        raise UserError("compress needs a model: give --teacher (a fine-tuned model the student starts as a copy of) "
                        "or --model (where the student starts; for --task corpus the dense model)")
    if refs["eval_data"] is not None and not corpus:
        raise UserError("--eval-data is for --task corpus (STS-B to score the sentence embeddings on); "
                        "a task's dev split comes from --data")
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(source, overrides=overrides)
    mode = check_output_dir(out, resume=resume, overwrite=overwrite, sources=[r for r in (teacher, model) if r])
    bf16 = recipe.bf16 and bf16_supported()
    config = {
        "teacher": str(teacher if teacher is not None or not corpus else model), "model": _ref(model),
        "task": "corpus" if corpus else spec.name, "data": None if data is None else str(data),
        "eval_data": _ref(refs["eval_data"]),
        "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples,
        # how the run evaluates its models: what `compactbert eval RUN` must reuse
        "max_seq_length": recipe.max_seq_length, "bf16": bf16, "eval_batch_size": D.EVAL_BATCH_SIZE,
    }
    if mode == "resume":
        _check_same(out, recipe, config)
    if corpus:
        return _corpus_inputs(recipe, str(source), mode, config, refs, data, bf16)
    return _task_inputs(recipe, str(source), spec, mode, config, refs, data, bf16)


def _ref(path) -> str | None:
    return None if path is None else str(path)


def _task_inputs(rec, source: str, spec, mode: str, config: dict[str, Any], refs: dict[str, Any], data,
                 bf16: bool) -> _Inputs:
    """A task's examples, the teacher (with its head) and the student's start (--model, a new head)."""
    from ..data.batching import encode
    from ..data.sources import load_examples

    teacher, model = refs["teacher"], refs["model"]
    n_train, n_eval = config["max_train_samples"], config["max_eval_samples"]
    train_ex = load_examples(spec, "train", data, n_train, D.SUBSET_SEED)
    eval_split = spec.eval_splits[0]
    eval_ex = load_examples(spec, eval_split, data, n_eval, D.SUBSET_SEED)
    student_net, teacher_net, tokenizer = None, None, None
    if model is not None:
        from accelerate.utils import set_seed

        set_seed(rec.seed)  # the new head's weights
        student_net, tokenizer = load_for_task(model, spec)
    if teacher is not None:
        teacher_net, teacher_tok = load_for_task(teacher, spec)
        tokenizer = tokenizer or teacher_tok
        _check_teacher_head(teacher)
        teacher_net.eval().requires_grad_(False)
    skipped = _teacherless_methods(rec, source, teacher_net is not None)
    dry_run_recipe(rec, teacher_net, tokenizer, spec, source, student=student_net)
    eval_features = encode(eval_ex, tokenizer, rec.max_seq_length)
    return _Inputs(spec, rec, mode, config, train_ex, eval_split, eval_features, teacher_net, tokenizer, bf16,
                   student_net=student_net, skipped=skipped)


def _corpus_inputs(rec, source: str, mode: str, config: dict[str, Any], refs: dict[str, Any], data,
                   bf16: bool) -> _Inputs:
    """Label-free upstream compression: the corpus's sentences, the dense encoder as teacher and
    student, the pooling, and the embedding evaluator (STS-B when --eval-data is given)."""
    from ..data.sources import load_examples
    from ..data.tasks import get_task
    from .upstream import EmbeddingEvaluator, check_label_free_recipe, corpus_examples, corpus_task, load_encoder, model_pooling

    check_label_free_recipe(rec, source)
    teacher, model = refs["teacher"] or refs["model"], refs["model"] or refs["teacher"]
    n_train, n_eval = config["max_train_samples"], config["max_eval_samples"]
    train_ex = corpus_examples(data, "train", n_train)
    dev = [ex.text_a for ex in corpus_examples(data, "dev", n_eval)]
    stsb = None
    if refs["eval_data"] is not None:
        stsb = load_examples(get_task("stsb"), "dev", refs["eval_data"], n_eval, D.SUBSET_SEED)
    pooling = model_pooling(teacher)
    teacher_net, tokenizer = load_encoder(teacher, "teacher")
    teacher_net.eval().requires_grad_(False)
    student_net = load_encoder(model, "model")[0] if model != teacher else None
    spec = corpus_task(stsb is not None)
    extras = {"pooling": pooling}
    dry_run_recipe(rec, teacher_net, tokenizer, spec, source, student=student_net, extras=extras)
    corpus_name = "the embedded corpus general-en" if data is None else f"corpus {str(data)!r}"
    evaluator = EmbeddingEvaluator(teacher_net, tokenizer, pooling, dev, corpus_name, stsb, config["eval_data"],
                                   rec.max_seq_length)
    return _Inputs(spec, rec, mode, config, train_ex, "dev", [], teacher_net, tokenizer, bf16,
                   student_net=student_net, evaluator=evaluator, extras=extras)


def _teacherless_methods(rec, source: str, has_teacher: bool) -> list[str]:
    """Without a teacher: the methods that need one and say ``if_no_teacher: skip`` (their names,
    for run.json); any other such method is a UserError naming it."""
    if has_teacher:
        return []
    skipped = []
    for i, st in enumerate(rec.stages):
        for j, m in enumerate(st.methods):
            if not m.needs_teacher:
                continue
            if getattr(m, "if_no_teacher", "error") != "skip":
                raise UserError(
                    f"{source}: stages.{i}.methods.{j} ({m.type}) needs a teacher: pass --teacher (a model fine-tuned "
                    "on the task), or set if_no_teacher: skip to train that stage without it"
                )
            skipped.append(f"stages.{i}.methods.{j} ({m.type})")
    return skipped


def _run_stage(inp: _Inputs, out: Path, i: int, student, state, progress: bool) -> tuple[dict[str, Any], Any]:
    """Train stage ``i`` from ``student`` (the previous stage's model in memory; None: the teacher
    for stage 0, else the previous stage's ``model/``). A stage that finished before is not run
    again. Returns its summary and its model (None when it was not run)."""
    from accelerate.utils import set_seed

    from ..train.checkpoint import atomic_write_json
    from ..train.loop import train

    rec, st = inp.rec, inp.rec.stages[i]
    sdir = stage_dir(out, i, st.name)
    if (sdir / DONE_FILE).is_file():
        return json.loads((sdir / DONE_FILE).read_text()), None
    headless = inp.spec.label_free  # upstream: bare encoders throughout
    if student is None and i == 0:
        start = inp.student_net if inp.student_net is not None else inp.teacher_net
        student = copy.deepcopy(start).requires_grad_(True).train()
    elif student is None:
        student, _ = load_saved(stage_dir(out, i - 1, rec.stages[i - 1].name) / MODEL_DIR, f"stage {i - 1} model",
                                headless=headless)
    features, n_examples = _stage_features(inp, st)
    cfg = train_config(
        epochs=st.epochs or 1.0, max_steps=st.steps, lr=st.lr, batch_size=st.batch_size,
        weight_decay=st.weight_decay, warmup_ratio=st.warmup_ratio, max_grad_norm=st.max_grad_norm,
        bf16=inp.bf16, eval_every=st.eval_every, seed=rec.seed, max_seq_length=rec.max_seq_length,
        keep=st.keep, progress=progress,
    )
    # fresh lifecycle per run; without a teacher, the methods that need one were allowed to be skipped
    methods = [m.model_copy(deep=True) for m in st.methods if inp.teacher_net is not None or not m.needs_teacher]
    needs_teacher = any(m.needs_teacher for m in methods)
    set_seed(rec.seed)
    if state.is_main_process and progress:
        print(f"stage {i} '{st.name}': {n_examples} training examples, "
              f"{', '.join(m.type for m in methods) or 'no methods'}")  # type: ignore[attr-defined]
    with quiet_transformers():
        result = train(
            student, inp.tokenizer, inp.spec, features, inp.eval_features, cfg, sdir, methods=methods,
            teacher=inp.teacher_net if needs_teacher else None, resume=(inp.mode == "resume"),
            evaluator=inp.evaluator, extras=inp.extras,
        )
    summary = {"stage": i, "name": st.name, "steps": result.steps, "metrics": result.metrics}
    if state.is_main_process:
        atomic_write_json(sdir / DONE_FILE, summary)
    state.wait_for_everyone()
    return summary, result.model


def _stage_features(inp: _Inputs, st) -> tuple[list, int]:
    """A stage's encoded training set and its size: augmented for the stage, or the plain set
    (tokenized once for every stage that uses it)."""
    from ..data.batching import encode

    if st.augment is not None:
        from ..data.augment import augment_examples

        examples = augment_examples(inp.train_ex, st.augment.n_aug, st.augment.p, seed=st.augment.seed)
        return encode(examples, inp.tokenizer, inp.rec.max_seq_length), len(examples)
    if inp.train_features is None:
        inp.train_features = encode(inp.train_ex, inp.tokenizer, inp.rec.max_seq_length)
    return inp.train_features, len(inp.train_ex)


def _finish(inp: _Inputs, out: Path) -> None:
    """The final model in ``model/``, its metrics in ``eval.json`` and its size in ``size.json``."""
    from ..export.pack import round_floats_to_fp16
    from ..nn.io import save_model
    from ..train.checkpoint import atomic_write_json
    from ..train.loop import evaluate_model

    rec, spec = inp.rec, inp.spec
    last = stage_dir(out, len(rec.stages) - 1, rec.stages[-1].name) / MODEL_DIR
    tmp = out / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # the final model holds exactly what `export` stores (floats as fp16 values), so the packed
    # model predicts what eval.json measured (see round_floats_to_fp16)
    # (saving is exact, so the object in hand is the model as saved: evaluated and sized below)
    final, last_tok = load_saved(last, f"stage {len(rec.stages) - 1} model", headless=spec.label_free)
    round_floats_to_fp16(final)
    save_model(final, last_tok, tmp)
    if spec.label_free:  # a sentence-embedding model: its pooling config beside it
        from ..nn.pooling import write_sentence_transformers_config

        pooling = inp.extras["pooling"]
        if pooling.max_seq_length is None:  # the length the run trained with
            pooling = dataclasses.replace(pooling, max_seq_length=rec.max_seq_length)
        write_sentence_transformers_config(tmp, pooling, int(final.config.hidden_size))
    shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
    tmp.rename(out / MODEL_DIR)
    _merge_metrics(out, rec)
    if spec.label_free:
        ev = inp.evaluator
        result = {"task": spec.name, "split": "dev", "n": len(ev.dev), "metrics": ev(final), "main_metric": ev.main_metric,
                  "evaluated": ev.evaluated(), "pooling": inp.extras["pooling"].to_dict(source=False)}
    else:
        bf16 = evaluation_bf16(final, inp.bf16)
        metrics = evaluate_model(final, spec, inp.eval_features, D.EVAL_BATCH_SIZE, bf16, inp.tokenizer.pad_token_id)
        result = {"task": spec.name, "split": inp.eval_split, "n": len(inp.eval_features), "metrics": metrics}
    atomic_write_json(out / EVAL_FILE, result)
    atomic_write_json(out / SIZE_FILE, model_size_report(final, inp.tokenizer))


def dry_run_recipe(rec, teacher_net, tokenizer, spec, source: str, student=None, extras: dict | None = None) -> None:
    """Attach every stage's methods to a throw-away copy of the student, before anything is written.

    Errors that depend on the model (a target pattern that matches no module, a layer index past
    the teacher's depth, a group size that does not divide a row) surface here, naming the recipe
    key, instead of after the run directory has been created. ``student``: where the student
    starts when it is not a copy of the teacher (the teacher may then be None: methods that need
    one are left out, as the run leaves them out).
    """
    from ..methods.base import TrainState

    probe = copy.deepcopy(student if student is not None else teacher_net).requires_grad_(True)  # trainable
    for i, st in enumerate(rec.stages):
        state = TrainState(
            model=probe, teacher=teacher_net, total_steps=1000, steps_per_epoch=1000, task=spec,
            tokenizer=tokenizer, extras={**(extras or {}), "bf16": False, "dry_run": True, "dry_run_stage": i},
        )
        for j, m in enumerate(st.methods):
            if m.needs_teacher and teacher_net is None:
                continue
            try:
                m.model_copy(deep=True).attach(state)
            except UserError as e:
                raise UserError(f"{source}: stages.{i}.methods.{j} ({m.type}): {e}") from None  # type: ignore[attr-defined]
        probe = state.model
    del probe


def _check_same(out: Path, rec, config: dict[str, Any]) -> None:
    """A resumed run must use the recipe and data it started with."""
    from ..recipe import Recipe

    old = read_run(out)
    if old.get("kind") != "compress":
        raise UserError(f"{str(out)!r} is a {old.get('kind')!r} run, not a compress run; use another --out")
    saved = out / RECIPE_FILE
    if saved.is_file() and Recipe.from_yaml(saved.read_text(), str(saved)) != rec:
        raise UserError(
            f"--resume: the recipe differs from the one {str(out)!r} started with ({saved}); "
            "resume with the same recipe and --set values, or use --overwrite"
        )
    check_resume_settings(out, config, RESUME_KEYS)


def _check_teacher_head(teacher) -> None:
    """Warn when the teacher's head was not trained for the task (distilling from it is pointless)."""
    import warnings

    from ..models import resolve_model

    cfg = config_json(resolve_model(model_source(teacher)))
    if cfg is not None and not has_classification_head(cfg):
        warnings.warn(
            f"teacher {str(teacher)!r} has no fine-tuned classification head; run `compactbert finetune` "
            "first and pass its run directory as --teacher",
            stacklevel=3,
        )


def _merge_metrics(out: Path, rec) -> None:
    from ..train.checkpoint import atomic_write_text

    lines = []
    for i, st in enumerate(rec.stages):
        f = stage_dir(out, i, st.name) / "metrics.jsonl"
        if f.is_file():
            for line in f.read_text().splitlines():
                if line.strip():
                    lines.append(json.dumps({"stage": i, "stage_name": st.name, **json.loads(line)}))
    atomic_write_text(out / "metrics.jsonl", "\n".join(lines) + ("\n" if lines else ""))
