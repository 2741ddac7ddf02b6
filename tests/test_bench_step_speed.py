"""benchmarks/teacher_cache_speed.py: each arm trains the way its name says (teacher live or
cached, FP32 or bf16 autocast), and the teacher-part timing runs only where it can compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import teacher_cache_speed as tcs  # noqa: E402

from compactbert.recipe import Recipe  # noqa: E402


def recipe_of(argv: list[str]) -> Recipe:
    """The recipe a child's ``compactbert compress`` argv trains: its ``--set`` overrides applied."""
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    return Recipe.load(REPO / "recipes" / f"{argv[1]}.yaml", overrides=sets)


def args_for(arms=("live", "cached")) -> argparse.Namespace:
    return tcs.parse_args(["--teacher", "runs/t", "--task", "sst2", "--steps", "20", "--warmup", "5",
                           "--arms", *arms])


@pytest.mark.parametrize(("name", "cached", "bf16"), [
    ("live", False, True), ("cached", True, True),  # no suffix: the recipe's own bf16 (on where native)
    ("live-fp32", False, False), ("cached-fp32", True, False), ("cached-bf16", True, True),
])
def test_an_arm_trains_as_its_name_says(name, cached, bf16, tmp_path):
    args = args_for([name])
    argv = tcs.child_argv(args, "xtc-binary", name, tmp_path / "run")
    rec = recipe_of(argv)
    dist = next(m for m in rec.stages[0].methods if m.type == "distillation")
    assert dist.cache_teacher is cached
    assert rec.bf16 is bf16
    assert rec.stages[0].epochs == pytest.approx(25 / 2105, abs=1e-6)  # warm-up + timed steps of SST-2
    binary = next(m for m in rec.stages[0].methods if m.type == "binary")
    assert binary.compile is True


def test_later_stages_are_cut_to_one_step(tmp_path):
    argv = tcs.child_argv(args_for(), "xtc-layer-reduction-binary", "cached-fp32", tmp_path / "run")
    rec = recipe_of(argv)
    assert rec.bf16 is False
    assert [s.epochs for s in rec.stages[1:]] == [pytest.approx(1 / 2105, abs=1e-6)] * (len(rec.stages) - 1)


@pytest.mark.parametrize("bad", ["warm", "cached-fp16", "live-", "cached-", "cachedbf16"])
def test_unknown_arms_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as e:
        args_for([bad])
    assert e.value.code == 2
    assert "arm must be live or cached" in capsys.readouterr().err


def test_precision_and_teacher_part_timing():
    assert tcs.precision_of("cached", default_bf16=True) == "bf16"
    assert tcs.precision_of("cached", default_bf16=False) == "fp32"
    assert tcs.precision_of("live-fp32", default_bf16=True) == "fp32"
    # the teacher's part alone compares a live and a cached teacher at one precision
    assert tcs.component_precision(["live", "cached"], default_bf16=False) == "fp32"
    assert tcs.component_precision(["live-bf16", "cached"], default_bf16=True) == "bf16"
    assert tcs.component_precision(["live-bf16", "cached"], default_bf16=False) is None
    assert tcs.component_precision(["cached-fp32", "cached-bf16"], default_bf16=True) is None
