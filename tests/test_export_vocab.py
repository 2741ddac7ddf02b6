"""``compactbert export --prune-vocab`` from the command line: which splits' tokens it keeps
(``--vocab-from all|train``), what an unseen token reads as (``--unseen-tokens unk|nearest``), and
the one-line refusals of options that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest

from compactbert.cli import main
from compactbert.export.pack import read_packed
from compactbert.runtime import load
from toy import make_tiny_model

TRAIN = ["a good film\t1", "a bad film\t0", "the plot was fun\t1"]
DEV = ["a boring movie\t0", "superb film\t1"]  # "boring", "movie", "superb" never occur in train


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "model", num_labels=2)


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glue")
    (root / "SST-2").mkdir()
    for split, rows in (("train", TRAIN), ("dev", DEV)):
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root


def export(capsys, model_dir, glue, out, *extra) -> tuple[int, str]:
    code = main(["export", str(model_dir), "--out", str(out), "--task", "sst2", "--data", str(glue), *map(str, extra)])
    return code, capsys.readouterr().err


WORDS = ["good", "bad", "film", "plot", "fun", "boring", "movie", "superb", "awful"]


def tokens_read(packed: Path, model_dir: Path) -> dict[str, bool]:
    """For each of WORDS, whether the packed model reads it as its own embedding row (not [UNK]'s)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    vocab_map = read_packed(packed).vocab_map
    assert vocab_map is not None and vocab_map.shape == (len(tok),)
    unk = int(vocab_map[tok.unk_token_id])
    return {w: int(vocab_map[tok.convert_tokens_to_ids(w)]) != unk for w in WORDS}


def test_prune_vocab_keeps_train_and_dev_tokens_by_default(capsys, model_dir, glue, tmp_path):
    code, err = export(capsys, model_dir, glue, tmp_path / "p", "--prune-vocab")
    assert code == 0, err
    seen = tokens_read(tmp_path / "p", model_dir)
    assert {w for w, own in seen.items() if own} == {"good", "bad", "film", "plot", "fun", "boring", "movie", "superb"}


def test_vocab_from_train_drops_the_tokens_only_dev_has(capsys, model_dir, glue, tmp_path):
    code, err = export(capsys, model_dir, glue, tmp_path / "p", "--prune-vocab", "--vocab-from", "train")
    assert code == 0, err
    seen = tokens_read(tmp_path / "p", model_dir)
    assert {w for w, own in seen.items() if own} == {"good", "bad", "film", "plot", "fun"}
    assert load(tmp_path / "p", backend="compactbert").config["vocab"]["unseen"] == "unk"


def test_unseen_tokens_nearest_reaches_the_packed_model(capsys, model_dir, glue, tmp_path):
    code, err = export(capsys, model_dir, glue, tmp_path / "p", "--prune-vocab", "--vocab-from", "train",
                       "--unseen-tokens", "nearest")
    assert code == 0, err
    pm = load(tmp_path / "p", backend="compactbert", dtype="fp32")
    assert pm.config["vocab"]["unseen"] == "nearest"
    # dev-only tokens read as kept ones, not as [UNK]; the embedding rows stored are train's only
    assert all(tokens_read(tmp_path / "p", model_dir).values())
    assert pm.config["vocab"]["kept"] == load_kept(capsys, model_dir, glue, tmp_path)


def load_kept(capsys, model_dir, glue, tmp_path) -> int:
    """Rows kept by ``--vocab-from train`` with unseen tokens as [UNK]."""
    assert export(capsys, model_dir, glue, tmp_path / "unk", "--prune-vocab", "--vocab-from", "train")[0] == 0
    return load(tmp_path / "unk", backend="compactbert").config["vocab"]["kept"]


@pytest.mark.parametrize("extra, match", [
    (["--prune-vocab", "--vocab-from", "dev"], "--vocab-from 'dev' is not valid"),
    (["--prune-vocab", "--unseen-tokens", "closest"], "--unseen-tokens 'closest' is not valid"),
    (["--vocab-from", "train"], "apply with --prune-vocab only"),
    (["--unseen-tokens", "nearest"], "apply with --prune-vocab only"),
])
def test_options_that_do_not_fit_are_refused_in_one_line(capsys, model_dir, glue, tmp_path, extra, match):
    code, err = export(capsys, model_dir, glue, tmp_path / "p", *extra)
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "p").exists()
