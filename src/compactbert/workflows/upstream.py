"""Upstream compression: ``compress --task corpus``, label-free, on task-agnostic text.

Prune Once for All's upstream half, and compression of a sentence-embedding model as one: the
student and the teacher are bare encoders (no task head; the teacher is the dense model itself
unless ``--teacher`` says otherwise), the training data is the sentences of a corpus
(:func:`compactbert.data.corpus.load_corpus`: the embedded ``general-en``, or a ``.txt`` /
``.jsonl`` file), and the only objective is distillation without labels: the ``sentence`` term
(the pooled, normalised sentence embedding, pooled as the model's sentence-transformers config
says), plus hidden states and attention when the recipe's weights ask for them. Every other method
(pruning, quantization, layer reduction) works as on a task.

Evaluation (during training and of the final model, ``eval.json``):

* ``teacher_cosine``: the mean cosine similarity of the student's and the teacher's sentence
  embeddings of the corpus's held-out ``dev`` sentences (always);
* ``spearman_cosine`` / ``pearson_cosine``: STS-B dev by the cosine of the two sentences'
  embeddings (x 100, as ``eval --task stsb-embed``), when ``--eval-data`` names STS-B data; it is
  then the main metric.

``eval.json`` says in ``evaluated`` what each metric was computed on (and why STS-B was not).
The final ``model/`` is a bare encoder with the sentence-transformers pooling config
(``modules.json``, ``1_Pooling/``), so ``eval RUN --task stsb-embed``, ``export`` (a headless
packed embedding model) and ``finetune`` / ``compress --model RUN --task TASK`` (a new head on the
compressed encoder, its masks and quantizers rebuilt) all take it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .. import defaults as D
from ..errors import UserError

__all__ = [
    "corpus_examples", "load_encoder", "model_pooling", "EmbeddingEvaluator", "check_label_free_recipe",
    "corpus_task",
]


def corpus_examples(data, split: str, max_sentences: int | None) -> list:
    """The sentences of a corpus split as label-free :class:`~compactbert.data.sources.Example` s."""
    from ..data.corpus import load_corpus
    from ..data.sources import Example

    return [Example(s, None, 0) for s in load_corpus(data, split, max_sentences, D.SUBSET_SEED)]


def load_encoder(model: str | os.PathLike, what: str) -> tuple[Any, Any]:
    """``(bare encoder, tokenizer)`` of a model folder, run directory, hub id or ``minilm-l6``: a
    classifier's head is dropped, compressed layers (masks, quantizers) are rebuilt.

    Raises:
        UserError: the model cannot be found or loaded, has no tokenizer, or has no token embeddings.
    """
    from ..loading import first_line, load_saved, quiet_transformers
    from ..models import resolve_model
    from ..runs import model_source

    path = resolve_model(model_source(model))
    if Path(path).is_dir():
        net, tokenizer = load_saved(path, f"{what} {str(model)!r}", headless=True)
    else:  # a hub id
        from transformers import AutoModel, AutoTokenizer

        with quiet_transformers():
            try:
                net = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"cannot load {what} {str(model)!r} ({first_line(e)})") from None
    if tokenizer is None:
        raise UserError(f"{what} {str(model)!r} has no tokenizer files; it cannot encode text")
    if getattr(net, "get_input_embeddings", lambda: None)() is None:
        raise UserError(f"{what} {str(model)!r} has no token embeddings to pool; expected an encoder such as BERT or MiniLM")
    return net, tokenizer


def model_pooling(model: str | os.PathLike):
    """The sentence pooling of ``model`` (its sentence-transformers config, a run's source model's,
    else mean + L2 normalisation); an unsupported pooling config is a UserError naming it."""
    from ..embedding.encoder import find_pooling
    from ..models import resolve_model
    from ..runs import NAME, open_path

    target = open_path(model)
    if target.kind == NAME:
        target = open_path(resolve_model(str(model)))
    return find_pooling(target)


def corpus_task(stsb: bool):
    """The label-free task spec, its main metric the STS-B Spearman when STS-B is evaluated."""
    from ..data.tasks import CORPUS_TASK

    return dataclasses.replace(CORPUS_TASK, main_metric="spearman_cosine" if stsb else "teacher_cosine")


def check_label_free_recipe(rec, source: str) -> None:
    """Every stage of a label-free run needs a distillation method with a weight on it (there is no
    task loss); the logits term does not exist there."""
    for i, st in enumerate(rec.stages):
        kd = [m for m in st.methods if getattr(m, "type", None) == "distillation"]
        if not any(m.alpha < 1 for m in kd):
            raise UserError(
                f"{source}: stages.{i} ({st.name}) has no distillation method with alpha < 1; --task corpus has no "
                "labels, so every stage needs one: add {type: distillation, alpha: 0, weights: {logits: 0, sentence: 1.0}}"
            )


class EmbeddingEvaluator:
    """``evaluator(model) -> metrics`` of a bare encoder (see the module docstring).

    Args:
        teacher: the teacher encoder (its dev-sentence embeddings are computed once, here).
        tokenizer: the student's tokenizer.
        pooling: the :class:`~compactbert.nn.pooling.Pooling` of both.
        dev_sentences: held-out corpus sentences; ``corpus``: what to call the corpus.
        stsb: STS-B examples (``text_a``, ``text_b``, gold ``label``) or None; ``stsb_source``: their data.
        max_length: tokenizer truncation; batch_size: sentences per forward pass.
    """

    def __init__(self, teacher, tokenizer, pooling, dev_sentences: list[str], corpus: str, stsb: list | None,
                 stsb_source: str | None, max_length: int, batch_size: int = D.EVAL_BATCH_SIZE):
        self.tokenizer, self.pooling, self.dev = tokenizer, pooling, dev_sentences
        self.corpus, self.stsb, self.stsb_source = corpus, stsb, stsb_source
        self.max_length, self.batch_size = max_length, batch_size
        self.teacher_emb = self._encode(teacher, dev_sentences)
        self.main_metric = "spearman_cosine" if stsb else "teacher_cosine"

    def _encode(self, model, sentences: list[str]):
        from ..embedding.encoder import HFSentenceEncoder

        was_training = model.training
        try:
            return HFSentenceEncoder(model, self.tokenizer, self.pooling).encode(
                sentences, batch_size=self.batch_size, max_length=self.max_length)
        finally:
            model.train(was_training)

    def __call__(self, model) -> dict[str, float]:
        import torch.nn.functional as F

        emb = self._encode(model, self.dev)
        metrics = {"teacher_cosine": float(F.cosine_similarity(emb, self.teacher_emb, dim=-1).mean())}
        if self.stsb:
            from ..embedding.evaluate import similarity_metrics

            texts = list(dict.fromkeys(t for ex in self.stsb for t in (ex.text_a, ex.text_b)))
            row = {t: i for i, t in enumerate(texts)}
            e = self._encode(model, texts).numpy()
            metrics.update(similarity_metrics(e[[row[ex.text_a] for ex in self.stsb]], e[[row[ex.text_b] for ex in self.stsb]],
                                              [ex.label for ex in self.stsb]))
        return metrics

    def evaluated(self) -> dict[str, str]:
        """What each metric was computed on, for ``eval.json``."""
        out = {"teacher_cosine": f"mean cosine similarity of the student's and the teacher's sentence embeddings of "
                                 f"{len(self.dev)} held-out sentences of {self.corpus} (its dev split)"}
        if self.stsb:
            out["spearman_cosine"] = (f"STS-B dev ({self.stsb_source}, {len(self.stsb)} pairs): Spearman x 100 of the "
                                      "cosine similarities of the two sentences' embeddings against the gold scores")
        else:
            out["spearman_cosine"] = ("not evaluated: no --eval-data (give STS-B data, e.g. ../shared/data/glue, or run "
                                      "`compactbert eval RUN --task stsb-embed --data ...`)")
        return out

