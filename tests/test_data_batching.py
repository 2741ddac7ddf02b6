"""Tokenization, dynamic padding and length-grouped, deterministic batch order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from compactbert.data.batching import Collator, batch_order, encode, feature_lengths, restore_order
from compactbert.data.sources import Example, load_examples
from compactbert.errors import UserError
from compactbert.models import embedded_minilm_path

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(embedded_minilm_path())


@pytest.fixture(scope="module")
def sst2_lengths(tok):
    """Token counts of real SST-2 sentences: the dev set and a seeded sample of train."""
    ex = load_examples("sst2", "dev", data=GLUE) + load_examples("sst2", "train", data=GLUE, max_samples=4000)
    return feature_lengths(encode(ex, tok, 128))


def padded_positions(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


# ------------------------------------------------------------------------------------------------
# encode


def test_encode_single_sentences_matches_the_tokenizer(tok):
    ex = [Example("a charming journey .", None, 1), Example("dull", None, 0)]
    feats = encode(ex, tok, 128)
    for e, f in zip(ex, feats):
        ref = tok(e.text_a)
        assert f["input_ids"] == ref["input_ids"] and f["token_type_ids"] == ref["token_type_ids"]
        assert f["labels"] == e.label and set(f) == {"input_ids", "token_type_ids", "labels"}
    assert feats[0]["input_ids"][0] == tok.cls_token_id and feats[0]["input_ids"][-1] == tok.sep_token_id


def test_encode_truncates_long_text_and_pairs_together(tok):
    long = " ".join(["word"] * 300)
    (single,) = encode([Example(long, None, 0)], tok, 16)
    assert len(single["input_ids"]) == 16 and single["input_ids"][-1] == tok.sep_token_id
    (pair,) = encode([Example("a short premise .", long, 2.5)], tok, 20)
    assert len(pair["input_ids"]) == 20
    ref = tok("a short premise .", long, truncation=True, max_length=20)
    assert pair["input_ids"] == ref["input_ids"] and pair["token_type_ids"] == ref["token_type_ids"]
    # The long second text was cut, the short first one kept whole: 1 [CLS] + 4 + 1 [SEP] segment-0 tokens.
    assert pair["token_type_ids"].count(0) == 6 and pair["token_type_ids"].count(1) == 14
    assert pair["labels"] == 2.5


def test_encode_mixed_pairs_keeps_order(tok):
    ex = [Example("one", None, 0), Example("two", "three", 1), Example("four", None, 1)]
    feats = encode(ex, tok, 32)
    assert [f["input_ids"] for f in feats] == [tok("one")["input_ids"], tok("two", "three")["input_ids"], tok("four")["input_ids"]]


def test_encode_drops_token_type_ids_when_the_tokenizer_has_none():
    # RoBERTa / DistilBERT tokenizers return no token_type_ids; emulate with the same vocabulary.
    tok = AutoTokenizer.from_pretrained(embedded_minilm_path(), model_input_names=["input_ids", "attention_mask"])
    (f,) = encode([Example("first", "second", 1)], tok, 32)
    assert set(f) == {"input_ids", "labels"}
    batch = Collator(tok.pad_token_id)([f])
    assert "token_type_ids" not in batch


def test_encode_rejects_a_max_seq_length_with_no_room(tok):
    with pytest.raises(UserError, match="max_seq_length 2 is too small.*at least 3"):
        encode([Example("x", None, 0)], tok, 2)
    with pytest.raises(UserError, match="at least 5"):
        encode([Example("x", "y", 0)], tok, 4)
    assert len(encode([Example("x y z", "y", 0)], tok, 5)[0]["input_ids"]) == 5


# ------------------------------------------------------------------------------------------------
# Collator


def test_collator_pads_only_to_the_longest_in_the_batch():
    feats = [
        {"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 0], "labels": 1},
        {"input_ids": [5, 6, 7, 8, 9, 10, 11], "token_type_ids": [0, 0, 0, 1, 1, 1, 1], "labels": 0},
        {"input_ids": [5, 6, 7, 8, 9], "token_type_ids": [0, 0, 1, 1, 1], "labels": 1},
    ]
    b = Collator(pad_token_id=1)(feats)
    assert b["input_ids"].shape == (3, 7) and b["input_ids"].dtype == torch.long
    assert b["input_ids"][0].tolist() == [5, 6, 7, 1, 1, 1, 1]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7, [1, 1, 1, 1, 1, 0, 0]]
    assert b["token_type_ids"][2].tolist() == [0, 0, 1, 1, 1, 0, 0]
    assert b["labels"].tolist() == [1, 0, 1] and b["labels"].dtype == torch.long
    # Another batch of short rows is not padded to the earlier batch's length.
    assert Collator(1)(feats[:1])["input_ids"].shape == (1, 3)


def test_collator_regression_labels_multiple_of_and_no_labels():
    feats = [{"input_ids": [3, 4], "labels": 4.5}, {"input_ids": [3, 4, 5], "labels": 1.0}]
    b = Collator(0, pad_to_multiple_of=8)(feats)
    assert b["input_ids"].shape == (2, 8) and b["attention_mask"].sum().item() == 5
    assert b["labels"].dtype == torch.float32 and b["labels"].tolist() == [4.5, 1.0]
    assert Collator(0, regression=True)([{"input_ids": [1], "labels": 3}])["labels"].dtype == torch.float32
    unlabeled = Collator(None)([{"input_ids": [7]}, {"input_ids": [7, 8]}])
    assert set(unlabeled) == {"input_ids", "attention_mask"} and unlabeled["input_ids"][0].tolist() == [7, 0]


def test_collated_batch_runs_through_the_tokenizer_vocab(tok):
    ex = load_examples("stsb", "dev", data=GLUE, max_samples=6)
    feats = encode(ex, tok, 64)
    b = Collator(tok.pad_token_id)(feats)
    assert b["input_ids"].shape[1] == max(feature_lengths(feats)) <= 64
    assert b["attention_mask"].sum(1).tolist() == feature_lengths(feats)
    assert b["labels"].dtype == torch.float32
    assert torch.allclose(b["labels"], torch.tensor([e.label for e in ex], dtype=torch.float32))


# ------------------------------------------------------------------------------------------------
# batch_order


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("n, bs", [(1, 4), (10, 3), (257, 8), (1000, 7)])
def test_every_index_exactly_once(shuffle, group, n, bs):
    lengths = np.random.default_rng(n).integers(3, 60, n).tolist()
    batches = batch_order(lengths, bs, seed=1, epoch=2, shuffle=shuffle, group_by_length=group, mega_batches=5)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(b) <= bs for b in batches)
    assert sum(len(b) < bs for b in batches) <= 1  # windows are whole batches: one short batch at most


def test_batch_order_is_deterministic_per_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(3, 60, 500).tolist()
    a = batch_order(lengths, 16, seed=7, epoch=0)
    assert a == batch_order(lengths, 16, seed=7, epoch=0)
    assert a != batch_order(lengths, 16, seed=7, epoch=1)
    assert a != batch_order(lengths, 16, seed=8, epoch=0)
    assert batch_order(lengths, 16, seed=7, epoch=3, group_by_length=False) == batch_order(
        lengths, 16, seed=7, epoch=3, group_by_length=False)
    assert batch_order(lengths, 16, seed=-1, epoch=0) == batch_order(lengths, 16, seed=-1, epoch=0)


def test_eval_order_is_sorted_by_length_and_restorable():
    lengths = [5, 9, 2, 9, 7, 1, 3]
    batches = batch_order(lengths, 3, shuffle=False)
    assert batches == [[1, 3, 4], [0, 6, 2], [5]]  # longest first, ties in original order
    assert batch_order(lengths, 3, shuffle=False, group_by_length=False) == [[0, 1, 2], [3, 4, 5], [6]]
    # Outputs computed batch by batch go back to the examples' order.
    outputs = [lengths[i] * 10 for b in batches for i in b]
    assert restore_order(batches, outputs) == [x * 10 for x in lengths]
    arr = np.array([[float(lengths[i]), -1.0] for b in batches for i in b])  # (n, 2) e.g. logits
    assert restore_order(batches, arr)[:, 0].tolist() == [float(x) for x in lengths]
    t = torch.tensor([lengths[i] for b in batches for i in b])
    assert restore_order(batches, t).tolist() == lengths
    with pytest.raises(ValueError):
        restore_order(batches, outputs[:-1])


def test_length_grouping_cuts_padding_on_real_sst2(sst2_lengths):
    lengths = sst2_lengths
    assert len(lengths) == 4872 and max(lengths) <= 128
    grouped = batch_order(lengths, 32, seed=0, epoch=0)
    random_ = batch_order(lengths, 32, seed=0, epoch=0, group_by_length=False)
    pad_grouped, pad_random = padded_positions(grouped, lengths), padded_positions(random_, lengths)
    real = sum(lengths)
    pad_to_128 = 128 * len(lengths) - real
    # Random batches with dynamic padding already beat padding to 128; grouping cuts much more.
    assert pad_random < pad_to_128 / 2
    assert pad_grouped < pad_random / 10
    assert pad_grouped < 0.1 * real
    # Batches within a window hold similar lengths: the spread inside a batch is small on average.
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in grouped])
    assert spread < 3
    # ...but the first batches of an epoch are not simply the longest ones: batch order is shuffled.
    maxima = [max(lengths[i] for i in b) for b in grouped]
    assert maxima != sorted(maxima, reverse=True)


def test_batch_size_must_be_positive():
    with pytest.raises(UserError, match="batch size must be a positive integer, got 0"):
        batch_order([1, 2], 0)
    assert batch_order([], 4) == []
