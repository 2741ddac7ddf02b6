"""A packed directory is untrusted input (issue 9): each attack named there, made hash-valid as an
attacker would, through the CLI's own entry point. Every one must end with status 2 and one line
naming the problem: no traceback, no code run, no allocation the payload does not justify."""

from __future__ import annotations

import io
import json
import lzma
import math
import sys
from pathlib import Path

import pytest
import torch

from compactbert.cli import main
from hostile_packed import (build_base, copy_packed, edit_json, inflate, read_json, rehash, replace_tensors,
                            write_json, write_tokenizer_file)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("hostile"))


@pytest.fixture()
def victim(base, tmp_path):
    return copy_packed(base[0], tmp_path / "p")


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err.splitlines()


def refused(capsys, folder: Path, data: Path, match: str, commands=("eval", "size")) -> None:
    """``eval`` (and ``size``) of ``folder`` end with status 2 and one line matching ``match``."""
    for cmd in commands:
        argv = [cmd, folder] + (["--task", "sst2", "--data", data] if cmd == "eval" else [])
        code, err = cli(capsys, *argv)
        assert code == 2, (cmd, err)
        assert len(err) == 1 and err[0].startswith("error: "), (cmd, err)
        assert match in err[0], (cmd, err[0])


def test_the_base_directory_is_valid(base, capsys):
    folder, data = base
    assert cli(capsys, "eval", folder, "--task", "sst2", "--data", data)[0] == 0
    assert cli(capsys, "size", folder)[0] == 0


# ----------------------------------------------------------------------------- code execution
EVIL = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nfrom transformers import BertTokenizer as EvilTokenizer\n"


def _custom_code(folder: Path, marker: Path, listed: bool) -> None:
    cfg = {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}
    (folder / "tokenizer" / "tokenization_evil.py").write_text(EVIL.format(marker=str(marker)))
    for f in (folder / "tokenizer").glob("tokenizer_config.json*"):
        f.unlink()
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(cfg))
    m = rehash(folder)
    if not listed:  # on disk only: the manifest does not mention it
        m["files"].pop("tokenizer/tokenization_evil.py")
        write_json(folder / "manifest.json", m)


@pytest.mark.parametrize("listed", [True, False])
def test_a_tokenizer_shipping_code_is_refused_and_never_run(victim, base, tmp_path, capsys, monkeypatch, listed):
    marker = tmp_path / "code-ran"
    _custom_code(victim, marker, listed)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # transformers' "run custom code?" prompt
    refused(capsys, victim, base[1], "tokenization_evil.py", commands=("eval",))
    assert not marker.exists()


def test_auto_map_in_the_tokenizer_config_is_refused(victim, base, capsys):
    write_tokenizer_file(victim, "tokenizer_config.json", json.dumps(
        {"tokenizer_class": "BertTokenizer", "auto_map": {"AutoTokenizer": ["evil/repo--tok.Evil", None]}}).encode(),
        compress=True)
    refused(capsys, victim, base[1], "asks for custom code (auto_map)", commands=("eval",))


def test_a_model_folder_asking_for_custom_code_never_runs_it(base, tmp_path, capsys, monkeypatch):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(base[0].parent / "model", folder)
    marker = tmp_path / "code-ran"
    (folder / "modeling_evil.py").write_text(EVIL.format(marker=str(marker)).replace("BertTokenizer", "BertModel"))
    cfg = read_json(folder / "config.json")
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilTokenizer"}
    write_json(folder / "config.json", cfg)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    code, err = cli(capsys, "eval", folder, "--task", "sst2", "--data", base[1])
    assert not marker.exists()
    assert code in (0, 2) and all("Traceback" not in line for line in err)


# ----------------------------------------------------------------------------- declared sizes
@pytest.mark.parametrize("n", [20000, 30000])
def test_small_bitmaps_declaring_a_huge_matrix_are_refused(victim, base, capsys, n):
    name = "layer.0.ffn.down.weight"  # stored in the rows encoding: a bitmap of rows and one of columns
    m = read_json(victim / "manifest.json")
    e = m["tensors"][name]
    assert e["encoding"] == "rows"

    def huge(tensors):
        keep = torch.zeros(math.ceil(n / 8), dtype=torch.uint8)
        keep[0] = 1
        tensors[e["parts"]["rows"]] = keep.clone()  # 2.5 KB (20000) / 3.75 KB (30000) each
        tensors[e["parts"]["cols"]] = keep.clone()
        tensors[e["parts"]["values"]] = torch.zeros(1, dtype=torch.float16)

    replace_tensors(victim, huge)
    edit_json(victim, "manifest.json", lambda mm: mm["tensors"][name].update(shape=[n, n]))
    refused(capsys, victim, base[1], f"has shape [{n}, {n}]; config.json implies [32, 64]")


@pytest.mark.parametrize("dims", [{"hidden_size": 20000, "embedding_size": 20000}, {"ffn": 2 * 10**6},
                                  {"type_vocab_size": 2 * 10**6}, {"max_position_embeddings": 2 * 10**6},
                                  {"num_labels": 2 * 10**6}])
def test_dimensions_the_payload_cannot_hold_are_refused(victim, base, capsys, dims):
    inflate(victim, **dims)  # everything adds up but the payload: KBs declaring GBs
    assert (victim / "model.safetensors").stat().st_size < 1_100_000  # declaring 0.5 to 1.6 GB
    refused(capsys, victim, base[1], "more than 32x its")


def test_a_config_of_hidden_size_1e9_is_refused(victim, base, capsys):
    edit_json(victim, "config.json", lambda c: c.update(hidden_size=10**9))
    refused(capsys, victim, base[1], "that config.json implies")  # emb.proj (1e9 x 32), before the shapes


def test_a_bitmask_declaring_more_than_its_tensor_is_refused(victim, base, capsys):
    name = "layer.0.attn.o.weight"
    m = read_json(victim / "manifest.json")
    assert m["tensors"][name]["encoding"] == "bitmask"
    replace_tensors(victim, lambda t: t.update({m["tensors"][name]["parts"]["mask"]: torch.zeros(2**21, dtype=torch.uint8)}))
    edit_json(victim, "manifest.json", lambda mm: mm["tensors"][name].update(shape=[4096, 4096]))
    refused(capsys, victim, base[1], "has shape [4096, 4096]")


def test_an_xz_bomb_in_the_tokenizer_is_refused(victim, base, capsys):
    write_tokenizer_file(victim, "tokenizer.json", b" " * (65 * 1024 * 1024), compress=True)
    assert (victim / "tokenizer" / "tokenizer.json.xz").stat().st_size < 200_000
    refused(capsys, victim, base[1], "expands past 67,108,864 bytes", commands=("eval",))


# ----------------------------------------------------------------------------- malformed, hash-valid
def _drop(path: str):
    def fn(v):
        *keys, last = path.split("/")
        for k in keys:
            v = v[k]
        v.pop(last)
    return fn


MANIFEST_CASES = {
    "tensors as a list": (lambda m: m.update(tensors=list(m["tensors"])), "tensors: Input should be a valid dictionary"),
    "a tensor missing": (_drop("tensors/layer.0.attn.q.weight"), "lacks tensor(s) ['layer.0.attn.q.weight']"),
    "an unknown tensor": (lambda m: m["tensors"].update(x=m["tensors"]["emb.ln.bias"]), "tensor(s) ['x'] that config"),
    "shape [0, 1e18]": (lambda m: m["tensors"]["layer.0.attn.q.weight"].update(shape=[0, 1e18]), "shape.1: Input should be a valid integer"),
    "shape [0, 10**18]": (lambda m: m["tensors"]["layer.0.attn.q.weight"].update(shape=[0, 10**18]), "less than or equal to 2147483647"),
    "shapes as strings": (lambda m: m["tensors"]["emb.ln.bias"].update(shape=["32"]), "shape.0: Input should be a valid integer"),
    "bits null": (lambda m: m["tensors"]["emb.ln.bias"].update(bits=None), "bits: Input should be a valid integer"),
    "bits 0 on floats": (lambda m: m["tensors"]["emb.ln.bias"].update(bits=0), "needs dtype float16 (16 bits)"),
    "bits 16 on codes": (lambda m: m["tensors"]["layer.0.attn.q.weight"].update(bits=16), "bits 16 do not match its quantizer"),
    "bits 1000": (lambda m: m["tensors"]["layer.0.attn.q.weight"].update(bits=1000), "less than or equal to 32"),
    "no payload_bytes": (_drop("payload_bytes"), "payload_bytes: Field required"),
    "payload_bytes wrong": (lambda m: m.update(payload_bytes=m["payload_bytes"] + 1), "payload_bytes is"),
    "format_version 1.0": (lambda m: m.update(format_version=1.0), "format_version 1.0"),
    "format_version true": (lambda m: m.update(format_version=True), "format_version True"),
    "format_version '2'": (lambda m: m.update(format_version="2"), "format_version '2'"),
    "unknown encoding": (lambda m: m["tensors"]["layer.0.attn.q.weight"].update(encoding="zip"), "encoding: Input should be"),
    "a part not stored": (lambda m: m["tensors"]["emb.ln.bias"]["parts"].update(values="nope"), "does not hold"),
    "a part of the wrong size": (lambda m: m["tensors"]["emb.ln.bias"]["parts"].update(values="emb.ln.weight") or
                                 m["tensors"]["emb.ln.bias"]["parts"].update(values="head.out.bias"), "holds 2 values"),
    "quant spec unknown": (lambda m: m["tensors"]["layer.0.attn.q.weight"]["quant"]["spec"].update(kind="evil"), "is not known"),
    "quant spec bits 99": (lambda m: m["tensors"]["layer.0.attn.v.weight"]["quant"]["spec"].update(bits=99), "bits"),
    "row_bits not covering": (lambda m: m["tensors"]["layer.0.attn.q.weight"]["quant"].update(row_bits=[[1, 3]]), "row_bits"),
    "group size 0": (lambda m: m["tensors"]["layer.0.attn.v.weight"]["quant"].update(group_size=0), "greater than or equal to 1"),
    "extra tensors unused": (lambda m: m.update(extra_tensors=[]), "extra_tensors"),
    "files entry outside": (lambda m: m["files"].update({"../x": m["files"]["config.json"]}), "invalid file entry"),
    "a top-level list": (lambda m: list(m), "does not describe"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_a_malformed_manifest_gets_one_line(victim, base, capsys, case):
    fn, match = MANIFEST_CASES[case]
    m = read_json(victim / "manifest.json")
    new = fn(m)
    write_json(victim / "manifest.json", m if new is None else new)
    refused(capsys, victim, base[1], match)


CONFIG_CASES = {
    "a JSON list": (lambda c: [c], "config.json does not fit the format: (top level)"),
    "num_labels missing": (_drop("num_labels"), "num_labels: Field required"),
    "hidden_size missing": (_drop("hidden_size"), "hidden_size: Field required"),
    "hidden_size 0": (lambda c: c.update(hidden_size=0), "greater than or equal to 1"),
    "activation bits 1000": (lambda c: c["act_quant"]["layer.0.attn.q"]["spec"].update(bits=1000), "bits"),
    "activation kind unknown": (lambda c: c["act_quant"]["layer.1.ffn.up"]["spec"].update(kind="evil"), "is not known"),
    "act quant on an embedding": (lambda c: c["act_quant"].update({"emb.word": {"spec": {"kind": "dynamic_act", "bits": 8}}}),
                                  "not a linear of this model"),
    "more layers than listed": (lambda c: c.update(num_layers=3), "num_layers 3"),
    "heads beyond the hidden size": (lambda c: c.update(heads_per_layer=[4, 2]), "exceed hidden_size"),
    "roberta positions": (lambda c: c.update(position_style="roberta", pad_token_id=127), "max_position_embeddings must exceed"),
    "vocab kept beyond": (lambda c: c["vocab"].update(kept=10**6), "vocab.kept"),
    "unk beyond": (lambda c: c["vocab"].update(unk_token_id=10**6), "vocab.unk_token_id"),
    "layer_norm_eps NaN": (lambda c: c.update(layer_norm_eps=float("nan")), "layer_norm_eps"),
    "hidden act unknown": (lambda c: c.update(hidden_act="evil"), "hidden_act: Input should be"),
    "head without labels": (lambda c: c.update(num_labels=0), "num_labels must be 0 exactly"),
    "id2label keys": (lambda c: c.update(id2label={"x": "y"}), "id2label.x"),
    "unknown key": (lambda c: c.update(evil=1), "evil: Extra inputs are not permitted"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_malformed_config_gets_one_line(victim, base, capsys, case):
    fn, match = CONFIG_CASES[case]
    edit_json(victim, "config.json", fn)
    refused(capsys, victim, base[1], match)


def test_a_vocab_map_beyond_the_kept_rows_is_refused(victim, base, capsys):
    replace_tensors(victim, lambda t: t["emb.vocab_map"].fill_(1000))
    refused(capsys, victim, base[1], "emb.vocab_map does not match the kept vocabulary", commands=("eval",))


def test_an_unused_stored_tensor_is_refused(victim, base, capsys):
    replace_tensors(victim, lambda t: t.update(smuggled=torch.zeros(10, dtype=torch.uint8)))
    refused(capsys, victim, base[1], "does not use: ['smuggled']")


def test_a_header_of_another_dtype_is_refused(victim, base, capsys):
    replace_tensors(victim, lambda t: t.update({"emb.ln.bias": t["emb.ln.bias"].double()}))
    edit_json(victim, "manifest.json", lambda m: m.update(payload_bytes=m["payload_bytes"]))
    refused(capsys, victim, base[1], "dtype 'F64'")


def test_garbage_tokenizer_json_gets_one_line(victim, base, capsys):
    write_tokenizer_file(victim, "tokenizer.json", b'{"model": 7, "added_tokens": "x"}', compress=True)
    refused(capsys, victim, base[1], "its tokenizer cannot be loaded", commands=("eval",))


def test_no_tokenizer_is_said_plainly(victim, base, capsys):
    import shutil

    shutil.rmtree(victim / "tokenizer")
    rehash(victim)
    refused(capsys, victim, base[1], "has no tokenizer/ folder", commands=("eval",))
    assert cli(capsys, "size", victim)[0] == 0  # size does not need one


@pytest.mark.parametrize("name", ["vocab.pkl", "tokenization_bert.py", "evil.so"])
def test_only_the_exporter_s_tokenizer_files_are_allowed(victim, base, capsys, name):
    (victim / "tokenizer" / name).write_bytes(b"\x80\x04K\x01.")
    rehash(victim)
    refused(capsys, victim, base[1], name)


def test_a_packed_directory_without_manifest_says_so(victim, base, capsys):
    (victim / "manifest.json").unlink()
    refused(capsys, victim, base[1], "has no manifest.json")


def test_a_truncated_xz_file_is_refused(victim, base, capsys):
    f = next((victim / "tokenizer").glob("tokenizer.json.xz"))
    f.write_bytes(f.read_bytes()[:-40])
    rehash(victim)
    refused(capsys, victim, base[1], "tokenizer/tokenizer.json.xz", commands=("eval",))


# ----------------------------------------------------------------------------- other files read
def test_every_from_pretrained_refuses_remote_code():
    """Every call that may load code from a folder or the hub says trust_remote_code=False."""
    import ast

    import compactbert

    calls = []
    for path in Path(compactbert.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("from_pretrained", "from_config"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("trust_remote_code"), ast.Constant) and kw["trust_remote_code"].value is False
                calls.append((f"{path.name}:{node.lineno}", ok))
    assert len(calls) >= 8
    assert all(ok for _, ok in calls), [c for c, ok in calls if not ok]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n" \
       "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ndata: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"


@pytest.mark.parametrize(("name", "text", "match"), [
    ("config.yaml", BOMB, "anchors and aliases"),
    ("config.yaml", "- a list\n", "is not a mapping of settings"),
    ("config.yaml", "data: !!python/object/apply:os.system [echo hi]\n", "is not allowed"),
    ("run.json", "[1, 2]", "is not a JSON object"),
    ("run.json", "{" * 100_000, "is not valid JSON"),
    ("run.json", "[" * 100_000 + "]" * 100_000, "is nested too deeply"),
    ("run.json", '{"task": "sst2", "pad": "' + "x" * 600_000 + '"}', "is larger than 512 KiB"),  # limit lowered below
])
def test_a_run_directory_s_settings_are_read_as_plain_data(base, tmp_path, capsys, monkeypatch, name, text, match):
    import shutil

    from compactbert import runs

    monkeypatch.setattr(runs, "MAX_RUN_JSON_BYTES", 512 * 1024)  # 16 MiB in use; 512 KiB here

    run = tmp_path / "run"
    shutil.copytree(base[0].parent / "model", run / "model")
    (run / "run.json").write_text(json.dumps({"task": "sst2"}))
    (run / name).write_text(text)
    code, err = cli(capsys, "eval", run, "--data", base[1])
    assert code == 2 and len(err) == 1 and match in err[0], err
