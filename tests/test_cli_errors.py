"""Bad input to `compactbert finetune` / `compactbert eval`: one stderr line, exit 2, no traceback, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compactbert.cli import main
from toy import make_tiny_model, write_toy_glue


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    glue = write_toy_glue(root / "glue", "sst2", n_train=16, n_dev=8)
    model = make_tiny_model(root / "bert", "bert")
    return root, glue, model


def run_cli(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tsv(path, text):
    path.write_text(text)
    return str(path)


def finetune_args(model, data, out, *extra):
    return ["finetune", "--model", str(model), "--task", "sst2", "--data", str(data), "--out", str(out),
            "--max-steps", "1", "--no-bf16", "--no-progress", *extra]


def test_unknown_task(env, capsys, tmp_path):
    _, glue, model = env
    code, _, err = run_cli(capsys, ["finetune", "--model", str(model), "--task", "sst3", "--out", str(tmp_path / "r")])
    assert_user_error(code, err, "'sst3'", "did you mean 'sst2'", "rte")
    assert not (tmp_path / "r").exists()


def test_missing_data_file(env, capsys, tmp_path):
    _, _, model = env
    missing = tmp_path / "nope" / "train.tsv"
    code, _, err = run_cli(capsys, finetune_args(model, missing, tmp_path / "r"))
    assert_user_error(code, err, str(missing), "does not exist")
    assert not (tmp_path / "r").exists()


def test_unreadable_data_file(env, capsys, tmp_path):
    _, _, model = env
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"sentence\tlabel\ncaf\xe9 \xff\xfe good\t1\n")
    code, _, err = run_cli(capsys, finetune_args(model, bad, tmp_path / "r"))
    assert_user_error(code, err, str(bad), "UTF-8")


def test_missing_column_names_file_and_column(env, capsys, tmp_path):
    _, _, model = env
    data = tsv(tmp_path / "cols.tsv", "text_x\tlabel\nsome words\t1\n")
    code, _, err = run_cli(capsys, finetune_args(model, data, tmp_path / "r"))
    assert_user_error(code, err, data, "'sentence'", "'text_x'")


def test_label_outside_label_set_names_line_and_column(env, capsys, tmp_path):
    _, _, model = env
    data = tsv(tmp_path / "labels.tsv", "sentence\tlabel\na good film\t1\na bad film\t7\n")
    code, _, err = run_cli(capsys, finetune_args(model, data, tmp_path / "r"))
    assert_user_error(code, err, data, "line 3", "'label'", "'7'", "negative, positive")


def test_empty_dataset(env, capsys, tmp_path):
    _, _, model = env
    data = tsv(tmp_path / "empty.tsv", "sentence\tlabel\n")
    code, _, err = run_cli(capsys, finetune_args(model, data, tmp_path / "r"))
    assert_user_error(code, err, data, "no examples")


def test_model_path_that_does_not_exist(env, capsys, tmp_path):
    _, glue, _ = env
    missing = str(tmp_path / "models" / "mine")
    code, _, err = run_cli(capsys, finetune_args(missing, glue, tmp_path / "r"))
    assert_user_error(code, err, missing, "does not exist", "minilm-l6")
    code, _, err = run_cli(capsys, ["eval", missing, "--task", "sst2", "--data", str(glue)])
    assert_user_error(code, err, missing, "does not exist")


def test_model_folder_without_safetensors(env, capsys, tmp_path):
    _, glue, model = env
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((model / "config.json").read_text())
    code, _, err = run_cli(capsys, finetune_args(broken, glue, tmp_path / "r"))
    assert_user_error(code, err, str(broken))


def test_output_dir_that_is_not_a_run_is_left_alone(env, capsys, tmp_path):
    _, glue, model = env
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"\xff\xd8 precious")
    code, _, err = run_cli(capsys, finetune_args(model, glue, out))
    assert_user_error(code, err, str(out), "not a compactbert run", "--overwrite")
    code, _, err = run_cli(capsys, finetune_args(model, glue, out, "--resume"))
    assert_user_error(code, err, str(out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["cat.jpg"]
    assert (out / "cat.jpg").read_bytes() == b"\xff\xd8 precious"


def test_existing_run_needs_resume_or_overwrite(env, capsys, tmp_path):
    _, glue, model = env
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, finetune_args(model, glue, out))
    assert code == 0 and "accuracy" in stdout
    snapshot = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run_cli(capsys, finetune_args(model, glue, out))
    assert_user_error(code, err, str(out), "--resume", "--overwrite")
    code, _, err = run_cli(capsys, finetune_args(model, glue, out, "--resume", "--lr", "0.5"))
    assert_user_error(code, err, str(out), "lr=0.5")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == snapshot  # nothing touched


def test_unwritable_output_dir(env, capsys, tmp_path):
    _, glue, model = env
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, finetune_args(model, glue, blocker / "run"))
    assert_user_error(code, err, str(blocker / "run"), "is a file")
    code, _, err = run_cli(capsys, finetune_args(model, glue, blocker))
    assert_user_error(code, err, str(blocker), "is a file")
    # /proc refuses new folders even for root.
    code, _, err = run_cli(capsys, finetune_args(model, glue, "/proc/compactbert-run"))
    assert_user_error(code, err, "/proc/compactbert-run", "not writable")
    assert blocker.read_text() == "not a folder"


def test_settings_out_of_range(env, capsys, tmp_path):
    _, glue, model = env
    code, _, err = run_cli(capsys, finetune_args(model, glue, tmp_path / "r", "--lr", "0"))
    assert_user_error(code, err, "lr", "0.0", "greater than 0")
    code, _, err = run_cli(capsys, finetune_args(model, glue, tmp_path / "r", "--batch-size", "0"))
    assert_user_error(code, err, "batch-size", "0")
    assert not (tmp_path / "r").exists()


def test_eval_errors(env, capsys, tmp_path):
    _, glue, model = env
    code, _, err = run_cli(capsys, ["eval", str(model)])
    assert_user_error(code, err, str(model), "--task")
    code, _, err = run_cli(capsys, ["eval", str(model), "--task", "sst2", "--data", str(glue), "--split", "tst"])
    assert_user_error(code, err, "'tst'", "dev")
    code, _, err = run_cli(capsys, ["eval", str(model), "--task", "stsb", "--data", str(glue)])
    assert_user_error(code, err, str(model), "2 outputs", "stsb")
    for option, name in (("--batch-size", "batch_size"), ("--max-seq-length", "max_seq_length")):
        for value in ("0", "-3"):  # not silently the default
            code, _, err = run_cli(capsys, ["eval", str(model), "--task", "sst2", "--data", str(glue), option, value])
            assert_user_error(code, err, f"{name}={value} is not valid", "positive integer")


def test_error_through_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "compactbert", "finetune", "--task", "qnlii", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown task 'qnlii' (did you mean 'qnli'?); valid tasks: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, rt"
    ]
    assert proc.stdout == ""
    assert not (tmp_path / "r").exists()
