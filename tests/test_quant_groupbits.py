"""The groupbits kind: per-row asymmetric quantization at one bit width per group of rows."""

from __future__ import annotations

import pytest
import torch

from compactbert.errors import UserError
from compactbert.nn.compressed import CompressedLinear
from compactbert.nn.quant import quantizer_from_spec
from compactbert.nn.quant.groupbits import GroupBitsQuantizer, asym_fake_quant


def test_asym_fake_quant_hand_computed():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, -1.0, 0.5, 2.0]])
    # row 0: min 0, scale 3/3 = 1: exact; row 1: min -1, scale 3/3 = 1; 0.5 is code 1.5 -> 2 (to even) -> 1.0
    got = asym_fake_quant(w, 2)
    assert torch.equal(got, torch.tensor([[0.0, 1.0, 2.0, 3.0], [-1.0, -1.0, 1.0, 2.0]]))
    one = asym_fake_quant(w, 1)  # two levels per row: min and max (0.5 is code 0.5 -> 0, to even)
    assert torch.equal(one, torch.tensor([[0.0, 0.0, 3.0, 3.0], [-1.0, -1.0, -1.0, 2.0]]))
    assert torch.equal(asym_fake_quant(w, 0), torch.zeros_like(w))


def test_asym_fake_quant_scales_and_mins_are_fp16_values_and_error_is_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 64, generator=g) * 0.37 + 0.011
    for bits in (2, 4, 8):
        q = asym_fake_quant(w, bits)
        step = (w.amax(1) - w.amin(1)) / (2**bits - 1)
        assert bool(((q - w).abs() <= step[:, None] * 0.5 + 1e-3 * step[:, None] + 1e-6).all())
        assert q.unique().numel() <= 8 * 2**bits
    quant = GroupBitsQuantizer(8, [4])
    _, scales, mins = quant.quantize_ints(w)
    assert torch.equal(scales, scales.half().float()) and torch.equal(mins, mins.half().float())


def test_gradient_is_straight_through():
    w = torch.randn(6, 5, requires_grad=True)
    (asym_fake_quant(w, 3) * torch.arange(5.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(5.0).expand(6, 5))
    w.grad = None
    q = GroupBitsQuantizer(2, [4, 0, 2])
    (q(w) * 2).sum().backward()
    assert torch.equal(w.grad, torch.full((6, 5), 2.0))


def test_groups_use_their_own_bit_width_and_zero_groups_are_zero():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(12, 16, generator=g)
    q = GroupBitsQuantizer(4, [4, 2, 0])
    out = q(w)
    assert torch.equal(out[:4], asym_fake_quant(w[:4], 4))
    assert torch.equal(out[4:8], asym_fake_quant(w[4:8], 2))
    assert torch.equal(out[8:], torch.zeros(4, 16))
    assert out[4].unique().numel() <= 4
    q.set_group_bits([0, 8, 1])  # takes effect at once
    out = q(w)
    assert torch.equal(out[:4], torch.zeros(4, 16)) and torch.equal(out[4:8], asym_fake_quant(w[4:8], 8))
    assert q.bits == 8 and q.spec() == {"kind": "groupbits", "row_group_size": 4, "group_bits": [0, 8, 1]}


def test_uniform_bits_is_per_row_asymmetric_int_k():
    w = torch.randn(6, 10)
    assert torch.equal(GroupBitsQuantizer(3, [3, 3])(w), asym_fake_quant(w, 3))
    assert torch.equal(GroupBitsQuantizer(6, [3])(w), asym_fake_quant(w, 3))


def test_codes_decode_bitwise_and_storage_counts_only_nonzero_groups():
    w = torch.randn(12, 10)
    q = GroupBitsQuantizer(4, [4, 2, 0])
    codes = q.encode(w)
    assert codes.row_bits.tolist() == [4] * 4 + [2] * 4 + [0] * 4
    assert int(codes.stored[:4].max()) <= 15 and int(codes.stored[4:8].max()) <= 3
    assert torch.equal(q.decode(codes), q(w))
    ints, scales, mins = q.quantize_ints(w)
    assert torch.equal(q.dequantize(ints, scales, mins, w.shape), q(w))
    # codes 4 * 10 * 4 + 4 * 10 * 2 bits, fp16 scale + fp16 minimum for the 8 stored rows
    assert q.storage_bits(w.shape) == 160 + 80 + 8 * 32


def test_group_bits_is_saved_and_loaded_with_the_state_dict():
    lin = CompressedLinear(10, 12)
    lin.weight_quantizer = GroupBitsQuantizer(4, [4, 2, 0])
    lin.weight_quantizer.set_group_bits([1, 2, 3])
    state = lin.state_dict()
    assert state["weight_quantizer.group_bits"].tolist() == [1, 2, 3]
    fresh = CompressedLinear(10, 12)
    fresh.weight_quantizer = quantizer_from_spec({"kind": "groupbits", "row_group_size": 4, "group_bits": [8, 8, 8]})
    fresh.load_state_dict(state)
    assert fresh.weight_quantizer.group_bits.tolist() == [1, 2, 3]
    assert torch.equal(fresh.effective_weight(), lin.effective_weight())


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="row_group_size=0"):
        GroupBitsQuantizer(0, [2])
    with pytest.raises(UserError, match=r"group_bits\[1\] bits=9"):
        GroupBitsQuantizer(2, [2, 9])
    with pytest.raises(UserError, match="group_bits"):
        GroupBitsQuantizer(2, [])
    q = GroupBitsQuantizer(5, [2, 2])
    with pytest.raises(UserError, match="does not divide the 12 rows"):
        q(torch.randn(12, 3))
    with pytest.raises(UserError, match="2 entries but .* has 3 groups"):
        q(torch.randn(15, 3))
    with pytest.raises(UserError, match="3 values given"):
        q.set_group_bits([1, 2, 3])
    with pytest.raises(UserError, match="bits=9"):
        asym_fake_quant(torch.randn(2, 2), 9)


# ----------------------------------------------------------------------------- the quantize method
def quantize_method(**kw):
    from compactbert.methods import method_types

    return method_types()["quantize"].model_validate({"type": "quantize", **kw})


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg)


def test_quantize_method_installs_uniform_groupbits():
    from compactbert.methods.base import TrainState

    m = quantize_method(weight="groupbits", bits=2, row_group_size=8)
    assert m.weight_bits() == 2 and "groupbits weights (2 bit per row group of 8 rows" in m.describe()
    model = tiny_bert()
    m.attach(TrainState(model=model))
    up = model.bert.encoder.layer[0].intermediate.dense
    q = up.weight_quantizer
    assert isinstance(q, GroupBitsQuantizer) and q.group_bits.tolist() == [2] * 8  # 64 rows
    assert torch.equal(up.effective_weight(), asym_fake_quant(up.weight.detach(), 2))
    assert model.bert.encoder.layer[0].attention.self.query.weight_quantizer.group_bits.tolist() == [2] * 4


def test_quantize_method_groupbits_keys_are_checked():
    import pydantic

    from compactbert.methods.base import TrainState
    from compactbert.nn.surgery import compressed_modules

    with pytest.raises(pydantic.ValidationError, match="needs row_group_size"):
        quantize_method(weight="groupbits", bits=2)
    with pytest.raises(pydantic.ValidationError, match="row_group_size: only for weight 'groupbits', not 'int'"):
        quantize_method(weight="int", row_group_size=8)
    with pytest.raises(pydantic.ValidationError, match="granularity: only for weight 'int', not 'groupbits'"):
        quantize_method(weight="groupbits", row_group_size=8, granularity="tensor")
    with pytest.raises(pydantic.ValidationError, match="bits=9 is out of range for weight 'groupbits'; valid: 1..8"):
        quantize_method(weight="groupbits", bits=9, row_group_size=8)
    model = tiny_bert()
    with pytest.raises(UserError, match="row_group_size=12 does not divide the 32 rows"):
        quantize_method(weight="groupbits", row_group_size=12).attach(TrainState(model=model))
    assert not compressed_modules(model)


def test_recipe_round_trip_keeps_weight_null():
    from compactbert.recipe import Recipe

    stage = {"epochs": 1, "methods": [{"type": "quantize", "weight": None, "activations": "dynamic8"}]}
    recipe = Recipe.from_dict({"stages": [stage]})
    again = Recipe.from_yaml(recipe.to_yaml())
    assert again.stages[0].methods[0].weight is None and again == recipe
    assert "weight: null" in recipe.to_yaml() and "bits:" not in recipe.to_yaml()
