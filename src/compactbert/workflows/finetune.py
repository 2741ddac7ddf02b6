"""``finetune``: train a model with a task head and leave a run directory.

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

import os
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..errors import UserError
from ..fileio import path_exists, user_path
from ..loading import load_for_task, load_saved, quiet_transformers
from ..runs import EVAL_FILE, MODEL_DIR, model_source
from .rundir import check_output_dir, check_resume_settings, finish_run, now, start_run

# Settings that decide the batches and the optimisation: a resumed run must use the same ones.
RESUME_KEYS = (
    "model", "task", "data", "epochs", "max_steps", "lr", "batch_size", "max_seq_length", "max_train_samples",
    "max_eval_samples", "seed", "warmup_ratio", "weight_decay",
)


def train_config(**kwargs):
    """A :class:`compactbert.train.loop.TrainConfig`; a setting out of range is a UserError naming it."""
    from pydantic import ValidationError

    from ..train.loop import TrainConfig

    try:
        return TrainConfig(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else "setting"
        raise UserError(f"invalid {name.replace('_', '-')} {err.get('input')!r}: {err['msg'].lower()}") from None


def data_ref(data: str | os.PathLike | None) -> str | None:
    """``data`` as config.yaml records it: an existing local path made absolute, else as given."""
    if data is None:
        return None
    ref = str(data)
    path = user_path(ref)
    return str(path.resolve()) if path_exists(path) else ref


def finetune(
    model: str | os.PathLike = D.MODEL,
    task: str = D.TASK,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike = "runs/finetune",
    epochs: float = D.EPOCHS,
    lr: float = D.LR,
    batch_size: int = D.BATCH_SIZE,
    max_seq_length: int = D.MAX_SEQ_LENGTH,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = D.SEED,
    bf16: bool | None = None,
    resume: bool = False,
    overwrite: bool = False,
    eval_every: int | None = None,
    save_every: int | None = None,
    max_steps: int | None = None,
    warmup_ratio: float = D.WARMUP_RATIO,
    weight_decay: float = D.WEIGHT_DECAY,
    eval_batch_size: int = D.EVAL_BATCH_SIZE,
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
        epochs, max_steps: passes over the training data (fractions allowed); or a number of
            optimizer steps, which overrides ``epochs``.
        lr, warmup_ratio, weight_decay: AdamW's peak learning rate (linear warm-up over that share
            of the steps, then linear decay) and weight decay.
        batch_size, eval_batch_size: global batch size (all processes together); for evaluation.
        max_seq_length: longest tokenized input.
        max_train_samples, max_eval_samples: train / evaluate on a fixed random subset of this many.
        seed: seed of the new head, batch order and dropout.
        bf16: bf16 autocast; None uses it where the hardware supports it natively.
        resume, overwrite: continue the run in ``out`` from its last checkpoint; or start again,
            deleting a previous run's files there.
        eval_every, save_every: evaluate (and checkpoint) every N steps, None: each epoch; write a
            checkpoint every N steps, None: at each evaluation.
        tensorboard, progress: also write TensorBoard logs in ``out/tensorboard``; show a progress bar.

    Returns:
        The run directory. ``out/model`` holds the best checkpoint and ``out/eval.json`` its metrics.

    Raises:
        UserError: unknown task, unreadable or malformed data, model not found, output directory
            that holds something else, or settings out of range. Nothing is written before all
            inputs have been checked.
    """
    from accelerate import PartialState

    from ..data.tasks import get_task
    from ..train.loop import bf16_supported, cpu_processes

    # Every input is checked before anything is written; in a multi-process run by every process, and
    # the main process writes only after the barrier in _decide_mode.
    state = PartialState(cpu=cpu_processes())
    spec = get_task(task)
    out = Path(out)
    mode = check_output_dir(out, resume=resume, overwrite=overwrite, sources=[model])
    settings = dict(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, eval_batch_size=eval_batch_size,
                    max_seq_length=max_seq_length, seed=seed, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
                    eval_every=eval_every, save_every=save_every, tensorboard=tensorboard)
    cfg = train_config(**settings, bf16=bf16_supported() if bf16 is None else bf16, progress=progress)
    config = {
        "model": str(model), "task": spec.name, "data": data_ref(data), "out": str(out), **settings,
        "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples, "bf16": cfg.bf16,
    }
    mode = _decide_mode(state, out, mode, config)
    net, tokenizer, train_f, eval_f, eval_split = _inputs(model, spec, data, max_train_samples, max_eval_samples,
                                                          max_seq_length, seed)
    info = start_run(out, mode, _run_info(spec, model, state.num_processes), config, state)
    _train_and_finish(state, out, mode, info, net, tokenizer, spec, train_f, eval_f, eval_split, cfg)
    return out


def _run_info(spec, model, num_processes: int) -> dict[str, Any]:
    """The ``run.json`` of a new finetune run."""
    from .. import __version__

    return {"kind": "finetune", "task": spec.name, "model": str(model), "version": __version__, "status": "running",
            "created": now(), "num_processes": num_processes}


def _decide_mode(state, out: Path, mode: str, config: dict[str, Any]) -> str:
    """Check a resumed run's settings; with several processes, every one takes the main process's
    decision (this is also the barrier before anything is written)."""
    if mode == "resume":
        check_resume_settings(out, config, RESUME_KEYS)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        mode = broadcast_object_list([mode], from_process=0)[0]
    return mode


def _inputs(model, spec, data, max_train_samples, max_eval_samples, max_seq_length: int, seed: int):
    """The model with its new head, its tokenizer, and the encoded train and eval sets."""
    from accelerate.utils import set_seed

    from ..data.batching import encode
    from ..data.sources import load_examples
    from ..models import resolve_model

    resolve_model(model_source(model))  # a missing path fails here, before the data is read
    train_ex = load_examples(spec, "train", data, max_train_samples, D.SUBSET_SEED)
    eval_split = spec.eval_splits[0]
    eval_ex = load_examples(spec, eval_split, data, max_eval_samples, D.SUBSET_SEED)
    set_seed(seed)  # the new head's weights
    net, tokenizer = load_for_task(model, spec)
    return net, tokenizer, encode(train_ex, tokenizer, max_seq_length), encode(eval_ex, tokenizer, max_seq_length), eval_split


def _train_and_finish(state, out: Path, mode: str, info, net, tokenizer, spec, train_features, eval_features,
                      eval_split: str, cfg) -> None:
    """Train, then (main process) evaluate the best checkpoint as saved and mark the run done."""
    from ..train.checkpoint import atomic_write_json
    from ..train.loop import evaluate_model, train

    with quiet_transformers():
        result = train(net, tokenizer, spec, train_features, eval_features, cfg, out, resume=(mode == "resume"))
    if state.is_main_process:
        best, best_tok = load_saved(out / MODEL_DIR, "model")
        metrics = evaluate_model(best, spec, eval_features, cfg.eval_batch_size, cfg.bf16, best_tok.pad_token_id)
        atomic_write_json(out / EVAL_FILE, {"task": spec.name, "split": eval_split, "n": len(eval_features), "metrics": metrics})
        finish_run(out, info, steps=result.steps, best_step=result.best_step, best_metric=result.best_metric)
    state.wait_for_everyone()
