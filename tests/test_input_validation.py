"""Hostile and careless input (issue 9): each gets one line on stderr, exit 2, no traceback, and
nothing is written before it is refused. Recipes, --set values, data files, model folders and hub
ids, option ranges and output paths, all through the CLI's own entry point."""

from __future__ import annotations

import json
import shutil

import pytest

from compactbert.cli import main
from compactbert.data.sources import load_examples
from compactbert.errors import UserError
from compactbert.recipe import Recipe
from toy import make_tiny_model, write_toy_glue

RECIPE = """\
stages:
  - name: qat
    epochs: 1
    methods:
      - {type: quantize, weight: ternary}
      - {type: distillation}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    glue = write_toy_glue(root / "glue", "sst2", n_train=16, n_dev=8)
    model = make_tiny_model(root / "bert", "bert")
    return root, glue, model


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def check_recipe(capsys, tmp_path, text, *extra, name="r.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return run_cli(capsys, ["recipe", "check", path, *extra])


# ------------------------------------------------------------------------------------------- recipes


def test_yaml_aliases_are_refused_before_expansion(capsys, tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
    )  # 9**9 strings when expanded
    code, _, err = check_recipe(capsys, tmp_path, laughs + RECIPE)
    line = assert_user_error(code, err, "r.yaml:1", "anchors and aliases")
    assert len(line) < 300
    code, _, err = check_recipe(capsys, tmp_path, RECIPE + "description: &d hi\nbf16: *d\n")
    assert_user_error(code, err, "r.yaml:7", "anchors and aliases")


def test_recipe_not_utf8(capsys, tmp_path):
    code, _, err = check_recipe(capsys, tmp_path, RECIPE.encode() + b"description: caf\xe9\n")
    assert_user_error(code, err, "r.yaml:7", "not UTF-8", "0xe9")


@pytest.mark.parametrize("value", ["[quantize, int8]", "{name: quantize}", "5"])
def test_method_type_that_is_not_a_name(capsys, tmp_path, value):
    code, _, err = check_recipe(capsys, tmp_path, f"stages:\n  - methods:\n      - {{type: {value}}}\n")
    assert_user_error(code, err, "r.yaml:3", "stages.0.methods.0.type must be a method name", "quantize")


@pytest.mark.parametrize("value", ["5", "quantize", "{type: int8}"])
def test_methods_that_is_not_a_list(capsys, tmp_path, value):
    code, _, err = check_recipe(capsys, tmp_path, f"stages:\n  - methods: {value}\n")
    assert_user_error(code, err, "r.yaml:2", "stages.0.methods must be a list")


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting(capsys, tmp_path, style):
    if style == "flow":
        text = "stages: " + "[" * 3000 + "]" * 3000 + "\n"
    else:
        text = "stages:\n" + "".join("  " * d + "- \n" for d in range(1, 800))
    code, _, err = check_recipe(capsys, tmp_path, text)
    assert_user_error(code, err, "r.yaml", "nest")


def test_huge_integer(capsys, tmp_path):
    code, _, err = check_recipe(capsys, tmp_path, "seed: " + "7" * 5000 + "\n" + RECIPE)
    assert_user_error(code, err, "r.yaml:1", "5000 characters")


def test_nul_byte(capsys, tmp_path):
    code, _, err = check_recipe(capsys, tmp_path, RECIPE + "description: a\x00b\n")
    assert_user_error(code, err, "r.yaml:7", "not valid YAML", "\\x00")


def test_key_with_line_breaks_stays_one_line(capsys, tmp_path):
    code, _, err = check_recipe(capsys, tmp_path, RECIPE + '"bad\\nkey\\u2028here": 1\n')
    assert_user_error(code, err, "unknown key", "bad\\nkey\\u2028here")


@pytest.mark.parametrize(
    "value, needle",
    [
        ("[", "not valid YAML"),
        ("@", "not valid YAML"),
        ("'", "not valid YAML"),
        ("*a", "anchors and aliases"),
        ("&a 1", "anchors and aliases"),
        ("!!python/object/apply:os.system ['touch pwned']", "!!python/object/apply:os.system"),
        ("!!python/name:os.system", "!!python/name:os.system"),
        ("!!binary aGk=", "!!binary"),
        ("1" * 5000, "5000 characters"),
    ],
)
def test_set_values_that_are_not_plain_yaml(capsys, tmp_path, value, needle):
    code, _, err = check_recipe(capsys, tmp_path, RECIPE, "--set", f"stages.0.lr={value}")
    assert_user_error(code, err, "--set", needle)
    assert not (tmp_path / "pwned").exists()


def test_set_index_with_many_digits(capsys, tmp_path):
    code, _, err = check_recipe(capsys, tmp_path, RECIPE, "--set", "stages." + "9" * 5000 + ".lr=1")
    assert_user_error(code, err, "index out of range")


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("seed=-1", "greater than or equal to 0"),
        (f"seed={2**32}", "less than or equal to 4294967295"),
        ("stages.0.epochs=.inf", "finite"),
        ("stages.0.epochs=.nan", "finite"),
        ("stages.0.lr=.inf", "finite"),
        ("stages.0.steps=10000000000", "less than or equal to"),
        ("stages.0.augment={seed: -1}", "greater than or equal to 0"),
    ],
)
def test_ranges_are_checked_by_recipe_check(capsys, tmp_path, setting, needle):
    key = setting.split("=")[0]
    code, _, err = check_recipe(capsys, tmp_path, RECIPE, "--set", setting)
    assert_user_error(code, err, needle, key.split(".")[-1])


@pytest.mark.parametrize("name", ["x" * 5000, "~no-such-user-9/r.yaml"])
def test_recipe_names_the_os_refuses(capsys, name):
    code, _, err = run_cli(capsys, ["recipe", "check", name])
    assert_user_error(code, err, name[:20], "does not exist")


def test_valid_recipe_with_a_valid_set_still_passes(capsys, tmp_path):
    code, out, err = check_recipe(capsys, tmp_path, "\ufeff" + RECIPE, "--set", f"seed={2**32 - 1}")
    assert code == 0, err
    assert "recipe OK" in out and f"seed={2**32 - 1}" in out


@pytest.mark.parametrize("setting", ["seed=-1", f"seed={2**32}", "stages.0.epochs=.inf"])
def test_compress_refuses_bad_ranges_before_writing(env, capsys, tmp_path, setting):
    _, glue, model = env
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, ["compress", recipe, "--teacher", model, "--task", "sst2", "--data", glue,
                                    "--out", out, "--set", setting, "--no-progress"])
    assert_user_error(code, err, setting.split("=")[0].split(".")[-1])
    assert not out.exists()


# ------------------------------------------------------------------------------- finetune ranges


def finetune_args(model, data, out, *extra):
    return ["finetune", "--model", model, "--task", "sst2", "--data", data, "--out", out,
            "--max-steps", "1", "--no-bf16", "--no-progress", *extra]


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--seed", "-1", "greater than or equal to 0"),
        ("--seed", str(2**32), "less than or equal to 4294967295"),
        ("--epochs", "inf", "finite"),
        ("--epochs", "nan", "finite"),
        ("--epochs", "1e308", "less than or equal to"),
        ("--lr", "inf", "finite"),
        ("--max-steps", str(10**15), "less than or equal to"),
        ("--seed", "abc", "valid integer"),
    ],
)
def test_finetune_option_ranges(env, capsys, tmp_path, option, value, needle):
    _, glue, model = env
    out = tmp_path / "r"
    args = finetune_args(model, glue, out, option, value)
    if option == "--max-steps":
        args = args[:-6] + args[-4:]  # drop the default --max-steps 1
    code, _, err = run_cli(capsys, args)
    assert_user_error(code, err, option.lstrip("-"), needle)
    assert not out.exists()


def test_unknown_option_is_one_line(capsys):
    code, _, err = run_cli(capsys, ["recipe", "check", "x.yaml", "--bogus"])
    assert_user_error(code, err, "recipe check", "--bogus")


# ------------------------------------------------------------------------------------------- data


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    data = tmp_path / "d.jsonl"
    texts = ["a\u2028b", "c\u0085d", "e\u2029f\x1cg"]
    data.write_text("".join(json.dumps({"sentence": t, "label": i % 2}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)))
    examples = load_examples("sst2", "train", data)
    assert [e.text_a for e in examples] == texts
    assert [e.label for e in examples] == [0, 1, 0]


@pytest.mark.parametrize(
    "line, needles",
    [
        ('{"sentence": ' + "[" * 100000 + "]" * 100000 + ', "label": 1}', ["line 2", "nested too deeply"]),
        ('{"sentence": ' + "[" * 500 + "]" * 500 + ', "label": 1}', ["line 2", "'sentence'", "expected text"]),
        ('{"sentence": "x", "label": ' + "1" * 5000 + "}", ["line 2", "4300 digits"]),
        ('{"sentence": "x", "label": ' + "1" * 4000 + "}", ["line 2", "'label'", "is not valid"]),
        ('{"sentence": "x", "label": 1e400}', ["line 2", "'label'", "inf"]),
        ('{"sentence": "x"}', ["line 2", "'label'", "no value"]),
    ],
)
def test_jsonl_malformed_values(env, capsys, tmp_path, line, needles):
    _, _, model = env
    data = tmp_path / "d.jsonl"
    data.write_text('{"sentence": "fine", "label": 0}\n' + line + "\n")
    code, _, err = run_cli(capsys, finetune_args(model, data, tmp_path / "r"))
    assert_user_error(code, err, str(data), *needles)
    assert not (tmp_path / "r").exists()


def test_csv_unbalanced_quote_names_line_and_column(env, capsys, tmp_path):
    _, _, model = env
    data = tmp_path / "q.csv"
    data.write_text('sentence,label\nfine,1\n"good film,1\nbad film,0\n')
    code, _, err = run_cli(capsys, finetune_args(model, data, tmp_path / "r"))
    assert_user_error(code, err, str(data), "line 3", "column 'sentence'", "never closed")
    data.write_text('label,sentence\n1,"a ""quoted"" word\nbad film,0\n')
    code, _, err = run_cli(capsys, finetune_args(model, data, tmp_path / "r"))
    assert_user_error(code, err, str(data), "line 2", "column 'sentence'", "never closed")
    assert not (tmp_path / "r").exists()


def test_csv_quoted_fields_spanning_lines_still_load(tmp_path):
    data = tmp_path / "ok.csv"
    data.write_text('sentence,label\n"two\nlines, and ""quotes""",1\nplain,0\n')
    examples = load_examples("sst2", "train", data)
    assert [(e.text_a, e.label) for e in examples] == [('two\nlines, and "quotes"', 1), ("plain", 0)]


def test_short_tsv_row_names_line_and_column(env, capsys, tmp_path):
    _, _, model = env
    data = tmp_path / "short.tsv"
    data.write_text("sentence\tlabel\ngood film\t1\nbad film\n")
    code, _, err = run_cli(capsys, finetune_args(model, data, tmp_path / "r"))
    assert_user_error(code, err, str(data), "line 3", "column 'label'", "no value")


# ---------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("option", ["--data", "--model"])
@pytest.mark.parametrize("value", ["x" * 5000, "~no-such-user-9/x.tsv"])
def test_paths_the_os_refuses(env, capsys, tmp_path, option, value, monkeypatch):
    _, glue, model = env
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a too-long name is no hub id either: nothing is asked
    args = {"--data": glue, "--model": model}
    args[option] = value
    code, _, err = run_cli(capsys, finetune_args(args["--model"], args["--data"], tmp_path / "r"))
    assert_user_error(code, err, value[:20])
    assert not (tmp_path / "r").exists()


def test_truncated_safetensors(env, capsys, tmp_path):
    _, glue, model = env
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = run_cli(capsys, finetune_args(broken, glue, tmp_path / "r"))
    assert_user_error(code, err, str(weights), "truncated")
    assert not (tmp_path / "r").exists()
    code, _, err = run_cli(capsys, ["eval", broken, "--task", "sst2", "--data", glue])
    assert_user_error(code, err, str(weights), "truncated")
    weights.write_bytes(b"\x05\x00")
    code, _, err = run_cli(capsys, ["eval", broken, "--task", "sst2", "--data", glue])
    assert_user_error(code, err, str(weights), "8-byte header")


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, and a hub that refuses connections at once."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return tmp_path / "hf-cache"


def test_unknown_hub_id_offline_fails_without_asking_the_hub(env, capsys, tmp_path, no_hub, monkeypatch):
    _, glue, _ = env
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, finetune_args("nobody/no-such-model", glue, tmp_path / "r"))
    assert_user_error(code, err, "'nobody/no-such-model'", "HF_HUB_OFFLINE", "not in the Hugging Face cache")
    assert not (tmp_path / "r").exists()


def test_unknown_hub_id_with_unreachable_hub(env, capsys, tmp_path, no_hub):
    _, glue, _ = env
    code, _, err = run_cli(capsys, ["eval", "nobody/no-such-model", "--task", "sst2", "--data", glue])
    assert_user_error(code, err, "'nobody/no-such-model'", "cannot be reached", "127.0.0.1:9")


def test_not_a_hub_id(env, capsys, tmp_path, no_hub):
    _, glue, _ = env
    code, _, err = run_cli(capsys, ["eval", "my model?", "--task", "sst2", "--data", glue])
    assert_user_error(code, err, "'my model?'", "not a model folder, a hub id")


@pytest.mark.parametrize("offline", [True, False])
def test_cached_hub_id_loads_without_the_hub(env, capsys, tmp_path, no_hub, monkeypatch, offline):
    _, glue, model = env
    repo = no_hub / "models--someone--tiny-bert"
    shutil.copytree(model, repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(capsys, ["eval", "someone/tiny-bert", "--task", "sst2", "--data", glue,
                                      "--out", tmp_path / "e.json"])
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["n"] == 8


def test_hub_dataset_with_unreachable_hub(env, capsys, no_hub):
    _, _, model = env
    code, _, err = run_cli(capsys, ["eval", model, "--task", "sst2", "--data", "glue/sst2"])
    assert_user_error(code, err, "nyu-mll/glue", "cannot be reached", "127.0.0.1:9", "not in the local datasets cache")


def test_hub_dataset_with_unreachable_hub_is_read_from_the_cache(no_hub, monkeypatch):
    import datasets
    import datasets.config
    from huggingface_hub import constants

    seen = []
    before = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)

    class Cached(list):
        column_names = ["sentence", "label"]

    def from_cache(path, config, split):
        seen.append((path, config, split, constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE))
        return Cached([{"sentence": "a fine film", "label": 1}])

    monkeypatch.setattr(datasets, "load_dataset", from_cache)
    examples = load_examples("sst2", "dev", "glue/sst2")
    assert [(e.text_a, e.label) for e in examples] == [("a fine film", 1)]
    assert seen == [("nyu-mll/glue", "sst2", "validation", True, True)]  # offline: the cache only
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before  # restored


# ----------------------------------------------------------------------------------- output paths


def test_export_out_that_is_a_file(env, capsys, tmp_path):
    _, _, model = env
    blocker = tmp_path / "file.txt"
    blocker.write_text("mine")
    for fmt in ("packed", "onnx"):
        code, _, err = run_cli(capsys, ["export", model, "--out", blocker, "--format", fmt])
        assert_user_error(code, err, str(blocker), "is a file")
        code, _, err = run_cli(capsys, ["export", model, "--out", blocker / "sub", "--format", fmt])
        assert_user_error(code, err, str(blocker / "sub"), "which is a file")
    assert blocker.read_text() == "mine"


def test_size_out_that_is_a_folder(env, capsys, tmp_path):
    _, _, model = env
    code, _, err = run_cli(capsys, ["size", model, "--out", tmp_path])
    assert_user_error(code, err, str(tmp_path), "is a folder")


def test_user_error_is_always_one_bounded_line():
    message = str(UserError("a\nb\rc\u2028d\x85e" + "x" * 10**6))
    assert len(message.splitlines()) == 1
    assert message.startswith("a\\nb\\rc\\u2028d\\x85e") and len(message) <= 2000


def test_recipe_from_yaml_api_refuses_aliases():
    with pytest.raises(UserError, match="anchors and aliases"):
        Recipe.from_yaml("x: &a 1\n" + RECIPE)


def test_to_yaml_never_writes_aliases(monkeypatch):
    """A run's recipe.yaml is read back with the alias-refusing loader: the writer must not emit any."""
    stage = {"name": "s", "epochs": 1.0, "methods": [{"type": "int8"}]}
    monkeypatch.setattr(Recipe, "to_dict", lambda self: {"stages": [stage, stage]})  # one object, twice
    text = Recipe.from_yaml(RECIPE).to_yaml()
    assert "&" not in text and "*" not in text
    monkeypatch.undo()
    again = Recipe.from_yaml(text)
    assert [s.name for s in again.stages] == ["s", "s"]
