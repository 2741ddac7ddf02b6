"""``evaluate``: score a run's model, a model folder or a packed directory on a task's split.

A run is evaluated with the settings it ran with (``config.yaml``: sequence length, bf16, eval
batch size; for a ``compress`` run written before config.yaml recorded them, its ``recipe.yaml``),
so ``compactbert eval RUN`` reproduces the run's own ``eval.json``. A packed directory is
evaluated through the fast runtime itself (:func:`packed_logits`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..data.tasks import is_corpus_task
from ..embedding.evaluate import embedding_task, evaluate_embedding, is_embedding_task
from ..errors import UserError, positive_int
from ..loading import has_classification_head, load_for_task, load_saved, read_model_config
from ..runs import EVAL_FILE, NAME, PACKED, RECIPE_FILE, RUN, Target, open_path


def uses_activation_quantizers(model) -> bool:
    """True when some layer of ``model`` quantizes its inputs (an A8 model: W8A8, W2A8, ...)."""
    return any(getattr(m, "input_quantizer", None) is not None for m in model.modules())


def evaluation_bf16(model, bf16: bool) -> bool:
    """Whether ``model`` is evaluated under bf16 autocast when ``bf16`` is the run's setting.

    A model with activation quantizers is evaluated in FP32: bf16 autocast moves activations across
    their code boundaries (0.5-0.7 points on SST-2), and the packed runtime computes those models
    exactly (int8 products), i.e. like the FP32 evaluation.
    """
    return bool(bf16) and not uses_activation_quantizers(model)


def run_settings(target: Target) -> dict[str, Any]:
    """The run's config.yaml; a compress run that predates config.yaml's ``max_seq_length`` and
    ``bf16`` gets them from its recipe.yaml (as that run resolved them)."""
    cfg = dict(target.run_info()["config"])
    recipe = target.path / RECIPE_FILE
    if target.kind == RUN and recipe.is_file() and ("max_seq_length" not in cfg or "bf16" not in cfg):
        from ..recipe import load_plain_yaml, read_recipe_text
        from ..train.loop import bf16_supported

        rec = load_plain_yaml(read_recipe_text(recipe), str(recipe))[0] or {}  # plain YAML: no aliases, tags
        if isinstance(rec, dict):
            cfg.setdefault("max_seq_length", rec.get("max_seq_length", D.MAX_SEQ_LENGTH))
            cfg.setdefault("bf16", bool(rec.get("bf16", True)) and bf16_supported())
    return cfg


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
        path: a run directory (its ``model/`` is evaluated), a model folder, a packed directory, a
            hub id or ``"minilm-l6"``.
        task: the task; for a run directory it defaults to the run's task.
        data: where the examples are; for a run directory it defaults to the run's data.
        split: the split (default: the task's first evaluation split, ``dev``).
        max_eval_samples: evaluate a fixed random subset of this many examples.
        out: write the result to this JSON file. Without it the result goes to ``path/eval.json``
            when ``path`` is a run directory and nowhere otherwise.
        batch_size: evaluation batch size (default: the run's, else 64).
        bf16: bf16 autocast (default: the run's setting, else where supported natively; FP32 for a
            model with activation quantizers, see :func:`evaluation_bf16`).
        max_seq_length: tokenizer truncation (default: the run's, else 128).

    Returns:
        ``{"task": ..., "split": ..., "n": ..., "metrics": {...}}``.

    Raises:
        UserError: unknown path or task, unreadable data, a model whose head does not fit the task.
    """
    from ..data.sources import load_examples, normalize_split
    from ..data.tasks import get_task

    for name, value in (("batch_size", batch_size), ("max_seq_length", max_seq_length)):
        if value is not None:
            positive_int(value, name)
    target = open_path(path)
    run = target.run_info()
    cfg = run_settings(target)
    if target.kind == RUN:
        upstream = is_corpus_task(run.get("task"))  # a label-free run: its model is scored as an embedding model
        task = task or ("stsb-embed" if upstream else run.get("task"))
        data = cfg.get("eval_data" if upstream else "data") if data is None else data
        target.model_dir()  # a run without a model fails here, before the data is read
    if task is None:
        raise UserError(f"no task given for {str(path)!r}; pass --task (e.g. sst2, mnli, rt)")
    if is_embedding_task(task):  # stsb-embed: cosine similarity of sentence embeddings, no head
        out_path = result_path(target, result_file(path, task, out))
        result = evaluate_embedding(path, task, data, split, max_eval_samples, batch_size, max_seq_length)
        _write_result(out_path, result)
        return result
    spec = get_task(task)
    split = normalize_split(spec, split or spec.eval_splits[0])
    out_path = result_path(target, out)
    seq = int(max_seq_length or cfg.get("max_seq_length") or D.MAX_SEQ_LENGTH)
    bs = int(batch_size or cfg.get("eval_batch_size") or D.EVAL_BATCH_SIZE)
    if target.kind == PACKED:  # a packed directory: evaluate the fast runtime itself
        examples = load_examples(spec, split, data, max_eval_samples, D.SUBSET_SEED)
        metrics = _packed_metrics(target.path, spec, examples, seq, bs)
    else:
        check_head(read_model_config(target.model_source()), spec, path)
        examples = load_examples(spec, split, data, max_eval_samples, D.SUBSET_SEED)
        metrics = _model_metrics(target, spec, examples, seq, bs, bf16, cfg)
    result = {"task": spec.name, "split": split, "n": len(examples), "metrics": metrics}
    _write_result(out_path, result)
    return result


def _write_result(out_path: Path | None, result: dict[str, Any]) -> None:
    if out_path is not None:
        from ..train.checkpoint import atomic_write_json

        try:
            atomic_write_json(out_path, result)
        except OSError as e:
            raise UserError(f"cannot write {str(out_path)!r}: {e.strerror or e}") from None


def result_file(path: str | os.PathLike, task: str | None, out: str | os.PathLike | None = None) -> Path | None:
    """The file ``evaluate(path, task, out=out)`` writes, None for none: ``out``; else, for a run,
    its ``eval.json``, except for an embedding task that is not the run's own, which goes to
    ``eval-<task>.json`` so that the run's own evaluation is kept."""
    if out is not None:
        return Path(out)
    target = open_path(path)
    if target.kind != RUN:
        return None
    name = embedding_task(task) if task is not None else None
    if name is None or name == target.run_info().get("task"):
        return target.path / EVAL_FILE
    return target.path / f"eval-{name}.json"


def result_path(target: Target, out: str | os.PathLike | None) -> Path | None:
    """Where ``evaluate`` writes: ``out``, else a run's ``eval.json``, else nowhere (checked first)."""
    out_path = Path(out) if out is not None else (target.path / EVAL_FILE if target.kind == RUN else None)
    if out_path is not None and out_path.exists() and out_path.is_dir():
        raise UserError(f"--out {str(out_path)!r} is a directory; expected a JSON file path")
    if out_path is not None and not out_path.parent.is_dir():
        raise UserError(f"cannot write {str(out_path)!r}: folder {str(out_path.parent)!r} does not exist")
    if out is not None and target.kind != NAME:  # never a file of the model being evaluated
        from ..outdir import check_not_source

        check_not_source(out, [target.model_dir()])
    return out_path


def _model_metrics(target: Target, spec, examples, seq: int, batch_size: int, bf16: bool | None, cfg) -> dict:
    from ..data.batching import encode
    from ..train.loop import bf16_supported, evaluate_model

    if target.kind == RUN:
        net, tokenizer = load_saved(target.model_dir(), "the model of run")
    else:
        net, tokenizer = load_for_task(target.given, spec)
    features = encode(examples, tokenizer, seq)
    if bf16 is None:
        bf16 = evaluation_bf16(net, cfg.get("bf16", bf16_supported()))
    return evaluate_model(net, spec, features, batch_size, bool(bf16), tokenizer.pad_token_id)


def _packed_metrics(path: Path, spec, examples, seq: int, batch_size: int) -> dict:
    import numpy as np

    from ..data.tasks import compute_metrics

    logits = packed_logits(path, examples, seq, batch_size)
    if logits.shape[1] != spec.num_labels:
        raise UserError(f"packed model {str(path)!r} has {logits.shape[1]} outputs but task {spec.name} needs "
                        f"{spec.num_labels}; evaluate it on the task it was trained for")
    return compute_metrics(spec, logits.numpy(), np.asarray([ex.label for ex in examples]))


def check_head(config, spec, path) -> None:
    """Refuse a model whose trained classification head does not fit the task; warn if it has none."""
    if not has_classification_head(config):
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


def packed_logits(path: str | os.PathLike, examples, max_seq_length: int = D.MAX_SEQ_LENGTH,
                  batch_size: int = D.EVAL_BATCH_SIZE):
    """Logits of a packed directory's runtime on ``examples``: (len(examples), num_labels) float32.

    Examples are run in length-sorted batches (little padding) and returned in their own order.
    """
    import torch

    from ..data.batching import encode
    from ..runtime import load as load_runtime

    model = load_runtime(path)
    if model.tokenizer is None:
        raise UserError(f"packed model {str(path)!r} has no tokenizer/ folder, so it cannot read text; re-export "
                        "it with its tokenizer")
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
