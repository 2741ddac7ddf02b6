"""Vocabulary pruning: only the embedding rows of tokens the task's texts use are kept.

A bitmap over the original vocabulary records which; the runtime remaps token ids through it, so
the tokenizer itself is unchanged. A token never seen reads as ``[UNK]`` or, with ``"nearest"``,
as the kept token whose original embedding is closest (a 2-byte map per original token).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F

from ...errors import UserError

__all__ = ["vocab_keep", "nearest_kept"]


def vocab_keep(tokenizer, texts: Iterable[Any], vocab_size: int) -> torch.Tensor:
    """Bool (vocab,) of token ids seen in ``texts`` plus all special tokens."""
    keep = torch.zeros(vocab_size, dtype=torch.bool)
    specials = [i for i in getattr(tokenizer, "all_special_ids", []) if i is not None]
    for tok in ("unk_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id",
                "bos_token_id", "eos_token_id"):
        i = getattr(tokenizer, tok, None)
        if i is not None:
            specials.append(i)
    for i in specials:
        if 0 <= int(i) < vocab_size:
            keep[int(i)] = True
    flat: list[str] = []
    for t in texts:
        if isinstance(t, str):
            flat.append(t)
        elif isinstance(t, (tuple, list)):
            flat.extend(x for x in t if isinstance(x, str))
        elif t is None:
            continue
        else:
            raise UserError(f"prune_vocab_texts: expected strings or (text_a, text_b) pairs, got {type(t).__name__}")
    for start in range(0, len(flat), 2048):
        enc = tokenizer(flat[start : start + 2048], add_special_tokens=True, truncation=False)["input_ids"]
        for ids in enc:
            if ids:
                idx = torch.tensor(ids, dtype=torch.long)
                if int(idx.max()) >= vocab_size:
                    raise UserError(
                        f"prune_vocab_texts: the tokenizer produced id {int(idx.max())} but the model's vocabulary "
                        f"has {vocab_size} rows; the tokenizer does not belong to this model"
                    )
                keep[idx] = True
    return keep


def nearest_kept(table: torch.Tensor, keep: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For every row of ``table`` (vocab, dim), the index among kept rows with the highest cosine
    similarity (kept rows map to themselves). Returns (vocab,) int64 indices into the kept rows."""
    unit = F.normalize(table.float(), dim=1)  # (vocab, dim)
    kept_idx = torch.nonzero(keep).flatten()
    kept_unit = unit[kept_idx]  # (kept, dim)
    out = torch.cumsum(keep.to(torch.int64), 0) - 1  # kept id -> its new row
    unseen = torch.nonzero(~keep).flatten()
    for start in range(0, unseen.numel(), chunk):
        rows = unseen[start : start + chunk]
        out[rows] = (unit[rows] @ kept_unit.T).argmax(dim=1)  # (chunk,)
    return out
