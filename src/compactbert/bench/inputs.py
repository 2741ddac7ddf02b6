"""The inputs a benchmark feeds each model, built in the parent process with that model's own tokenizer.

**Timing inputs** (latency at batch 1, throughput at batch 32) are ``seq_len`` tokens long with **no
padding**: every position is a real token and the attention mask is all ones. With a task, the rows
are real dev-set text: the examples' tokens are concatenated into one stream (pairs as text_a then
text_b) and cut into rows of ``[CLS] + seq_len - 2 tokens + [SEP]``, wrapping around when the dev set
is short. Without a task they are random non-special token ids. No padding matters because a runtime
that skips padded positions would otherwise look faster than it is at "sequence length 128" (a real
SST-2 sentence is ~13 tokens: padded to 128 it would be 90% padding).

**Accuracy inputs** are the task's dev examples as a user would run them: tokenized with truncation
at ``max_seq_length``, sorted by length and cut into batches, each padded to its own longest row
(:mod:`compactbert.data.batching`).

Everything is numpy int64 ``(batch, seq)`` so a child process can run ONNX Runtime without importing
torch or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["timing_batch", "eval_batches", "save_inputs", "load_inputs", "uses_token_types"]


def uses_token_types(tokenizer) -> bool:
    """True when the tokenizer produces ``token_type_ids`` (BERT-style models)."""
    return "token_type_ids" in (getattr(tokenizer, "model_input_names", None) or [])


def _boundary_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that open and close a single-text sequence (``[CLS]``/``[SEP]``, ``<s>``/``</s>``)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    # The special tokens are whatever surrounds the plain tokens.
    for start in range(len(ids) - len(inner) + 1):
        if ids[start : start + len(inner)] == inner:
            return list(ids[:start]), list(ids[start + len(inner) :])
    return [], []


def _text_stream(tokenizer, texts: list[tuple[str, str | None]]) -> np.ndarray:
    a = [t[0] for t in texts]
    enc_a = tokenizer(a, add_special_tokens=False)["input_ids"]
    pairs = [i for i, t in enumerate(texts) if t[1]]
    enc_b: dict[int, list[int]] = {}
    if pairs:
        got = tokenizer([texts[i][1] for i in pairs], add_special_tokens=False)["input_ids"]
        enc_b = dict(zip(pairs, got))
    stream: list[int] = []
    for i, ids in enumerate(enc_a):
        stream.extend(ids)
        stream.extend(enc_b.get(i, []))
    return np.asarray(stream, dtype=np.int64)


def timing_batch(
    tokenizer,
    texts: list[tuple[str, str | None]] | None,
    batch: int,
    seq_len: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """``batch`` rows of exactly ``seq_len`` real tokens (no padding) for timing.

    Args:
        tokenizer: the model's tokenizer (its vocabulary decides the ids).
        texts: ``(text_a, text_b or None)`` pairs to take tokens from, or None for random ids.
        batch: rows.
        seq_len: tokens per row, special tokens included (>= 3).
        seed: seed of the random ids (no texts) or of the starting offset (texts).

    Returns:
        ``input_ids``, ``attention_mask`` (all ones) and, when the tokenizer uses them,
        ``token_type_ids`` (all zeros); each int64 ``(batch, seq_len)``.
    """
    head, tail = _boundary_ids(tokenizer)
    body = seq_len - len(head) - len(tail)
    if body < 1:
        raise ValueError(f"seq_len {seq_len} leaves no room for tokens after the special tokens")
    rng = np.random.default_rng(seed)
    stream = _text_stream(tokenizer, texts) if texts else np.zeros(0, dtype=np.int64)
    if stream.size == 0:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        vocab = np.asarray([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
        rows = vocab[rng.integers(0, vocab.size, (batch, body))]  # (batch, body)
    else:
        reps = -(-(batch * body) // stream.size) + 1  # enough copies to cut every row
        start = int(rng.integers(0, stream.size))
        flat = np.tile(stream, reps)[start : start + batch * body]
        if flat.size < batch * body:  # pragma: no cover - reps makes this impossible
            flat = np.resize(flat, batch * body)
        rows = flat.reshape(batch, body)  # (batch, body)
    ids = np.concatenate(
        [np.tile(np.asarray(head, dtype=np.int64), (batch, 1)), rows, np.tile(np.asarray(tail, dtype=np.int64), (batch, 1))],
        axis=1,
    )  # (batch, seq_len)
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if uses_token_types(tokenizer):
        out["token_type_ids"] = np.zeros_like(ids)
    return out


def eval_batches(tokenizer, examples, max_seq_length: int, batch_size: int) -> tuple[list[dict[str, np.ndarray]], list[list[int]], list]:
    """Dev examples as padded batches, longest first.

    Returns:
        ``(batches, order, labels)``: the feeds (int64 numpy arrays, no labels), the example indices
        of each batch (for :func:`compactbert.data.batching.restore_order`), and the labels in the
        original example order.
    """
    from ..data.batching import Collator, batch_order, encode, feature_lengths

    feats = encode(examples, tokenizer, max_seq_length)
    order = batch_order(feature_lengths(feats), batch_size, shuffle=False, group_by_length=True)
    collate = Collator(tokenizer.pad_token_id)
    batches = []
    for idx in order:
        b = collate([feats[i] for i in idx])
        b.pop("labels", None)
        batches.append({k: v.numpy().astype(np.int64) for k, v in b.items()})
    return batches, order, [e.label for e in examples]


def save_inputs(path: str | Path, timing: dict[str, np.ndarray], evals: list[dict[str, np.ndarray]] | None) -> None:
    """Write the inputs for one model to an ``.npz`` file read by :func:`load_inputs`."""
    arrays: dict[str, Any] = {f"timing__{k}": v for k, v in timing.items()}
    for i, b in enumerate(evals or []):
        for k, v in b.items():
            arrays[f"eval{i:06d}__{k}"] = v
    np.savez(path, **arrays)


def load_inputs(path: str | Path) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """``(timing batch, eval batches)`` from :func:`save_inputs`."""
    timing: dict[str, np.ndarray] = {}
    evals: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            group, name = key.split("__", 1)
            if group == "timing":
                timing[name] = data[key]
            else:
                evals.setdefault(int(group[4:]), {})[name] = data[key]
    return timing, [evals[i] for i in sorted(evals)]
