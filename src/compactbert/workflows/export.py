"""``export``: a run's model (or a model folder) as a packed directory or ONNX; ``load``: a packed
directory into the fast CPU runtime."""

from __future__ import annotations

import os
from pathlib import Path

from ..embedding.encoder import embedding_model_pooling
from ..errors import UserError
from ..loading import load_saved, quiet_transformers
from ..models import resolve_model
from ..runs import NAME, Target, open_path

FORMATS = ("packed", "onnx", "sentence-transformers")
# --vocab-from: the splits whose tokens --prune-vocab keeps
VOCAB_FROM = ("all", "train")
UNSEEN_TOKENS = ("unk", "nearest")


def export(
    path: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "packed",
    prune_vocab: bool = False,
    task: str | None = None,
    data: str | os.PathLike | None = None,
    max_positions: int | None = None,
    overwrite: bool = False,
    vocab_from: str = "all",
    unseen_tokens: str = "unk",
) -> Path:
    """Export a run directory (its ``model/``) or a model folder.

    Args:
        path: a finetune/compress run directory or a model folder.
        out: the folder to write. It must be new, empty, or an earlier export of the same format
            (replaced); any other folder only with ``overwrite`` (replaced as a whole). It may never
            be, hold or lie inside the model folder being exported. Written into a staging folder
            next to it, then renamed into place (:mod:`compactbert.outdir`).
        format: ``packed`` (bit-packed weights, pruned structure removed; load with
            :func:`compactbert.load`), ``onnx`` (FP32 ONNX for ONNX Runtime) or
            ``sentence-transformers`` (the encoder as a sentence-transformers folder: dense FP32
            safetensors, pooling config, FP32 / FP16 / int8 ONNX; see
            :mod:`compactbert.export.sentence_transformers`).
        prune_vocab: keep only the embedding rows of tokens that occur in the task's training and
            dev data (plus special tokens); the tokenizer is remapped.
        task, data: the task data for ``prune_vocab`` (default: the run's own).
        vocab_from: the splits whose tokens ``prune_vocab`` keeps: ``"all"`` (training and dev, the
            default) or ``"train"`` (training only: the dev metric of the export then measures what
            the pruning costs on text with tokens it never saw).
        unseen_tokens: with ``prune_vocab``, what a token that is not kept reads as: ``"unk"`` (the
            unknown token) or ``"nearest"`` (the kept token whose embedding is closest).
        max_positions: keep only the first N position embeddings (inputs longer than N are refused).
        overwrite: replace a non-empty ``out`` that is not an earlier export.

    Returns:
        The output folder.
    """
    from ..outdir import check_output, staged_output

    out = Path(out)
    if format not in FORMATS:
        raise UserError(f"--format {format!r} is not valid; valid: {', '.join(FORMATS)}")
    target = open_path(path)
    if target.kind == NAME and Path(resolve_model(str(path))).is_dir():  # minilm-l6: the embedded model folder
        target = open_path(resolve_model(str(path)))
    if target.kind == NAME:
        raise UserError(f"{str(path)!r} does not exist; expected a run directory or a model folder")
    if format != "packed" and (prune_vocab or max_positions is not None):
        raise UserError("--prune-vocab and --max-positions apply to --format packed only")
    if vocab_from not in VOCAB_FROM:
        raise UserError(f"--vocab-from {vocab_from!r} is not valid; valid: {', '.join(VOCAB_FROM)}")
    if unseen_tokens not in UNSEEN_TOKENS:
        raise UserError(f"--unseen-tokens {unseen_tokens!r} is not valid; valid: {', '.join(UNSEEN_TOKENS)}")
    if not prune_vocab and (vocab_from, unseen_tokens) != (VOCAB_FROM[0], UNSEEN_TOKENS[0]):
        raise UserError("--vocab-from and --unseen-tokens apply with --prune-vocab only")
    own = {"onnx": is_onnx_output, "packed": is_packed_output, "sentence-transformers": is_st_output}[format]
    check_output(out, own=own, sources=[target.model_dir()], overwrite=overwrite, command=f"export --format {format}")
    if format == "sentence-transformers":
        return _export_st(target, out)
    if format == "onnx":
        from ..export.onnx import export_onnx_path

        with staged_output(out) as tmp:
            export_onnx_path(target.path, tmp)
        return out
    from ..export.pack import export_packed

    net, tokenizer = load_saved(target.model_dir(), "model")
    # a sentence-embedding model (a sentence-transformers folder without a trained head) is packed
    # as its bare encoder with its pooling: the runtime's encode() reads it
    pooling = embedding_model_pooling(target.model_dir())
    if pooling is not None:
        net = net.base_model
    texts = vocab_texts(target, task, data, train_only=vocab_from == "train") if prune_vocab else None
    with staged_output(out) as tmp:
        export_packed(net, tokenizer, tmp, prune_vocab_texts=texts, max_positions=max_positions, unseen_tokens=unseen_tokens,
                      pooling=pooling.to_dict(source=False) if pooling is not None else None)
    return out


def _export_st(target: Target, out: Path) -> Path:
    """A sentence-transformers folder of the model's encoder, with the pooling it declares (its own
    config, a run's source model's, else mean + normalisation)."""
    from ..embedding.encoder import find_pooling
    from ..export.sentence_transformers import export_sentence_transformers
    from ..outdir import staged_output

    pooling = find_pooling(target)
    net, tokenizer = load_saved(target.model_dir(), "model", headless=True)
    if tokenizer is None:
        raise UserError(f"{target.given!r} has no tokenizer files; a sentence-transformers folder needs them")
    with staged_output(out) as tmp, quiet_transformers():
        export_sentence_transformers(net, tokenizer, pooling, tmp)
    return out


def is_st_output(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier sentence-transformers export (``export`` replaces it)."""
    from ..export.sentence_transformers import is_sentence_transformers_export

    return is_sentence_transformers_export(folder)


def is_packed_output(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier packed export and nothing else (``export`` replaces it)."""
    from ..export.format.write import is_packed_folder

    return is_packed_folder(folder)


def is_onnx_output(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier ONNX export and nothing else (``export`` replaces it)."""
    from ..export.format.tokenizer import TOKENIZER_FILES
    from ..export.onnx import EXPORT_INFO_FILE, ONNX_FILE, ONNX_INT8_FILE

    own = {ONNX_FILE, ONNX_FILE + ".data", ONNX_INT8_FILE, "config.json", EXPORT_INFO_FILE, *TOKENIZER_FILES}
    names = {p.name for p in folder.iterdir()}
    return ONNX_FILE in names and EXPORT_INFO_FILE in names and names <= own


def vocab_texts(target: Target, task: str | None, data, train_only: bool = False) -> list:
    """Every text of the task's training and evaluation splits (only the training split with
    ``train_only``; the run's task and data by default): the tokens ``--prune-vocab`` keeps."""
    from ..data.sources import load_examples
    from ..data.tasks import get_task

    run = target.run_info()
    task = task or run.get("task")
    if task is None:
        raise UserError("--prune-vocab needs the task data: give --task (and --data) for a model folder")
    spec = get_task(task)
    data = data if data is not None else run["config"].get("data")
    texts: list = []
    for split in ("train",) if train_only else ("train", *spec.eval_splits):
        for ex in load_examples(spec, split, data):
            texts.append(ex.text_a if ex.text_b is None else (ex.text_a, ex.text_b))
    return texts


def load(path: str | os.PathLike, backend: str = "auto", **kwargs):
    """Load a packed directory for fast CPU inference on the fastest backend here.

    ``backend="auto"`` (the default) builds compactbert's runtime and every installed engine (ONNX
    Runtime, OpenVINO), times each on a short probe, and keeps the fastest at batch 1 for single
    sentences and the fastest per row for batches; ``model.describe()`` says which. Pass
    ``backend="compactbert" | "onnxruntime" | "openvino"`` to force one. Other options: see
    :func:`compactbert.runtime.load`.
    """
    from ..runtime import load as load_runtime

    return load_runtime(path, backend=backend, **kwargs)
