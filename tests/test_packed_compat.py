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


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_version_1_folder_predicts_the_same(name):
    case = EXPECTED[name]
    ids, mask, tt = inputs(case)
    fp32 = load(DATA / name, dtype="fp32")(ids, mask, tt)
    torch.testing.assert_close(fp32, torch.tensor(case["fp32_logits"]), atol=1e-6, rtol=0)
    default = load(DATA / name)(ids, mask, tt)  # A8 models: int8 products where oneDNN has them
    torch.testing.assert_close(default, torch.tensor(case["default_logits"]), atol=1e-5, rtol=0)
    # and still what the training-time model computed
    torch.testing.assert_close(fp32, torch.tensor(case["training_logits"]), atol=1e-4, rtol=0)
