"""Quantizers: exact levels and scales, STE/LSQ gradients, SQNR floors, exact integer round trips."""

from __future__ import annotations

import json
import math

import pytest
import torch

from compactbert.errors import UserError
from compactbert.nn.quantizers import (
    BinaryQuantizer,
    DynamicActQuantizer,
    IntQuantizer,
    StaticActQuantizer,
    TernaryQuantizer,
    calibration,
    quantizer_from_spec,
)


def fp16(x: float) -> float:
    return float(torch.tensor(x).half().float())


def sqnr_db(w: torch.Tensor, q: torch.Tensor) -> float:
    return 10 * math.log10(float((w**2).sum()) / float(((w - q) ** 2).sum()))


# ----------------------------------------------------------------------------- binary / ternary
def test_binary_levels_and_scales_hand_computed():
    w = torch.tensor([[1.0, -3.0, 0.0, 2.0], [0.5, -0.5, -1.0, -2.0]])
    q = BinaryQuantizer()
    # row 0: mean|w| = 6/4 = 1.5, sign(0) = +1 ; row 1: mean|w| = 4/4 = 1.0
    expected = torch.tensor([[1.5, -1.5, 1.5, 1.5], [1.0, -1.0, -1.0, -1.0]])
    assert torch.equal(q(w), expected)
    codes, scales, zp = q.quantize_ints(w)
    assert codes.dtype == torch.uint8
    assert codes.tolist() == [[1, 0, 1, 1], [1, 0, 0, 0]]
    assert scales.tolist() == [1.5, 1.0]
    assert zp is None


def test_ternary_levels_and_scales_hand_computed():
    w = torch.tensor([[1.0, -3.0, 0.0, 0.2], [0.5, -0.5, 0.1, -4.0], [0.0, 0.0, 0.0, 0.0]])
    q = TernaryQuantizer()
    # row 0: delta = 0.7 * 1.05 = 0.735 -> {1, -3} kept, a = (1 + 3) / 2 = 2
    # row 1: delta = 0.7 * 1.275 = 0.8925 -> only -4 kept, a = 4 ; row 2: all zero -> a = 0
    expected = torch.tensor([[2.0, -2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -4.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(q(w), expected)
    codes, scales, zp = q.quantize_ints(w)
    assert codes.tolist() == [[2, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert scales.tolist() == [2.0, 4.0, 0.0]
    assert zp is None


def test_ternary_threshold_is_strict():
    # mean|w| = 1 -> delta = 0.7 ; |w| = 0.7 exactly stays 0 (only |w| > delta is kept)
    w = torch.tensor([[0.7, 1.3, -1.0, -1.0]])
    delta = 0.7 * float(w.abs().mean())
    kept = w.abs() > delta
    a = fp16(float(w.abs()[kept].mean()))
    assert torch.equal(TernaryQuantizer()(w), torch.sign(w) * kept * a)


def test_scales_are_fp16_values():
    w = torch.tensor([[0.1, -0.2]])
    _, scales, _ = BinaryQuantizer().quantize_ints(w)
    assert scales.item() == fp16(0.15) and scales.item() != 0.15
    assert torch.equal(BinaryQuantizer()(w), torch.tensor([[1.0, -1.0]]) * fp16(0.15))


# ----------------------------------------------------------------------------- int-k
def test_int8_symmetric_hand_computed():
    w = torch.tensor([[0.5, -1.27, 0.01]])
    q = IntQuantizer(8, symmetric=True, granularity="row")
    codes, scales, zp = q.quantize_ints(w)
    s = fp16(1.27 / 127)  # fp16(0.01) = 0.0099983...
    assert scales.tolist() == [s]
    assert codes.dtype == torch.int8 and codes.tolist() == [[50, -127, 1]]
    assert zp is None
    assert torch.equal(q(w), torch.tensor([[50.0, -127.0, 1.0]]) * torch.tensor(s))
    assert q.code_range() == (-127, 127)


def test_int_asymmetric_zero_point_hand_computed():
    w = torch.tensor([[-1.0, 0.0, 3.0, 1.0]])
    q = IntQuantizer(4, symmetric=False, granularity="row")
    codes, scales, zp = q.quantize_ints(w)
    s = fp16(4.0 / 15)
    assert scales.tolist() == [s]
    assert zp.tolist() == [4.0]  # round(1 / s) = round(3.75)
    # round(w / s + 4): -3.75+4 -> 0, 4, 11.25+4 -> 15 (clamped), 3.75+4 -> 8
    assert codes.dtype == torch.uint8 and codes.tolist() == [[0, 4, 15, 8]]
    out = q(w)
    assert out[0, 1].item() == 0.0  # zero is exactly representable
    assert torch.equal(out, (torch.tensor([[0.0, 4.0, 15.0, 8.0]]) - 4.0) * s)
    assert q.code_range() == (0, 15)


def test_int_asymmetric_all_positive_keeps_zero_exact():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(8, 32, generator=g) + 0.5  # all in [0.5, 1.5): the range is widened to include 0
    w[:, 3] = 0.0
    q = IntQuantizer(3, symmetric=False, granularity="row")
    codes, scales, zp = q.quantize_ints(w)
    assert torch.equal(zp, torch.zeros(8))
    assert torch.equal(q(w)[:, 3], torch.zeros(8))
    assert int(codes.max()) <= 7
    step = scales[:, None]
    assert bool(((q(w) - w).abs() <= step / 2 + 1e-6).all())


@pytest.mark.parametrize("bits,floor_db", [(8, 35.0), (4, 15.0)])
def test_sqnr_floor_per_row_gaussian(bits, floor_db):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, generator=g) * 0.05
    db = sqnr_db(w, IntQuantizer(bits, granularity="row")(w))
    assert db > floor_db, db


def test_sqnr_groups_beat_rows_beat_tensor_int4():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g) * torch.linspace(0.01, 1.0, 64)[:, None]  # rows of different scale
    t = sqnr_db(w, IntQuantizer(4, granularity="tensor")(w))
    r = sqnr_db(w, IntQuantizer(4, granularity="row")(w))
    gr = sqnr_db(w, IntQuantizer(4, granularity="group", group_size=32)(w))
    assert gr > r > t
    assert r > 15.0


def test_group_granularity_scale_layout():
    w = torch.randn(6, 64)
    q = IntQuantizer(4, granularity="group", group_size=16)
    codes, scales, zp = q.quantize_ints(w)
    assert scales.shape == (6, 4)
    expected = torch.tensor([[fp16(float(c.abs().max()) / 7) for c in row.split(16)] for row in w])
    assert torch.equal(scales, expected)
    assert IntQuantizer(8, granularity="tensor").quantize_ints(w)[1].shape == (1,)
    assert IntQuantizer(8, granularity="row").quantize_ints(w)[1].shape == (6,)


# ----------------------------------------------------------------------------- exact round trips
ALL_WEIGHT_QUANTIZERS = [
    BinaryQuantizer(),
    TernaryQuantizer(),
    *[IntQuantizer(b, s, gran, 16 if gran == "group" else None)
      for b in (2, 3, 4, 8) for s in (True, False) for gran in ("tensor", "row", "group")],
    IntQuantizer(4, True, "row", learned_step=True),
    IntQuantizer(6, False, "group", 32, learned_step=True),
]


@pytest.mark.parametrize("q", ALL_WEIGHT_QUANTIZERS, ids=lambda q: json.dumps(q.spec()))
def test_quantize_ints_dequantize_equals_forward_exactly(q):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 64, generator=g) * 0.03
    w[0, :5] = 0.0
    q.initialize(w)
    out = q(w)
    codes, scales, zp = q.quantize_ints(w)
    lo, hi = q.code_range()
    assert codes.shape == w.shape and scales.dtype == torch.float32
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    assert torch.equal(scales, scales.half().float())  # fp16 storage is lossless
    if zp is not None:
        assert torch.equal(zp, zp.round()) and torch.equal(zp.half().float(), zp)
    assert torch.equal(q.dequantize(codes, scales, zp, w.shape), out)
    # number of distinct levels never exceeds 2^bits per scale group
    assert len(torch.unique(out[1])) <= 2**q.bits * (64 // 16)


def test_storage_bits():
    shape = (16, 64)
    assert BinaryQuantizer().storage_bits(shape) == 16 * 64 * 1 + 16 * 16
    assert TernaryQuantizer().storage_bits(shape) == 16 * 64 * 2 + 16 * 16
    assert IntQuantizer(8, granularity="tensor").storage_bits(shape) == 16 * 64 * 8 + 16
    assert IntQuantizer(4, granularity="group", group_size=32).storage_bits(shape) == 16 * 64 * 4 + 32 * 16
    assert IntQuantizer(4, False, "row").storage_bits(shape) == 16 * 64 * 4 + 16 * 2 * 16
    assert DynamicActQuantizer().storage_bits((4, 7, 64)) == 0
    assert StaticActQuantizer(symmetric=False).storage_bits((4, 7, 64)) == 32


@pytest.mark.parametrize(
    "q",
    [BinaryQuantizer(), TernaryQuantizer(), IntQuantizer(5, False, "group", 8, True), DynamicActQuantizer(),
     StaticActQuantizer(8, False, "percentile", 99.9)],
    ids=lambda q: q.kind,
)
def test_spec_round_trip(q):
    spec = json.loads(json.dumps(q.spec()))
    again = quantizer_from_spec(spec)
    assert type(again) is type(q) and again.spec() == q.spec()


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("q", [BinaryQuantizer(), TernaryQuantizer(), IntQuantizer(4), IntQuantizer(3, False, "tensor"),
                               DynamicActQuantizer()], ids=lambda q: json.dumps(q.spec()))
def test_ste_gradient_is_identity(q):
    w = torch.randn(8, 16, requires_grad=True)
    q(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_lsq_gradients_clip_weights_and_match_formula():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(4, 16, generator=g)).requires_grad_()
    q = IntQuantizer(4, granularity="tensor", learned_step=True)
    q.initialize(w)
    exact = float(w.detach().abs().max()) / 7  # initialised from the max-abs range, rounded up to fp16
    init = q.step.detach().item()
    assert init == fp16(init) and init >= exact and init - exact < exact * 2**-10
    with torch.no_grad():
        q.step.mul_(0.5)  # now the largest weights are clipped
    q(w).sum().backward()
    s = fp16(q.step.detach().item())
    v = w.detach() / s
    inside = (v >= -7) & (v <= 7)
    assert 0 < int((~inside).sum()) < w.numel()
    assert torch.equal(w.grad, inside.float())
    # LSQ: d/ds = sum(round(v) - v inside, clamp bound outside) * 1/sqrt(N * Qp)
    per = torch.where(inside, torch.round(v) - v, v.clamp(-7, 7))
    expected = float(per.sum()) / math.sqrt(w.numel() * 7)
    assert q.step.grad is not None
    assert q.step.grad.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_learned_step_gets_gradient_per_row_and_freeze():
    w = torch.randn(6, 32)
    q = IntQuantizer(8, granularity="row", learned_step=True)
    q.initialize(w)
    assert q.step.shape == (6, 1, 1)
    loss = ((q(w) - 2 * w) ** 2).sum()
    loss.backward()
    assert bool((q.step.grad.abs() > 0).all())
    q.freeze()
    assert not q.step.requires_grad


def test_learned_step_loads_into_fresh_quantizer():
    w = torch.randn(6, 32)
    q = IntQuantizer(4, symmetric=False, granularity="row", learned_step=True)
    q.initialize(w)
    with torch.no_grad():
        q.step.mul_(1.3)
    fresh = IntQuantizer(4, symmetric=False, granularity="row", learned_step=True)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), q(w))


# ----------------------------------------------------------------------------- activations
def test_dynamic_act_error_bound_per_token():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 64, generator=g)
    x[0, 0, 0] = 40.0  # an outlier only widens its own token's step
    q = DynamicActQuantizer()
    out = q(x)
    step = x.abs().amax(dim=-1, keepdim=True) / 127  # (3, 5, 1)
    assert bool(((out - x).abs() <= step / 2 * (1 + 1e-5)).all())
    assert float((out[0, 1] - x[0, 1]).abs().max()) < 0.05
    codes, scales, _ = q.quantize_ints(x)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == 127
    assert scales.shape == (3, 5)
    assert torch.equal(q.dequantize(codes, scales, None, x.shape), out)


def test_dynamic_act_zero_token_stays_zero():
    x = torch.zeros(2, 8)
    x[1] = torch.arange(8.0)
    out = DynamicActQuantizer()(x)
    assert torch.equal(out[0], torch.zeros(8))


def test_static_act_minmax_calibration_and_clipping():
    q = StaticActQuantizer(8, symmetric=True)
    with pytest.raises(RuntimeError, match="before calibration"):
        q(torch.ones(3))
    model = torch.nn.Sequential(q)
    with calibration(model):
        assert torch.equal(model(torch.tensor([-1.0, 0.5])), torch.tensor([-1.0, 0.5]))  # passes through
        model(torch.tensor([2.54, 0.0]))
    assert (q.min_val.item(), q.max_val.item()) == (-1.0, pytest.approx(2.54))
    s = fp16(2.54 / 127)
    x = torch.tensor([0.5, 3.0, -1.0], requires_grad=True)
    out = q(x)
    assert torch.equal(out.detach(), torch.round((x.detach() / s).clamp(-127, 127)) * s)
    assert out[1].item() == pytest.approx(127 * s)  # clipped at the calibrated max
    out.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 1.0]  # no gradient where clipped
    codes, scales, zp = q.quantize_ints(x)
    assert torch.equal(q.dequantize(codes, scales, zp, x.shape), out.detach())
    fresh = StaticActQuantizer(8, symmetric=True)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), out)


def test_static_act_asymmetric_and_percentile():
    q = StaticActQuantizer(8, symmetric=False, observer="percentile", percentile=99.0)
    q.start_calibration()
    x = torch.arange(1000.0)  # 990th smallest = 989, 990th largest = 10 ; averaged over the 2 batches
    q(x)
    q(x + 10)
    q.freeze()
    assert q.min_val.item() == pytest.approx((10.0 + 20.0) / 2)
    assert q.max_val.item() == pytest.approx((989.0 + 999.0) / 2)
    codes, scales, zp = q.quantize_ints(torch.tensor([0.0, 500.0]))
    assert codes.dtype == torch.uint8 and zp.tolist() == [0.0]  # range widened to include 0
    assert scales.item() == fp16(994.0 / 255)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: IntQuantizer(bits=9), "bits=9 is out of range; valid: integers 2..8"),
        (lambda: IntQuantizer(bits=1), "bits=1"),
        (lambda: IntQuantizer(bits=True), "bits=True"),
        (lambda: IntQuantizer(granularity="rows"), "did you mean 'row'"),
        (lambda: IntQuantizer(granularity="group"), "group_size=None"),
        (lambda: IntQuantizer(granularity="group", group_size=0), "group_size=0"),
        (lambda: IntQuantizer(granularity="row", group_size=64), "only used with granularity 'group'"),
        (lambda: DynamicActQuantizer(bits=16), "bits=16"),
        (lambda: StaticActQuantizer(observer="max"), "valid: minmax, percentile"),
        (lambda: StaticActQuantizer(percentile=20), "percentile=20"),
        (lambda: quantizer_from_spec({"kind": "ternery"}), "did you mean 'ternary'"),
        (lambda: quantizer_from_spec({"kind": "int", "bitz": 4}), "unknown key(s) bitz"),
        (lambda: quantizer_from_spec({"bits": 4}), "needs a 'kind'"),
    ],
)
def test_user_errors(make, needle):
    with pytest.raises(UserError) as e:
        make()
    assert needle in str(e.value)


def test_group_size_must_divide_rows():
    q = IntQuantizer(4, granularity="group", group_size=48)
    with pytest.raises(UserError, match=r"layer.0: group_size=48 does not divide the row length 64"):
        q.check_shape((32, 64), where="layer.0")
    q.check_shape((32, 96))  # 96 = 2 x 48 is fine


# ----------------------------------------------------------------------------- compiled kernels
@pytest.mark.parametrize("cls", [TernaryQuantizer, BinaryQuantizer])
def test_compiled_weight_quantizers_are_bitwise_the_eager_ones_and_pass_gradients(cls):
    eager, fast = cls(), cls()
    fast.compiled = True
    g = torch.Generator().manual_seed(3)
    for shape, scale in [((48, 80), 1.0), ((48, 80), 1e-3), ((80, 48), 30.0)]:
        for _ in range(3):
            w = (torch.randn(shape, generator=g) * scale).requires_grad_()
            w.data[0, :5] = 0.0  # exact zeros: sign(0) = +1 (binary), level 0 (ternary)
            got = fast(w)
            assert torch.equal(got, eager(w))
            assert torch.equal(fast.dequantize(*eager.quantize_ints(w), shape), got)  # the packer agrees
            got.backward(torch.ones_like(got))
            assert torch.equal(w.grad, torch.ones_like(w))  # straight through


def test_compiled_dynamic_activation_quantizer_is_bitwise_the_eager_one_for_any_token_count():
    eager, fast = DynamicActQuantizer(8), DynamicActQuantizer(8)
    fast.compiled = True
    g = torch.Generator().manual_seed(4)
    for tokens in (5, 9, 13):
        for dtype in (torch.float32, torch.bfloat16):
            x = (torch.randn(3, tokens, 40, generator=g) * 4).to(dtype)
            got = fast(x)
            assert got.dtype == dtype and torch.equal(got, eager(x))


def test_row_sums_do_not_depend_on_the_order_of_additions():
    # float64 accumulation: the compiled kernels' different summation order cannot change a scale
    from compactbert.nn.quant.ops import row_mean

    g = torch.Generator().manual_seed(5)
    w = torch.randn(16, 1536, generator=g) * torch.logspace(-6, 2, 1536)
    perm = torch.randperm(1536, generator=g)
    assert torch.equal(row_mean(w.abs()), row_mean(w.abs()[:, perm]))
