"""Bad input to the mixed-precision recipes (AQ-BERT search, Hessian allocation) through the CLI:
one stderr line naming the value and what is valid, exit 2, nothing written and nothing lost;
a search stage without a later fine-tuning stage is a warning, not an error.

``recipe check`` has no model, so it checks what a recipe alone decides (widths, units, held-out
share, an avg_bits budget below every nonzero width); ``compress`` also checks, before it writes
anything, what depends on the model (row groups that do not divide a matrix's rows, a budget outside
the reachable range in bytes and avg_bits)."""

from __future__ import annotations

import pytest

from compactbert.cli import main
from toy import make_tiny_model, write_toy_glue

# toy model: 2 layers, hidden 32, FFN 64: 16,384 targeted weights in 448 rows (each 4 bytes of scales)
N_WEIGHTS = 2 * (4 * 32 * 32 + 2 * 64 * 32)
M = "stages.0.methods.0"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpcli")
    glue = write_toy_glue(root / "glue", "sst2", n_train=16, n_dev=8)
    model = make_tiny_model(root / "bert", "bert", hidden_size=32, num_heads=2, intermediate_size=64)
    return glue, model


def one_error_line(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


RECIPE_CASES = {
    "unknown width": ("aq-bert", f"{M}.candidates=[0, 3, 16]",
                      ["candidates: unknown width(s) [16]", "valid widths: [0, 1, 2, 3, 4, 5, 6, 7, 8]"]),
    "unknown width (hessian)": ("aq-bert-hessian", f"{M}.candidates=[0, 2, 9]", ["unknown width(s) [9]", "valid widths"]),
    "empty candidates": ("aq-bert", f"{M}.candidates=[]", ["candidates is empty", "give at least one width"]),
    "only pruning": ("aq-bert-hessian", f"{M}.candidates=[0]", ["candidates [0] has no nonzero width"]),
    "unknown unit": ("aq-bert", f"{M}.budget={{gigabits: 3}}",
                     ["budget unit 'gigabits' is not known", "valid units: bytes, megabytes, avg_bits"]),
    "unknown unit (string)": ("aq-bert-hessian", f"{M}.budget=3 bits",
                              ["budget unit 'bits' is not known", "valid units: bytes, megabytes, avg_bits"]),
    "heldout above 0.5": ("aq-bert", f"{M}.heldout=0.7", ["heldout=0.7 is outside (0, 0.5]", "e.g. 0.1"]),
    "heldout 0": ("aq-bert", f"{M}.heldout=0", ["heldout=0.0 is outside (0, 0.5]"]),
    "heldout negative": ("aq-bert", f"{M}.heldout=-0.1", ["heldout=-0.1 is outside (0, 0.5]"]),
    "avg_bits below every width": ("aq-bert", [f"{M}.candidates=[2, 4]", f"{M}.budget={{avg_bits: 1.5}}"],
                                   ["budget 1.5 avg_bits is smaller than every group at its smallest width",
                                    "reachable: at least 2 avg_bits"]),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_recipe_check_refuses_bad_keys_with_one_line(capsys, case):
    recipe, sets, needles = RECIPE_CASES[case]
    sets = [sets] if isinstance(sets, str) else sets
    code = main(["recipe", "check", recipe, *(a for s in sets for a in ("--set", s))])
    one_error_line(code, capsys.readouterr().err, *needles)


def test_a_search_without_a_later_finetune_stage_is_a_warning(capsys, tmp_path):
    recipe = tmp_path / "search-only.yaml"
    recipe.write_text("stages:\n  - name: search\n    steps: 4\n    methods:\n"
                      "      - {type: mixed_precision_search, budget: {avg_bits: 3}}\n")
    with pytest.warns(UserWarning, match="in the last stage: the chosen widths are not fine-tuned afterwards"):
        assert main(["recipe", "check", str(recipe)]) == 0
    assert "recipe OK" in capsys.readouterr().out


def compress_args(env, out, *sets, recipe="aq-bert", extra=()):
    glue, model = env
    args = ["compress", recipe, "--teacher", str(model), "--task", "sst2", "--data", str(glue), "--out", str(out),
            "--no-progress", *extra]
    for s in (f"{M}.row_group_size=8", "bf16=false", *sets):
        args += ["--set", s]
    return args


COMPRESS_CASES = {
    "groups do not divide the rows": ("aq-bert", [f"{M}.row_group_size=7"],
                                      ["row_group_size=7 does not divide the 32 rows of "
                                       "bert.encoder.layer.0.attention.self.query (32x32)",
                                       "valid: a divisor of every targeted matrix's rows, e.g. 1, 2, 4, 8, 16, 32"]),
    "bytes below reachable": ("aq-bert", [f"{M}.candidates=[2, 4]", f"{M}.budget={{bytes: 5000}}"],
                              ["budget 5000 bytes (= 2.441 avg_bits) is smaller than every group at its smallest width",
                               f"reachable with widths [2, 4] over these {N_WEIGHTS:,} weights: 5,888 to 9,984 bytes "
                               "= 2.875 to 4.875 avg_bits"]),
    "megabytes above reachable": ("aq-bert-hessian", [f"{M}.budget={{megabytes: 1}}"],
                                  ["budget 1 megabytes (= 1,000,000 bytes = 488.3 avg_bits) is larger than every group "
                                   "at its largest width", "0 to 9,984 bytes = 0 to 4.875 avg_bits = 0 to 0.009984 megabytes"]),
    "avg_bits above reachable": ("aq-bert", [f"{M}.budget={{avg_bits: 5}}"],
                                 ["budget 5 avg_bits (= 10,240 bytes) is larger than every group at its largest width",
                                  "0 to 9,984 bytes = 0 to 4.875 avg_bits"]),
    "unknown width": ("aq-bert", [f"{M}.candidates=[0, 2, 16]"], ["unknown width(s) [16]", "valid widths"]),
}


@pytest.mark.parametrize("case", list(COMPRESS_CASES))
def test_compress_refuses_bad_input_before_writing_anything(env, capsys, tmp_path, case):
    recipe, sets, needles = COMPRESS_CASES[case]
    out = tmp_path / "run"
    code = main(compress_args(env, out, *sets, recipe=recipe))
    one_error_line(code, capsys.readouterr().err, *needles)
    assert not out.exists()


def test_compress_overwrite_with_bad_row_groups_loses_nothing(env, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    earlier = {"run.json": '{"kind": "compress", "task": "sst2"}', "eval.json": '{"metrics": {"accuracy": 0.9}}'}
    for name, text in earlier.items():
        (out / name).write_text(text)
    code = main(compress_args(env, out, f"{M}.row_group_size=12", extra=["--overwrite"]))
    one_error_line(code, capsys.readouterr().err, "row_group_size=12 does not divide the 32 rows")
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier
