"""Tokenize examples, order them into batches, and pad each batch only to its own longest row.

SST-2 sentences average about 13 tokens; padding every batch to ``max_seq_length`` (128) would
spend most of the compute on padding. So:

* :func:`encode` tokenizes without padding (pairs truncated together, longest first);
* :func:`batch_order` groups examples of similar length into the same batch (shuffled, deterministic
  for a given seed and epoch), or for evaluation sorts them by length and lets the caller restore the
  original order with :func:`restore_order`;
* :class:`Collator` pads a batch to its longest row (dynamic padding) and builds the attention mask.

Example::

    feats = encode(examples, tokenizer, max_seq_length=128)
    collate = Collator(tokenizer.pad_token_id)
    for idx in batch_order(feature_lengths(feats), 32, seed=0, epoch=0):
        batch = collate([feats[i] for i in idx])  # input_ids: (32, longest in this batch)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .sources import Example

__all__ = ["encode", "Collator", "batch_order", "restore_order", "feature_lengths", "MEGA_BATCHES", "forward_names",
           "pad_id_of"]

# Length grouping sorts within windows of this many batches: wide enough that neighbours have
# similar lengths, narrow enough that each epoch still sees a different mix of batches.
MEGA_BATCHES = 50

_ENCODE_CHUNK = 8192  # examples per tokenizer call (bounds peak memory of the fast tokenizer)


def encode(examples: Sequence[Example], tokenizer, max_seq_length: int) -> list[dict]:
    """Tokenize examples without padding.

    Pairs are passed to the tokenizer together (``tokenizer(text_a, text_b, truncation=True,
    max_length=max_seq_length)``), which truncates the longer text first.

    Args:
        examples: the examples (text_b None for single-sentence tasks).
        tokenizer: a Hugging Face tokenizer.
        max_seq_length: the longest sequence kept, special tokens included.

    Returns:
        One dict per example: ``input_ids`` (list of ints), ``token_type_ids`` when the tokenizer
        returns them (BERT does, RoBERTa and DistilBERT do not), and ``labels`` (int or float).

    Raises:
        UserError: ``max_seq_length`` leaves no room for text after the special tokens.
    """
    has_pair = any(e.text_b is not None for e in examples)
    need = tokenizer.num_special_tokens_to_add(pair=has_pair) + (2 if has_pair else 1)
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < need:
        raise UserError(
            f"max_seq_length {max_seq_length!r} is too small: it must be an integer of at least {need} "
            f"(the special tokens plus one token per text)"
        )
    features: list[dict | None] = [None] * len(examples)
    # Single texts and pairs go through separate tokenizer calls (a dataset normally has one kind).
    groups = {
        False: [i for i, e in enumerate(examples) if e.text_b is None],
        True: [i for i, e in enumerate(examples) if e.text_b is not None],
    }
    for is_pair, idx in groups.items():
        for start in range(0, len(idx), _ENCODE_CHUNK):
            chunk = idx[start : start + _ENCODE_CHUNK]
            a = [examples[i].text_a for i in chunk]
            b = [examples[i].text_b for i in chunk] if is_pair else None
            enc = tokenizer(a, b, truncation=True, max_length=max_seq_length)
            types = enc.get("token_type_ids")
            for j, i in enumerate(chunk):
                f = {"input_ids": list(enc["input_ids"][j])}
                if types is not None:
                    f["token_type_ids"] = list(types[j])
                f["labels"] = examples[i].label
                features[i] = f
    return features  # type: ignore[return-value]


def feature_lengths(features: Sequence[dict]) -> list[int]:
    """Token count of each encoded feature (the ``lengths`` that :func:`batch_order` takes)."""
    return [len(f["input_ids"]) for f in features]


class Collator:
    """Pad a list of encoded features into a batch of tensors, only as long as its longest row.

    Args:
        pad_token_id: the tokenizer's pad id (``tokenizer.pad_token_id``; None is taken as 0).
        pad_to_multiple_of: round the padded length up to a multiple of this (e.g. 8 for tensor
            cores); None pads to exactly the longest row.
        regression: force float (True) or long (False) labels; None decides from the label values
            (any float -> float32, else int64).

    Returns (when called):
        ``input_ids`` (batch, seq) int64, ``attention_mask`` (batch, seq) int64 (1 = real token),
        ``token_type_ids`` (batch, seq) int64 if the features have them, and ``labels`` (batch,)
        int64 or float32 if the features have them. Padding is on the right.
    """

    def __init__(self, pad_token_id: int | None, pad_to_multiple_of: int | None = None, regression: bool | None = None):
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.regression = regression

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        lengths = [len(f["input_ids"]) for f in features]
        seq = max(lengths)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            seq = -(-seq // m) * m
        batch = len(features)
        input_ids = torch.full((batch, seq), self.pad_token_id, dtype=torch.long)  # (batch, seq)
        attention_mask = torch.zeros((batch, seq), dtype=torch.long)  # (batch, seq)
        with_types = "token_type_ids" in features[0]
        token_type_ids = torch.zeros((batch, seq), dtype=torch.long) if with_types else None
        for r, (f, n) in enumerate(zip(features, lengths)):
            input_ids[r, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            attention_mask[r, :n] = 1
            if token_type_ids is not None:
                token_type_ids[r, :n] = torch.as_tensor(f["token_type_ids"], dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            out["token_type_ids"] = token_type_ids
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            regression = self.regression
            if regression is None:
                regression = any(isinstance(x, float) for x in labels)
            out["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)  # (batch,)
        return out


def _rng(seed: int, epoch: int) -> np.random.Generator:
    # SeedSequence wants non-negative entropy; fold any int into 64 bits.
    return np.random.default_rng([int(seed) % 2**64, int(epoch) % 2**64])


def batch_order(
    lengths: Sequence[int],
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    group_by_length: bool = True,
    mega_batches: int = MEGA_BATCHES,
) -> list[list[int]]:
    """Split example indices into batches; the same (lengths, seed, epoch) always gives the same batches.

    * ``shuffle`` and ``group_by_length`` (training): shuffle all indices, sort each window of
      ``mega_batches * batch_size`` indices by length (longest first), cut the windows into batches,
      then shuffle the order of the batches. Rows of a batch have similar lengths, so dynamic padding
      adds little, while batches still differ from epoch to epoch.
    * ``shuffle`` only: a random permutation cut into batches.
    * no ``shuffle`` with ``group_by_length`` (evaluation): all indices sorted by length (longest
      first, ties in original order) cut into batches; put predictions back with :func:`restore_order`.
    * neither: ``0..n-1`` in order.

    Every index appears exactly once; only the last batch (of a window) may be smaller.

    Args:
        lengths: token count of each example.
        batch_size: examples per batch (>= 1).
        seed: the run's seed.
        epoch: the epoch number (a new order each epoch).
        shuffle: randomize (training) or not (evaluation).
        group_by_length: put examples of similar length together.
        mega_batches: window size of the length sort, in batches.

    Returns:
        A list of batches, each a list of indices into ``lengths``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    lens = np.asarray(lengths, dtype=np.int64)
    n = lens.shape[0]
    if n == 0:
        return []

    def cut(order: np.ndarray) -> list[list[int]]:
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    if not shuffle:
        if not group_by_length:
            return cut(np.arange(n))
        return cut(np.argsort(-lens, kind="stable"))

    rng = _rng(seed, epoch)
    perm = rng.permutation(n)
    if not group_by_length:
        return cut(perm)
    window = max(1, mega_batches) * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
        batches.extend(cut(chunk))
    return [batches[i] for i in rng.permutation(len(batches))]


def restore_order(batches: Sequence[Sequence[int]], values):
    """Put per-example outputs produced in batch order back into the original example order.

    Args:
        batches: the batches as returned by :func:`batch_order`.
        values: the outputs concatenated in batch order: a list, a numpy array or a tensor whose
            first dimension is the number of examples.

    Returns:
        The same kind of object as ``values``, with row ``i`` belonging to example ``i``.
    """
    order = [i for b in batches for i in b]
    if len(order) != len(values):
        raise ValueError(f"{len(values)} values for {len(order)} batched examples")
    if isinstance(values, torch.Tensor):
        out = torch.empty_like(values)
        out[torch.as_tensor(order, dtype=torch.long)] = values
        return out
    if isinstance(values, np.ndarray):
        out = np.empty_like(values)
        out[np.asarray(order, dtype=np.int64)] = values
        return out
    out_list = [None] * len(order)
    for pos, i in enumerate(order):
        out_list[i] = values[pos]
    return out_list


def forward_names(model: torch.nn.Module) -> set[str]:
    """The named arguments of ``model.forward`` (used to drop inputs a model does not take, such
    as ``token_type_ids`` for DistilBERT and RoBERTa-style models)."""
    params = inspect.signature(model.forward).parameters.values()
    return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def pad_id_of(model: torch.nn.Module, tokenizer: Any = None) -> int:
    """The tokenizer's pad id, else the model config's, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return int(pad) if pad is not None else 0
