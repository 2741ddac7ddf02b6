"""CompressedLinear / CompressedEmbedding: exact wrapping, stacked mask + quantizer, state dicts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactbert.nn.compressed import CompressedEmbedding, CompressedLinear
from compactbert.nn.quantizers import (
    BinaryQuantizer,
    DynamicActQuantizer,
    IntQuantizer,
    StaticActQuantizer,
    TernaryQuantizer,
)


def linear(seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(16, 8, bias=bias)


def x_in(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(seed))  # (batch, seq, in)


def test_from_linear_shares_parameters_and_output_is_bitwise_equal():
    lin = linear()
    c = CompressedLinear.from_linear(lin)
    assert c.weight is lin.weight and c.bias is lin.bias
    assert c.weight_mask is None and c.weight_quantizer is None and c.input_quantizer is None
    x = x_in()
    assert torch.equal(c(x), lin(x))
    nobias = linear(bias=False)
    assert torch.equal(CompressedLinear.from_linear(nobias)(x), nobias(x))


def test_mask_and_quantizer_stack():
    lin = linear()
    mask = torch.rand(8, 16, generator=torch.Generator().manual_seed(2)) > 0.5
    c = CompressedLinear.from_linear(lin, weight_quantizer=TernaryQuantizer(), weight_mask=mask)
    wq = TernaryQuantizer()(lin.weight.detach() * mask)
    assert torch.equal(c.effective_weight().detach(), wq * mask)
    x = x_in()
    assert torch.equal(c(x).detach(), F.linear(x, wq * mask, lin.bias.detach()))
    c(x).sum().backward()
    assert torch.equal(lin.weight.grad == 0, ~mask | (lin.weight.grad == 0))  # pruned entries: no gradient
    assert bool((lin.weight.grad[~mask] == 0).all()) and bool((lin.weight.grad[mask] != 0).any())


def test_binary_with_mask_keeps_pruned_entries_zero():
    lin = linear()
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[:, :4] = True
    c = CompressedLinear.from_linear(lin, weight_quantizer=BinaryQuantizer(), weight_mask=mask)
    w = c.effective_weight().detach()
    assert bool((w[:, 4:] == 0).all())  # binary has no zero level: re-masked after quantization
    alpha = (lin.weight.detach() * mask).abs().mean(dim=1, keepdim=True).half().float()
    assert torch.equal(w[:, :4].abs(), alpha.expand(8, 4))


def test_float_mask_equals_bool_mask():
    lin = linear()
    m = torch.rand(8, 16, generator=torch.Generator().manual_seed(4)) > 0.3
    a = CompressedLinear.from_linear(lin, weight_quantizer=IntQuantizer(4), weight_mask=m)
    b = CompressedLinear.from_linear(lin, weight_quantizer=IntQuantizer(4), weight_mask=m.float())
    assert torch.equal(a(x_in()), b(x_in()))
    assert a.sparsity == pytest.approx(1 - float(m.float().mean()))


def test_input_quantizer_is_applied():
    lin = linear()
    c = CompressedLinear.from_linear(lin, input_quantizer=DynamicActQuantizer())
    x = x_in()
    assert torch.equal(c(x), F.linear(DynamicActQuantizer()(x), lin.weight, lin.bias))
    assert not torch.equal(c(x), lin(x))


def test_to_linear_bakes_mask_and_quantization():
    lin = linear()
    mask = torch.rand(8, 16, generator=torch.Generator().manual_seed(5)) > 0.4
    c = CompressedLinear.from_linear(lin, weight_quantizer=IntQuantizer(3, symmetric=False), weight_mask=mask)
    plain = c.to_linear()
    assert type(plain) is nn.Linear and plain.weight is not lin.weight
    x = x_in()
    assert torch.equal(plain(x), c(x))
    assert int((plain.weight == 0).sum()) >= int((~mask).sum())


def test_mask_survives_state_dict_into_fresh_layer():
    lin = linear()
    mask = torch.rand(8, 16, generator=torch.Generator().manual_seed(6)) > 0.5
    c = CompressedLinear.from_linear(lin, weight_quantizer=TernaryQuantizer(), weight_mask=mask)
    sd = c.state_dict()
    assert set(sd) == {"weight", "bias", "weight_mask"}
    fresh = CompressedLinear(16, 8, weight_quantizer=TernaryQuantizer())
    assert fresh.weight_mask is None
    fresh.load_state_dict(sd)  # strict: the mask buffer is created from the checkpoint
    assert fresh.weight_mask.dtype == torch.bool and torch.equal(fresh.weight_mask, mask)
    assert torch.equal(fresh(x_in()), c(x_in()))
    assert "weight_mask" not in CompressedLinear(16, 8).state_dict()  # None: not saved


def test_mask_set_later_and_updated_in_place():
    c = CompressedLinear.from_linear(linear())
    c.weight_mask = torch.ones(8, 16)
    c.weight_mask[0].zero_()
    assert "weight_mask" in c.state_dict()
    assert bool((c.effective_weight()[0] == 0).all())
    c.weight_mask = None
    assert torch.equal(c.effective_weight(), c.weight)


def test_bad_mask_and_quantizer_rejected():
    c = CompressedLinear.from_linear(linear())
    with pytest.raises(ValueError, match=r"weight_mask shape \(16, 8\) != weight shape \(8, 16\)"):
        c.weight_mask = torch.ones(16, 8)
    with pytest.raises(ValueError, match="bool or float"):
        c.weight_mask = torch.ones(8, 16, dtype=torch.long)
    with pytest.raises(TypeError, match="Quantizer or None"):
        c.weight_quantizer = nn.ReLU()


def test_learned_step_initialised_on_attach():
    lin = linear()
    c = CompressedLinear.from_linear(lin)
    c.weight_quantizer = IntQuantizer(8, granularity="row", learned_step=True)
    step = c.weight_quantizer.step
    assert step.shape == (8, 1, 1)
    exact = lin.weight.detach().abs().amax(dim=1) / 127  # max-abs range, rounded up to a fp16 value
    got = step.detach().reshape(8)
    assert torch.equal(got, got.half().float()) and bool((got >= exact).all())
    below = torch.nextafter(got.half(), torch.tensor(-1.0, dtype=torch.half)).float()
    assert bool((below < exact).all())
    names = [n for n, _ in c.named_parameters()]
    assert names == ["weight", "bias", "weight_quantizer.step"]
    c(x_in()).pow(2).sum().backward()
    assert bool((step.grad != 0).any())


def test_static_input_quantizer_state_in_state_dict():
    c = CompressedLinear.from_linear(linear(), input_quantizer=StaticActQuantizer())
    c.input_quantizer.start_calibration()
    c(x_in())
    c.input_quantizer.freeze()
    sd = c.state_dict()
    assert {"input_quantizer.min_val", "input_quantizer.max_val", "input_quantizer.num_batches"} <= set(sd)
    fresh = CompressedLinear(16, 8, input_quantizer=StaticActQuantizer())
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x_in(3)), c(x_in(3)))


# ----------------------------------------------------------------------------- embeddings
def embedding() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(50, 16, padding_idx=0)


IDS = torch.tensor([[1, 2, 3, 0], [7, 7, 49, 5]])  # (batch, seq)


@pytest.mark.parametrize("q", [BinaryQuantizer, TernaryQuantizer, lambda: IntQuantizer(4, False, "group", 8),
                               lambda: IntQuantizer(8, granularity="tensor"),
                               lambda: IntQuantizer(4, learned_step=True)])
def test_embedding_train_fast_path_equals_full_table(q):
    emb = embedding()
    mask = torch.rand(50, 16, generator=torch.Generator().manual_seed(1)) > 0.2
    c = CompressedEmbedding.from_embedding(emb, weight_quantizer=q(), weight_mask=mask)
    assert c.weight is emb.weight and c.padding_idx == 0
    full = F.embedding(IDS, c.effective_weight().detach())
    c.eval()
    assert torch.equal(c(IDS), full)
    c.train()
    out = c(IDS)
    assert torch.equal(out.detach(), full)
    out.sum().backward()
    grad = emb.weight.grad
    assert bool((grad[[1, 2, 3, 5, 7, 49]][mask[[1, 2, 3, 5, 7, 49]]] != 0).all())
    assert bool((grad[10] == 0).all())  # rows not looked up get nothing


def test_embedding_to_embedding_and_state_dict():
    emb = embedding()
    c = CompressedEmbedding.from_embedding(emb, weight_quantizer=TernaryQuantizer(),
                                           weight_mask=torch.rand(50, 16) > 0.5).eval()
    plain = c.to_embedding()
    assert type(plain) is nn.Embedding and torch.equal(plain(IDS), c(IDS))
    fresh = CompressedEmbedding(50, 16, padding_idx=0, weight_quantizer=TernaryQuantizer()).eval()
    fresh.load_state_dict(c.state_dict())
    assert torch.equal(fresh(IDS), c(IDS))
    with pytest.raises(TypeError, match="token ids"):
        c.input_quantizer = DynamicActQuantizer()


@pytest.mark.parametrize("q", [BinaryQuantizer, TernaryQuantizer, lambda: IntQuantizer(5, False, "group", 4)])
def test_layer_quantize_ints_reproduce_effective_weight(q):
    lin = linear()
    mask = torch.rand(8, 16, generator=torch.Generator().manual_seed(9)) > 0.3
    c = CompressedLinear.from_linear(lin, weight_quantizer=q(), weight_mask=mask)
    codes, scales, zp = c.quantize_ints()
    w = c.weight_quantizer.dequantize(codes, scales, zp, c.weight.shape) * mask
    assert torch.equal(w, c.effective_weight().detach())
    with pytest.raises(ValueError, match="no weight_quantizer"):
        CompressedLinear.from_linear(lin).quantize_ints()


def test_deepcopy_keeps_slots_and_outputs():
    import copy

    c = CompressedLinear.from_linear(linear(), weight_quantizer=IntQuantizer(4, learned_step=True),
                                     input_quantizer=DynamicActQuantizer(), weight_mask=torch.rand(8, 16) > 0.5)
    d = copy.deepcopy(c)
    assert d.weight is not c.weight and torch.equal(d.weight_mask, c.weight_mask)
    assert torch.equal(d(x_in()), c(x_in()))
    d.weight_mask = None  # the copy's slots are its own
    assert c.weight_mask is not None
