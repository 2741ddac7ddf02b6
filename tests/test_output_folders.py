"""Nothing a user owns is destroyed (issue 9): ``export`` and ``report`` write a folder only when it
is new, empty or their own earlier output (anything else needs ``--overwrite``), never into the
model they read (not even with ``--overwrite``), and through a staging folder renamed into place;
``finetune``/``compress`` never take their model or teacher as ``--out``; ``eval``/``size`` never
write a file of the model they read."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from compactbert.cli import main
from toy import make_tiny_model, write_toy_glue


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256 (what 'untouched' means)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *argv) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.splitlines()


def refused(capsys, *argv, match: str) -> None:
    code, err = cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and match in err[0], err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "model", num_labels=2)


@pytest.fixture()
def run_dir(model_dir, tmp_path) -> Path:
    """A finished run as far as export cares: run.json and model/."""
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    (run / "run.json").write_text(json.dumps({"task": "sst2", "status": "done"}))
    return run


def user_folder(path: Path) -> Path:
    """A folder a user filled by hand, with names the exporters also write."""
    (path / "tokenizer").mkdir(parents=True)
    (path / "tokenizer" / "notes.txt").write_text("mine")
    (path / "config.json").write_text('{"mine": true}')
    (path / "tokenizer.json").write_text("{}")
    (path / "index.html").write_text("<p>mine</p>")
    return path


@pytest.mark.parametrize("fmt", ["packed", "onnx"])
def test_export_refuses_a_folder_it_did_not_write(run_dir, tmp_path, capsys, fmt):
    out = user_folder(tmp_path / "mine")
    before = tree(out)
    refused(capsys, "export", run_dir, "--out", out, "--format", fmt, match="not an earlier export")
    assert tree(out) == before


def test_export_overwrite_replaces_the_folder_as_a_whole(run_dir, tmp_path, capsys):
    out = user_folder(tmp_path / "mine")
    assert cli(capsys, "export", run_dir, "--out", out, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "model.safetensors", "tokenizer"]
    assert not (out / "tokenizer" / "notes.txt").exists()


def test_export_replaces_its_own_earlier_output_only(run_dir, tmp_path, capsys):
    out = tmp_path / "packed"
    assert cli(capsys, "export", run_dir, "--out", out)[0] == 0
    assert cli(capsys, "export", run_dir, "--out", out)[0] == 0  # an earlier packed export: replaced
    (out / "bench.json").write_text("{}")  # ... but not once it holds something export does not write
    before = tree(out)
    refused(capsys, "export", run_dir, "--out", out, match="'bench.json'")
    assert tree(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".packed")]  # no staging folder left


@pytest.mark.parametrize("where", ["model", "run", "inside"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_export_never_writes_into_its_source(run_dir, capsys, where, overwrite):
    out = {"model": run_dir / "model", "run": run_dir, "inside": run_dir / "model" / "packed"}[where]
    before = tree(run_dir)
    refused(capsys, "export", run_dir, "--out", out, *(["--overwrite"] if overwrite else []), match="which this command reads")
    assert tree(run_dir) == before


def test_export_into_the_model_folder_given_directly_is_refused(model_dir, tmp_path, capsys):
    folder = shutil.copytree(model_dir, tmp_path / "m")
    before = tree(folder)
    for fmt in ("packed", "onnx"):
        refused(capsys, "export", folder, "--out", folder, "--format", fmt, "--overwrite", match="which this command reads")
    assert tree(folder) == before


def test_a_failed_export_leaves_the_old_folder_as_it_was(run_dir, tmp_path, capsys, monkeypatch):
    import compactbert.export.pack as pack

    out = tmp_path / "packed"
    assert cli(capsys, "export", run_dir, "--out", out)[0] == 0
    before = tree(out)

    def broken(model, tok, folder, **kw):
        (Path(folder) / "manifest.json").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(pack, "export_packed", broken)
    assert cli(capsys, "export", run_dir, "--out", out)[0] == 130
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed", "run"]  # the staging folder is gone


def _report_inputs(run_dir: Path) -> Path:
    (run_dir / "eval.json").write_text(json.dumps({"task": "sst2", "split": "dev", "n": 8, "metrics": {"accuracy": 0.5}}))
    (run_dir / "size.json").write_text(json.dumps({"compressed_bytes": 1000, "dense_fp32_bytes": 4000, "ratio": 4.0}))
    return run_dir


def test_report_refuses_a_folder_it_did_not_write(run_dir, tmp_path, capsys):
    _report_inputs(run_dir)
    out = user_folder(tmp_path / "mine")
    before = tree(out)
    refused(capsys, "report", run_dir, "--out", out, match="not an earlier report")
    assert tree(out) == before
    assert cli(capsys, "report", run_dir, "--out", out, "--overwrite")[0] == 0
    assert not (out / "config.json").exists() and (out / "report.json").is_file()
    assert cli(capsys, "report", run_dir, "--out", out)[0] == 0  # its own earlier report: replaced


@pytest.mark.parametrize("overwrite", [False, True])
def test_report_never_writes_over_its_inputs(run_dir, capsys, overwrite):
    _report_inputs(run_dir)
    before = tree(run_dir)
    refused(capsys, "report", run_dir, "--out", run_dir, *(["--overwrite"] if overwrite else []),
            match="which this command reads")
    assert tree(run_dir) == before


@pytest.mark.parametrize("cmd", ["finetune", "compress"])
def test_training_never_takes_its_model_as_out(run_dir, tmp_path, capsys, cmd):
    data = write_toy_glue(tmp_path / "glue", "sst2", n_train=4, n_dev=4)
    before = tree(run_dir)
    for out in (run_dir, run_dir / "model"):
        args = (["finetune", "--model", run_dir] if cmd == "finetune" else ["compress", "int8-qat", "--teacher", run_dir])
        refused(capsys, *args, "--task", "sst2", "--data", data, "--out", out, "--overwrite", match="which this command reads")
    assert tree(run_dir) == before


def test_eval_and_size_never_write_a_file_of_their_model(run_dir, tmp_path, capsys):
    data = write_toy_glue(tmp_path / "glue", "sst2", n_train=4, n_dev=4)
    before = tree(run_dir)
    refused(capsys, "size", run_dir, "--out", run_dir / "model" / "config.json", match="which this command reads")
    refused(capsys, "eval", run_dir, "--task", "sst2", "--data", data, "--out", run_dir / "model" / "config.json",
            match="which this command reads")
    assert tree(run_dir) == before


def test_the_library_writer_refuses_a_folder_it_did_not_write(model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compactbert.errors import UserError
    from compactbert.export.pack import export_packed

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = user_folder(tmp_path / "mine")
    before = tree(out)
    with pytest.raises(UserError, match="not an earlier export"):
        export_packed(model, tok, out)
    assert tree(out) == before
    export_packed(model, tok, tmp_path / "p")
    export_packed(model, None, tmp_path / "p")  # its own earlier output: replaced as a whole
    assert not (tmp_path / "p" / "tokenizer").exists()
