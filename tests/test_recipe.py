"""Recipes: every ready recipe validates and round-trips; bad recipes give one clear error."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from compactbert.cli import main
from compactbert.errors import UserError
from compactbert.recipe import Recipe, apply_override

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
REQUIRED = {
    "xtc-ternary", "xtc-binary", "xtc-layer-reduction-binary", "int8-qat", "magnitude-pruning", "combine-kd-qat-mp",
}


def test_the_issue_s_ready_recipes_exist_and_name_their_paper():
    names = {p.stem for p in RECIPES}
    assert REQUIRED <= names
    for p in RECIPES:
        head = p.read_text().splitlines()[0]
        assert head.startswith("#") and len(head) > 20, f"{p.name}: first line must say which paper it follows"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_ready_recipe_round_trips_yaml_object_yaml(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ready recipes pair low-bit quantization with distillation
        r = Recipe.load(path)
    text = r.to_yaml()
    again = Recipe.from_yaml(text)
    assert again == r
    assert again.to_yaml() == text


def test_xtc_layer_reduction_recipe_reduces_before_it_quantizes():
    r = Recipe.load(Path(__file__).resolve().parents[1] / "recipes" / "xtc-layer-reduction-binary.yaml")
    assert [m.type for m in r.stages[0].methods] == ["layer_reduction", "distillation"]
    assert r.stages[0].methods[0].keep == [1, 3, 5]
    assert [m.type for m in r.stages[1].methods] == ["binary", "quantize", "distillation"]
    assert r.stages[1].methods[0].weight_bits() == 1
    assert (r.stages[1].methods[1].targets, r.stages[1].methods[1].weight_bits()) == (["*pooler.dense"], 8)


BASE = """stages:
  - name: s
    epochs: 2
    methods:
      - type: ternary
      - type: distillation
"""


def _err(text: str, overrides=None) -> str:
    with pytest.raises(UserError) as e:
        Recipe.from_yaml(text, "r.yaml", overrides=overrides)
    return str(e.value)


def test_unknown_key_names_file_line_path_and_valid_keys():
    msg = _err(BASE.replace("epochs: 2", "epochz: 2"))
    assert msg.startswith("r.yaml:3: stages.0.epochz: unknown key")
    assert "did you mean 'epochs'" in msg and "valid keys:" in msg


def test_unknown_method_key_and_type():
    msg = _err(BASE.replace("- type: ternary", "- type: ternary\n        bitz: 2"))
    assert msg.startswith("r.yaml:6: stages.0.methods.0.bitz: unknown key") and "'bits'" in msg
    msg = _err(BASE.replace("type: ternary", "type: ternery"))
    assert "r.yaml:5:" in msg and "unknown method 'ternery'" in msg and "did you mean 'ternary'" in msg


def test_wrong_type_and_out_of_range_bits():
    assert "stages.0.epochs" in _err(BASE.replace("epochs: 2", "epochs: many"))
    msg = _err(BASE.replace("- type: ternary", "- type: quantize\n        weight: int\n        bits: 9"))
    assert "stages.0.methods.0" in msg and "2..8" in msg


def test_layer_reduction_after_quantization_is_refused():
    text = BASE + """  - name: late
    methods:
      - type: layer_reduction
        keep: [0, 2]
"""
    msg = _err(text)
    assert "r.yaml:9" in msg and "layer reduction after quantization" in msg


def test_binary_without_distillation_warns():
    with pytest.warns(UserWarning, match="without distillation"):
        Recipe.from_yaml("stages:\n  - methods:\n      - type: binary\n")


def test_overrides_apply_and_are_validated():
    r = Recipe.from_yaml(BASE, overrides=["stages.0.epochs=1", "stages.0.lr=1e-4", "seed=7"])
    assert (r.stages[0].epochs, r.stages[0].lr, r.seed) == (1.0, 1e-4, 7)
    assert "stages.0.epochss" in _err(BASE, ["stages.0.epochss=1"])
    with pytest.raises(UserError, match="index out of range"):
        apply_override({"stages": []}, "stages.0.epochs=1")
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_override({}, "stages")


def test_empty_and_malformed_yaml():
    assert "empty" in _err("")
    assert "not valid YAML" in _err("stages: [1,\n")
    assert "'stages' must be a list" in _err("stages: 3\n")


def test_recipe_check_cli_prints_plan_and_errors_exit_2(tmp_path, capsys):
    assert main(["recipe", "check", "xtc-layer-reduction-binary"]) == 0
    out = capsys.readouterr().out
    assert "stage 0 'layer-reduction-kd'" in out and "stage 1 'binary-kd'" in out and "recipe OK" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("epochs: 2", "epochs: 2\n    color: red"))
    assert main(["recipe", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:4: stages.0.color: unknown key" in err[0]
    assert main(["recipe", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
