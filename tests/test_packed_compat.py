"""Packed directories written by an older compactbert still load and predict the same.

``tests/data/packed_v1/`` holds folders of format version 1 written before the quantizer plugins
(see its ``generate.py``) and, in ``expected.json``, what that code decoded and predicted: a
sha256 of every decoded tensor and the logits of a fixed batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from compactbert.export.pack import read_packed, verify_packed
from compactbert.runtime import load

DATA = Path(__file__).parent / "data" / "packed_v1"
EXPECTED = json.loads((DATA / "expected.json").read_text())


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()


def inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    tt = torch.tensor(case["token_type_ids"]) if case["arch"] in ("bert", "electra") else None
    return torch.tensor(case["input_ids"]), torch.tensor(case["attention_mask"]), tt


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_version_1_folder_decodes_to_the_same_tensors(name):
    case = EXPECTED[name]
    assert verify_packed(DATA / name)["format_version"] == 1
    packed = read_packed(DATA / name)
    got = {k: [list(v.shape), digest(v)] for k, v in sorted(packed.tensors.items())}
    assert got == case["tensors"]
    codes = {k: [digest(lv.float()), digest(s)] for k, (lv, s) in sorted(packed.row_codes.items())}
    assert codes == case["row_codes"]


def max_err(a: torch.Tensor, b: list) -> float:
    return float((a - torch.tensor(b)).abs().max())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_version_1_folder_predicts_the_same(name):
    """What the old code predicted, except where the old code was wrong: the fixture was written on
    an AVX2 CPU where the old runtime used oneDNN's int8 products, which saturate there (the static
    A8 folder's stored logits are 2e-5 off the training-time model); the runtime now uses them only
    where they are exact, and must then reproduce the training-time logits exactly instead."""
    case = EXPECTED[name]
    ids, mask, tt = inputs(case)
    fp32 = load(DATA / name, dtype="fp32")(ids, mask, tt)
    default = load(DATA / name)(ids, mask, tt)
    assert min(max_err(fp32, case["fp32_logits"]), max_err(fp32, case["training_logits"])) <= 1e-6
    assert min(max_err(default, case["default_logits"]), max_err(default, case["training_logits"])) <= 1e-5
    assert max_err(fp32, case["training_logits"]) <= 1e-4  # and still what the training-time model computed
