"""Toy data and tiny random models for the tests (no download); importable as ``toy`` (pytest's
``pythonpath`` includes ``tests/``).

* :func:`write_toy_glue` writes a small GLUE-format folder (``SST-2/train.tsv`` and ``dev.tsv``,
  or another task's columns) whose labels a tiny model can learn in a few dozen steps.
* :func:`make_tiny_model` saves a randomly initialised BERT, DistilBERT or RoBERTa (a few thousand
  parameters) with a matching tokenizer built from the toy vocabulary: WordPiece for BERT and
  DistilBERT, byte-level BPE (``<pad>`` = 1, no token types) for RoBERTa.

Example:
    >>> data = write_toy_glue(tmp / "glue", "sst2")            # doctest: +SKIP
    >>> model_dir = make_tiny_model(tmp / "tiny-bert", "bert")  # doctest: +SKIP
    >>> compactbert.finetune(str(model_dir), "sst2", data=str(data), out=tmp / "run", epochs=1)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from pathlib import Path

POSITIVE = ("good", "great", "fine", "nice", "superb", "lovely", "fun", "moving")
NEGATIVE = ("bad", "awful", "poor", "dull", "boring", "weak", "messy", "flat")
NEUTRAL = (
    "the", "a", "movie", "film", "plot", "actors", "was", "is", "very", "quite", "story", "scenes",
    "and", "but", "with", "of", "this", "that", "director", "music", "cast", "ending",
)
ARCHS = ("bert", "distilbert", "roberta")


def toy_sentence(rng: random.Random, positive: bool) -> str:
    """A short sentence of neutral words with one or two words of the given sentiment."""
    words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 9))]
    for _ in range(rng.randint(1, 2)):
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
    return " ".join(words)


def toy_rows(task: str, n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a toy table for ``task`` in its GLUE column names.

    Single-sentence classification tasks get a sentiment sentence and its label; pair tasks get two
    sentences whose label says whether they share their sentiment; STS-B gets a score in [0, 5].
    """
    from compactbert.data.tasks import get_task

    spec = get_task(task)
    rng = random.Random(seed)
    header = [*spec.text_columns, spec.label_column]
    rows = []
    for _ in range(n):
        pos_a = rng.random() < 0.5
        a = toy_sentence(rng, pos_a)
        if spec.is_pair:
            pos_b = rng.random() < 0.5
            b = toy_sentence(rng, pos_b)
            if spec.is_regression:
                label = f"{(4.0 if pos_a == pos_b else 1.0) + rng.random():.2f}"
            else:
                label = str(spec.label_names[int(pos_a == pos_b)]) if spec.name == "mnli" else str(int(pos_a == pos_b))
            rows.append([a, b, label])
        else:
            rows.append([a, str(int(pos_a))])
    return header, rows


def write_toy_glue(root: str | Path, task: str = "sst2", n_train: int = 64, n_dev: int = 32, seed: int = 0) -> Path:
    """Write ``root/<GLUE dir>/{train,dev}.tsv`` for ``task`` and return ``root`` (a GLUE root).

    MNLI gets ``dev_matched.tsv`` and ``dev_mismatched.tsv`` instead of ``dev.tsv``.
    """
    from compactbert.data.tasks import get_task

    spec = get_task(task)
    folder = Path(root) / (spec.glue_dir or spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": (n_train, seed)}
    for k, split in enumerate(spec.eval_splits):
        splits[split] = (n_dev, seed + 1 + k)
    for split, (n, s) in splits.items():
        header, rows = toy_rows(spec.name, n, s)
        lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return Path(root)


def toy_vocab() -> list[str]:
    """WordPiece vocabulary: BERT's special tokens, the toy words, letters and ``##`` letters."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = sorted(set(POSITIVE + NEGATIVE + NEUTRAL))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *("##" + c for c in letters), ".", ","]


def _bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    rng = random.Random(0)
    corpus = [toy_sentence(rng, rng.random() < 0.5) for _ in range(200)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=400, min_frequency=1, show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizer(vocab=model["vocab"], merges=merges)


def make_tiny_model(
    out_dir: str | Path,
    arch: str = "bert",
    num_labels: int = 2,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    dropout: float = 0.1,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised ``arch`` sequence classifier and its tokenizer to ``out_dir``.

    Args:
        out_dir: folder to write (config.json, model.safetensors, tokenizer files).
        arch: ``"bert"``, ``"distilbert"`` or ``"roberta"``.
        num_labels: size of the classification head.
        hidden_size: hidden width.
        num_layers: transformer layers.
        num_heads: attention heads.
        intermediate_size: feed-forward width.
        dropout: hidden and attention dropout (0 makes training independent of the RNG).
        seed: seed of the random weights.

    Returns:
        ``out_dir``.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertTokenizer,
        DistilBertConfig,
        DistilBertTokenizer,
        RobertaConfig,
    )

    from compactbert.loading import quiet_transformers

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if arch == "roberta":
        tok = _bpe_tokenizer()
        config = RobertaConfig(
            vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=intermediate_size,
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
            max_position_embeddings=130, type_vocab_size=1,  # positions start after the pad id
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            num_labels=num_labels,
        )
    else:
        vocab = {w: i for i, w in enumerate(toy_vocab())}
        if arch == "bert":
            tok = BertTokenizer(vocab=vocab)
            config = BertConfig(
                vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers,
                num_attention_heads=num_heads, intermediate_size=intermediate_size,
                hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                max_position_embeddings=128, pad_token_id=0, num_labels=num_labels,
            )
        else:
            tok = DistilBertTokenizer(vocab=vocab)
            config = DistilBertConfig(
                vocab_size=len(vocab), dim=hidden_size, n_layers=num_layers, n_heads=num_heads,
                hidden_dim=intermediate_size, dropout=dropout, attention_dropout=dropout,
                seq_classif_dropout=dropout, max_position_embeddings=128, pad_token_id=0, num_labels=num_labels,
            )
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    with quiet_transformers():  # no progress bar on stderr: tests read stderr
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    return out
