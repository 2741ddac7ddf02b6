"""compactbert sweep without training: sweep-file errors (one line, exit 2, nothing written), grid
expansion and point names, --set round trips, step counts, Pareto fronts, the "pick this" summary
and the merge of a benchmark into the points. (End to end on a tiny model: tests/e2e/test_e2e_sweep.py.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from compactbert.cli import main
from compactbert.errors import UserError
from compactbert.recipe import Recipe, apply_override
from compactbert.report.sweep import front_names, pick_summary, summary_lines
from compactbert.workflows.sweep import check_sweep_dir, merge_bench
from compactbert.workflows.sweepcost import point_steps
from compactbert.workflows.sweepfile import expand, format_set, load_sweep, parse_sweep

REPO = Path(__file__).resolve().parents[1]


def run_sweep_cli(capsys, tmp_path: Path, text: str, *extra: str) -> tuple[int, list[str], Path]:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    out = tmp_path / "out"
    code = main(["sweep", str(f), "--teacher", str(tmp_path / "teacher"), "--task", "sst2", "--out", str(out), *extra])
    return code, capsys.readouterr().err.strip().splitlines(), out


@pytest.mark.parametrize("text, expected", [
    ("recipes:\n  - recipe: no-such-recipe\n", ["'no-such-recipe' does not exist", "int8-qat"]),
    ("recipes:\n  - recipe: int8-qat\n    set: {stages.0.methods.0.sparsity: 0.5}\n",
     ["point 'int8-qat'", "stages.0.methods.0.sparsity: unknown key"]),
    ("recipes:\n  - recipe: int8-qat\n    grid: {stages.0.lr: [1.0e-5, 2.0e-5], stages.0.methods.0.bitz: [8]}\n",
     ["stages.0.methods.0.bitz: unknown key", "did you mean 'bits'"]),
    ("recipes:\n  - recipe: int8-qat\n    set: {stages.2.lr: 1.0e-5}\n", ["stages.2: index out of range"]),
    ("recipes:\n  - recipe: int8-qat\n    set: {stages.0.lr: -1}\n", ["stages.0.lr", "greater than 0"]),
    ("recipes: []\n", ["recipes: the list is empty"]),
    ("recipes:\n  - recipe: int8-qat\n    grid: {}\n", ["recipes.0.grid is empty"]),
    ("recipes:\n  - recipe: int8-qat\n    grid: {stages.0.lr: []}\n", ["recipes.0.grid.stages.0.lr: the list of values is empty"]),
    ("recipes:\n  - recipe: int8-qat\n    gird: {stages.0.lr: [1]}\n", ["recipes.0.gird: unknown key", "did you mean 'grid'"]),
    ("recipes:\n  - recipe: {stages: [{methods: []}]}\n", ["inline recipe needs a 'name'"]),
    ("recipes:\n  - recipe: int8-qat\n  - recipe: int8-qat\n", ["two points are named 'int8-qat'"]),
    ("recipes: [int8-qat]\n", ["recipes.0", "valid dictionary"]),
    ("- just a list\n", ["a sweep file is a mapping"]),
])
def test_bad_sweep_files_fail_in_one_line_before_anything_is_written(capsys, tmp_path, text, expected):
    code, err, out = run_sweep_cli(capsys, tmp_path, text)
    assert code == 2
    assert len(err) == 1, err
    for part in expected:
        assert part in err[0], err[0]
    assert "Traceback" not in err[0]
    assert not out.exists()


def test_a_grid_over_max_points_is_refused_before_it_is_expanded(capsys, tmp_path):
    grid = "{stages.0.lr: [1, 2, 3, 4, 5, 6, 7, 8], stages.0.batch_size: [1, 2, 3, 4, 5, 6, 7, 8], stages.0.seed_x: [1]}"
    text = f"recipes:\n  - recipe: int8-qat\n    grid: {grid}\n  - recipe: int8-qat\n    name: b\n"
    code, err, out = run_sweep_cli(capsys, tmp_path, text)  # 65 points > 64 (the bad key is never reached)
    assert code == 2 and len(err) == 1
    assert "the sweep has 65 points, more than --max-points 64" in err[0]
    assert not out.exists()
    code, err, out = run_sweep_cli(capsys, tmp_path, "recipes:\n  - recipe: int8-qat\n    grid: {stages.0.lr: [1, 2, 3]}\n",
                                   "--max-points", "2")
    assert code == 2 and "3 points, more than --max-points 2" in err[0]
    assert not out.exists()


def test_missing_sweep_file(capsys, tmp_path):
    code = main(["sweep", str(tmp_path / "nope.yaml"), "--teacher", "t", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sweep file" in err[0] and "nope.yaml" in err[0]


SWEEP = """
description: test
set: {stages.0.epochs: 1}
recipes:
  - recipe: int8-qat
    name: qat
  - recipe: magnitude-pruning
    name: mp
    set: {stages.0.methods.1.alpha: 1.0}
    grid:
      stages.0.methods.0.sparsity: [0.5, 0.9]
      stages.0.methods.1.weights: [{logits: 1.0}, {logits: 1.0, hidden: 2.0}]
  - name: lr
    recipe:
      stages:
        - methods: [{type: layer_reduction, keep: [0]}]
        - methods: []
    grid: {stages.0.lr: [0.001], stages.1.lr: [0.002, 0.003], stages.0.methods.0.keep: [[0], [1, 3, 5]]}
"""


def test_grid_expansion_and_point_names_are_deterministic(tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP)
    plan = load_sweep(tmp_path / "s.yaml")
    assert [p.name for p in plan.points] == [
        "qat",
        "mp-sparsity0.5-weightslogits_1.0", "mp-sparsity0.5-weightslogits_1.0_hidden_2.0",
        "mp-sparsity0.9-weightslogits_1.0", "mp-sparsity0.9-weightslogits_1.0_hidden_2.0",
        # two keys end in 'lr': both keep their whole key
        "lr-stages.0.lr0.001-stages.1.lr0.002-keep0", "lr-stages.0.lr0.001-stages.1.lr0.002-keep1_3_5",
        "lr-stages.0.lr0.001-stages.1.lr0.003-keep0", "lr-stages.0.lr0.001-stages.1.lr0.003-keep1_3_5",
    ]
    mp = plan.points[2]
    assert mp.overrides == ("stages.0.epochs=1", "stages.0.methods.1.alpha=1.0", "stages.0.methods.0.sparsity=0.5",
                            "stages.0.methods.1.weights={logits: 1.0, hidden: 2.0}")
    assert mp.grid == {"stages.0.methods.0.sparsity": 0.5, "stages.0.methods.1.weights": {"logits": 1.0, "hidden": 2.0}}
    # each point's recipe is what `compress RECIPE --set ...` would run
    from compactbert.workflows.compress import recipe_check

    assert mp.recipe == recipe_check("magnitude-pruning", list(mp.overrides))
    assert mp.recipe.stages[0].methods[0].sparsity == 0.5 and mp.recipe.stages[0].methods[1].weights.hidden == 2.0
    assert plan.points[-1].recipe.stages[0].methods[0].keep == [1, 3, 5]
    assert plan.points[-1].recipe.stages[1].lr == 0.003
    again = load_sweep(tmp_path / "s.yaml")
    assert [(p.name, p.overrides) for p in again.points] == [(p.name, p.overrides) for p in plan.points]


def test_a_recipe_file_is_found_beside_the_sweep_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.yaml").write_text("stages:\n  - steps: 3\n    methods: [{type: int8}]\n")
    (tmp_path / "sub" / "s.yaml").write_text("recipes:\n  - recipe: mine.yaml\n    grid: {stages.0.steps: [3, 5]}\n")
    plan = load_sweep(tmp_path / "sub" / "s.yaml")
    assert [p.name for p in plan.points] == ["mine-steps3", "mine-steps5"]
    assert [p.recipe.stages[0].steps for p in plan.points] == [3, 5]


def test_long_point_names_are_cut_and_stay_unique():
    sweep = parse_sweep("recipes:\n  - recipe: int8-qat\n    grid: {stages.0.description_of_a_very_long_key_name: "
                        "['" + "a" * 90 + "1', '" + "a" * 90 + "2']}\n", "<t>")
    names = [p.name for p in expand(sweep)]
    assert all(len(n) == 100 for n in names) and len(set(names)) == 2


@pytest.mark.parametrize("value", [0.5, 5.0e-5, 3, True, None, "linear", "yes", "1e5", [1, 3, 5], {"logits": 1.0, "hidden": 0.5},
                                   [[0, 1], {"a": "b c"}], "a: b", "with #hash"])
def test_format_set_reads_back_as_the_same_value(value):
    raw = {"stages": [{"x": 0}]}
    apply_override(raw, format_set("stages.0.x", value))
    assert raw["stages"][0]["x"] == value and type(raw["stages"][0]["x"]) is type(value)


def test_point_steps_counts_what_the_loop_will_run():
    rec = Recipe.from_yaml(
        "stages:\n"
        "  - {epochs: 2, batch_size: 32, methods: []}\n"          # 2 x ceil(100 / 32) = 8
        "  - {steps: 7, methods: []}\n"                           # 7
        "  - {epochs: 0.5, batch_size: 10, methods: [], augment: {n_aug: 2, p: 0.1}}\n"  # 0.5 x 300 / 10 = 15
    )
    assert point_steps(rec, 100) == 8 + 7 + 15


def test_check_sweep_dir(tmp_path):
    assert check_sweep_dir(tmp_path / "new", resume=False) == "fresh"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(UserError, match="is not a sweep"):
        check_sweep_dir(tmp_path / "other", resume=True)
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a sweep; pass --resume"):
        check_sweep_dir(tmp_path / "sw", resume=False)
    assert check_sweep_dir(tmp_path / "sw", resume=True) == "resume"
    with pytest.raises(UserError, match="is a file"):
        check_sweep_dir(tmp_path / "other" / "x.txt", resume=False)


# ---------------------------------------------------------------- fronts and the summary

TEACHER = {"name": "teacher", "accuracy": 0.900, "file_bytes": 90_000_000, "latency_ms_bs1_p50": 20.0,
           "task": "sst2", "split": "dev", "n": 872, "metric": "accuracy"}
POINTS = [  # name, accuracy, packed bytes, bs1 p50 ms
    ("a", 0.899, 40_000_000, 5.0),   # -0.1 pts
    ("b", 0.895, 20_000_000, 12.0),  # -0.5 pts exactly
    ("c", 0.894, 10_000_000, 15.0),  # -0.6 pts
    ("d", 0.885, 5_000_000, 4.0),    # -1.5 pts
    ("e", 0.860, 2_000_000, 3.0),    # -4 pts
    ("f", 0.880, 30_000_000, 30.0),  # dominated on both axes
]


def points(latency: bool = True) -> list[dict]:
    return [{"name": n, "status": "done", "accuracy": a, "packed_bytes": b, "latency_ms_bs1_p50": ms if latency else None}
            for n, a, b, ms in POINTS] + [{"name": "g", "status": "failed", "accuracy": None}]


def test_front_names_on_known_numbers():
    entries = [{"name": p["name"], "accuracy": p.get("accuracy"), "file_bytes": p.get("packed_bytes"),
                "latency_ms_bs1_p50": p.get("latency_ms_bs1_p50")} for p in points()]
    entries.append({"name": "teacher", "accuracy": 0.9, "file_bytes": 90_000_000, "latency_ms_bs1_p50": 20.0})
    assert front_names(entries, "file_bytes") == ["e", "d", "c", "b", "a", "teacher"]
    assert front_names(entries, "latency_ms_bs1_p50") == ["e", "d", "a", "teacher"]


def test_pick_summary_on_known_numbers():
    s = pick_summary(points(), TEACHER)
    assert [x["within_points"] for x in s] == [0.5, 1.0, 2.0]
    assert [x["smallest"]["name"] for x in s] == ["b", "c", "d"]  # b is exactly 0.5 points below: in
    assert [x["fastest"]["name"] for x in s] == ["a", "a", "d"]
    assert s[0]["smallest"]["x_smaller"] == pytest.approx(4.5)
    assert s[2]["fastest"]["x_faster"] == pytest.approx(5.0)
    assert s[0]["min_accuracy"] == pytest.approx(0.895)
    # without a benchmark there is no fastest; nothing within reach gives None
    s = pick_summary(points(latency=False), TEACHER)
    assert [x["fastest"] for x in s] == [None, None, None] and s[0]["smallest"]["name"] == "b"
    assert pick_summary([p for p in points() if p["name"] in ("e", "g")], TEACHER)[2]["smallest"] is None
    lines = summary_lines({"teacher": TEACHER, "points": points(), "summary": pick_summary(points(), TEACHER)})
    assert lines[0].startswith("teacher: 90.00% accuracy (sst2 dev, n=872)")
    assert "within 0.5 point(s) of the teacher: smallest b (20 MB, 4.5x smaller, 89.50%); fastest a (5.00 ms" in lines[1]
    assert lines[-1] == "failed points (1): g (errors in sweep.json)"


def test_merge_bench_puts_the_numbers_on_the_points(tmp_path):
    result = {"teacher": copy.deepcopy(TEACHER), "baselines": [],
              "points": [{"name": "a", "status": "done", "packed_dir": str(tmp_path / "packed" / "a")},
                         {"name": "b", "status": "failed", "packed_dir": None}]}
    bench = {"models": [
        {"name": "a", "role": "compressed", "path": str(tmp_path / "packed" / "a"), "kind": "packed", "accuracy": 0.88,
         "latency_ms_bs1_p50": 3.0, "latency_ms_bs1_p90": 3.5, "throughput_bs32": 400.0, "peak_rss_mb": 300},
        {"name": "teacher-fp32", "role": "baseline", "path": "/x/teacher", "kind": "torch-fp32", "accuracy": 0.9,
         "latency_ms_bs1_p50": 21.0, "throughput_bs32": 57.0, "file_bytes": 91_000_000},
        {"name": "teacher-ort-int8", "role": "baseline", "path": "/x/ort", "kind": "ort-int8", "accuracy": 0.89,
         "latency_ms_bs1_p50": 8.0, "file_bytes": 23_000_000, "error": None},
    ]}
    merge_bench(result, bench, "teacher-fp32")
    a = result["points"][0]
    assert (a["latency_ms_bs1_p50"], a["latency_ms_bs1_p90"], a["throughput_bs32"], a["runtime_accuracy"]) == (3.0, 3.5, 400.0, 0.88)
    assert "latency_ms_bs1_p50" not in result["points"][1]
    assert result["teacher"]["latency_ms_bs1_p50"] == 21.0 and result["teacher"]["accuracy"] == 0.9
    assert [b["name"] for b in result["baselines"]] == ["teacher-ort-int8"]
    assert result["baselines"][0]["file_bytes"] == 23_000_000 and result["baselines"][0]["kind"] == "ort-int8"


def test_shipped_sweep_is_valid():
    plan = load_sweep(REPO / "sweeps" / "combining-compressions.yaml")
    names = [p.name for p in plan.points]
    assert len(names) == len(set(names)) and 10 <= len(names) <= 30
    # every method alone and in every combination (KD = a shallower student with distillation)
    kinds = set()
    for p in plan.points:
        types = {m.type for st in p.recipe.stages for m in st.methods}
        kinds.add(frozenset({"kd" if "layer_reduction" in types else None, "qat" if "int8" in types else None,
                             "mp" if "magnitude_pruning" in types else None} - {None}))
    assert kinds == {frozenset(c) for c in (["qat"], ["kd"], ["mp"], ["qat", "kd"], ["qat", "mp"], ["kd", "mp"],
                                             ["qat", "kd", "mp"])}
