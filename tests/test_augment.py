"""Synonym-replacement augmentation: offline WordNet, deterministic, labels kept."""

from __future__ import annotations

import random
import re

import pytest

from compactbert.data import augment
from compactbert.data.augment import STOP_WORDS, augment_examples, augment_text, synonyms, wordnet
from compactbert.data.sources import Example
from compactbert.errors import UserError

SENTENCES = [
    Example("The movie was a wonderful and moving experience, with truly great acting.", None, 1),
    Example("A dull, tedious film.", "I hated every minute of this boring story!", 0),
    Example("Stocks fell sharply after the announcement.", "Markets dropped quickly.", 2),
]


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+(?:['-][A-Za-z]+)*", text)


def test_debian_wordnet_is_read_offline_with_nltk():
    wn = wordnet()
    assert wn.get_version() == "3.0"
    assert wn.synsets("dog")[0].lexname() == "noun.animal"  # the generated lexnames table lines up
    assert "car" in synonyms("automobile") and "automobile" not in synonyms("automobile")
    assert synonyms("qwertyzzz") == ()


def test_same_seed_same_copies_other_seed_other_copies():
    a = augment_examples(SENTENCES, n_aug=4, p=0.5, seed=7)
    b = augment_examples(SENTENCES, n_aug=4, p=0.5, seed=7)
    c = augment_examples(SENTENCES, n_aug=4, p=0.5, seed=8)
    assert a == b
    assert a != c
    assert len(a) == len(SENTENCES) * 5


def test_labels_and_layout_are_kept():
    out = augment_examples(SENTENCES, n_aug=3, p=0.4, seed=0)
    for i, ex in enumerate(SENTENCES):
        group = out[i * 4 : (i + 1) * 4]
        assert group[0] is ex  # the original first, then its copies
        assert [g.label for g in group] == [ex.label] * 4
        assert all((g.text_b is None) == (ex.text_b is None) for g in group)
    copies_only = augment_examples(SENTENCES, n_aug=2, p=0.4, seed=0, include_original=False)
    assert len(copies_only) == 6 and all(isinstance(e, Example) for e in copies_only)


def test_words_really_change_and_only_content_words():
    out = augment_examples(SENTENCES[:1], n_aug=5, p=0.5, seed=1, include_original=False)
    orig = words(SENTENCES[0].text_a)
    changed = [e.text_a for e in out if e.text_a != SENTENCES[0].text_a]
    assert len(changed) >= 4
    for e in out:
        assert e.text_a.endswith(".") and "," in e.text_a  # punctuation and spacing are kept
        # Stop words stay where they were: the text before the first content word is unchanged.
        assert e.text_a.startswith("The ")
    replaced = set()
    for text in changed:
        for w in set(words(text)) - set(orig):
            replaced.add(w.lower())
    assert replaced  # some synonym appeared
    # Each new word is a WordNet synonym of some original word (multi-word lemmas split into words).
    known = set()
    for w in orig:
        for syn in synonyms(w):
            known.update(syn.split())
    assert replaced <= known


def test_p_zero_gives_identical_copies_and_p_one_replaces_every_word_with_synonyms():
    out = augment_examples(SENTENCES, n_aug=3, p=0.0, seed=0)
    for i, ex in enumerate(SENTENCES):
        for copy in out[i * 4 + 1 : (i + 1) * 4]:
            assert (copy.text_a, copy.text_b, copy.label) == (ex.text_a, ex.text_b, ex.label)
    text = "Stocks fell sharply"
    new = augment_text(text, 1.0, random.Random(0))
    assert all(a.lower() != b.lower() for a, b in zip(text.split(), new.split()[:1]))
    assert new.split()[0][0].isupper()  # capitalisation follows the original word


def test_stop_words_and_unknown_words_are_never_replaced():
    text = "the of and qwertyzzz to be"
    for seed in range(5):
        assert augment_text(text, 1.0, random.Random(seed)) == text
    assert {"the", "and", "is", "not"} <= STOP_WORDS


def test_bad_arguments_and_missing_wordnet_are_user_errors(monkeypatch, tmp_path):
    with pytest.raises(UserError, match="n_aug=-1"):
        augment_examples(SENTENCES, n_aug=-1, p=0.1)
    with pytest.raises(UserError, match="p=1.5"):
        augment_examples(SENTENCES, n_aug=1, p=1.5)
    monkeypatch.setattr(augment, "_state", {})
    monkeypatch.setattr(augment, "DEBIAN_WORDNET_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("COMPACTBERT_WORDNET_DIR", str(tmp_path / "none"))
    monkeypatch.setattr("nltk.data.find", lambda *a, **k: (_ for _ in ()).throw(LookupError("no")))
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        augment_examples(SENTENCES, n_aug=1, p=0.1)
