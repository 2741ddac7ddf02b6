"""The quantizer plugin seam is real: a kind defined in this file alone (plus its registration) goes
through recipe validation, the real training loop, saving and loading, size accounting, packed
export, reading and the runtime, without a line of compactbert knowing it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compactbert.export.pack import export_packed, read_packed
from compactbert.methods.quantize import Quantize
from compactbert.nn.io import load_model
from compactbert.nn.quant import WeightQuantizer, register_quantizer
from compactbert.nn.quant.ops import MIN_STEP, StraightThrough, check_bits, fp16_values, rows_cols
from compactbert.recipe import Recipe
from compactbert.runtime import load
from compactbert.size import size_report
from compactbert.train.loop import TrainConfig, train
from toy import make_tiny_model, toy_rows


@register_quantizer
class Log2Quantizer(WeightQuantizer):
    """Logarithmic weights: 0 or +-a * 2^-e, e = 0 .. n-1 with n = 2^(b-1) - 1, a = max|w| per row.

    Codes: 0 -> 0; 1..n -> +a * 2^-(code-1); n+1..2n -> -a * 2^-(code-n-1).
    """

    kind = "log2"
    recipe_bits = (2, 4, 3)

    def __init__(self, bits: int = 3):
        super().__init__()
        self.bits = check_bits(bits, 2, 4, "log2 quantizer")

    @property
    def n(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits}

    def _codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = rows_cols(w.shape)
        w = w.detach().float().reshape(rows, cols)
        a = fp16_values(w.abs().amax(dim=1, keepdim=True)).clamp_min(MIN_STEP)  # (rows, 1)
        e = torch.round(-torch.log2((w.abs() / a).clamp_min(2.0**-30))).clamp(0, self.n - 1)
        small = w.abs() < a * 2.0 ** -(self.n - 1) / 2
        code = torch.where(w >= 0, e + 1, e + 1 + self.n).masked_fill(small, 0)
        return code, a

    def decode_values(self, stored, params):
        n = self.n
        neg = stored > n
        e = torch.where(neg, stored - n - 1, stored - 1).clamp_min(0)
        mag = params["scales"] * torch.pow(2.0, -e)
        return torch.where(stored == 0, torch.zeros_like(mag), torch.where(neg, -mag, mag))

    def forward(self, w):
        def fake(x):
            code, a = self._codes(x)
            return self.decode_values(code, {"scales": a.expand_as(code)}).reshape(x.shape).to(x.dtype)

        return StraightThrough.apply(w, fake)

    def quantize_ints(self, w):
        code, a = self._codes(w)
        return code.to(torch.uint8).reshape(w.shape), a.reshape(-1), None

    def dequantize(self, ints, scales, zero_points, shape):
        rows, cols = rows_cols(shape)
        return self.decode_values(ints.reshape(rows, cols).float(), {"scales": scales.reshape(rows, 1).expand(rows, cols)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    model_dir = make_tiny_model(root / "bert", "bert", hidden_size=32, num_heads=2, dropout=0.0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    _, rows = toy_rows("sst2", 32)
    feats = [{"input_ids": tok(text)["input_ids"], "labels": int(label)} for text, label in rows]
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = Quantize.model_validate({"type": "quantize", "weight": "log2", "bits": 3})
    cfg = TrainConfig(epochs=1, max_steps=4, lr=3e-3, batch_size=8, bf16=False, seed=0, progress=False)
    result = train(model, tok, "sst2", feats, None, cfg, root / "run", methods=[method])
    width = max(len(f["input_ids"]) for f in feats[:4])
    ids = torch.tensor([f["input_ids"] + [tok.pad_token_id] * (width - len(f["input_ids"])) for f in feats[:4]])
    mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in feats[:4]])
    return result, before, (ids, mask), root


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch[0], attention_mask=batch[1]).logits


def test_recipe_validator_knows_the_kind_by_its_registration():
    raw = {"stages": [{"epochs": 1, "methods": [{"type": "quantize", "weight": "log2", "bits": 2}]}]}
    with pytest.warns(UserWarning, match="quantizes weights to 2 bit"):  # the validator asks weight_bits()
        recipe = Recipe.from_dict(raw)
    m = recipe.stages[0].methods[0]
    assert m.weight_bits() == 2 and "log2 weights (2 bit" in m.describe()
    with pytest.raises(Exception, match="bits=5 is out of range for weight 'log2'; valid: 2..4"):
        Quantize.model_validate({"type": "quantize", "weight": "log2", "bits": 5})


def test_trained_with_the_real_loop_and_saved_and_loaded(trained):
    result, before, ids, root = trained
    model = result.model
    assert result.steps == 4
    up = model.bert.encoder.layer[0].intermediate.dense
    assert isinstance(up.weight_quantizer, Log2Quantizer)
    assert not torch.equal(up.weight, before["bert.encoder.layer.0.intermediate.dense.weight"])
    eff = up.effective_weight().detach()
    a = eff.abs().amax(dim=1, keepdim=True)
    ratio = (eff.abs() / a)[eff != 0]
    assert torch.equal(ratio, torch.pow(2.0, torch.round(torch.log2(ratio))))  # powers of two only
    assert set(torch.round(torch.log2(ratio)).unique().tolist()) <= {0.0, -1.0, -2.0}
    reloaded, _ = load_model(root / "run" / "model")  # the compression spec names kind "log2"
    assert isinstance(reloaded.bert.encoder.layer[0].intermediate.dense.weight_quantizer, Log2Quantizer)
    torch.testing.assert_close(logits(reloaded, ids), logits(model, ids), atol=0, rtol=0)


def test_size_export_read_and_runtime(trained, tmp_path):
    result, _, ids, _ = trained
    model = result.model
    manifest = export_packed(model, None, tmp_path, float_dtype="float32", remove_pruned=False)
    assert manifest["payload_bytes"] == size_report(model, uncompressed_bits=32)["compressed_bytes"]
    e = manifest["tensors"]["layer.0.ffn.up.weight"]
    assert e["quant"]["kind"] == "log2" and e["quant"]["row_bits"] == [[3, 64]]
    assert e["bytes"] == math.ceil(64 * 32 * 3 / 8) + 2 * 64  # 3-bit codes + an fp16 scale per row
    packed = read_packed(tmp_path)
    up = model.bert.encoder.layer[0].intermediate.dense
    assert torch.equal(packed.tensors["layer.0.ffn.up.weight"], up.effective_weight().detach())
    pm = load(tmp_path, dtype="fp32")
    torch.testing.assert_close(pm(*ids), logits(model, ids), atol=2e-5, rtol=0)
