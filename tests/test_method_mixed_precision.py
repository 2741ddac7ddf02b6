"""Per-group mixed precision: budgets, the exact knapsack, Hutchinson traces, the AQ-BERT search
(mixing, temperature, size penalty, architecture steps, budget fit) and the Hessian allocation, on
tiny models; and both recipes through the real compress path."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pydantic
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from compactbert.data.tasks import get_task
from compactbert.errors import UserError
from compactbert.methods import method_types
from compactbert.methods.base import TrainState
from compactbert.methods.mixed_precision import chosen_widths, widths_from_spec
from compactbert.methods.mixed_precision.budget import (
    Budget,
    GroupTable,
    band_penalty,
    expected_bytes,
    group_costs,
)
from compactbert.methods.mixed_precision.hessian import (
    HessianAllocation,
    group_sensitivity,
    hutchinson_group_traces,
)
from compactbert.methods.mixed_precision.knapsack import solve_mckp
from compactbert.methods.mixed_precision.search import MixedPrecisionSearch, SearchQuantizer, temperature
from compactbert.nn.quant import GroupBitsQuantizer, asym_fake_quant
from compactbert.recipe import Recipe
from compactbert.size import size_report

SST2 = get_task("sst2")
IDS = torch.tensor([[5, 17, 42, 9, 3, 77], [8, 8, 60, 2, 4, 4], [9, 31, 7, 7, 50, 1], [3, 3, 3, 90, 12, 6]])
LABELS = torch.tensor([0, 1, 1, 0])


def tiny(seed: int = 0) -> torch.nn.Module:
    """2 layers, hidden 32, FFN 64: Q/K/V/O 32x32, FFN1 64x32, FFN2 32x64 (6 targeted matrices each)."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def state_for(model, steps: int = 100) -> TrainState:
    return TrainState(model=model, total_steps=steps, steps_per_epoch=10, task=SST2)


def batch() -> dict[str, torch.Tensor]:
    return {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": LABELS}


def targeted_bytes(model, widths) -> int:
    """Bytes `compactbert size` gives the targeted weights."""
    report = size_report(model)
    return sum(t["bytes"] for t in report["tensors"] if t["name"].removesuffix(".weight") in widths)


# ---------------------------------------------------------------------------------- budgets
def test_group_costs_and_expected_size_by_hand():
    table = GroupTable.build({"a": (12, 8), "b": (6, 16)}, row_group_size=6, widths=(0, 2, 4))
    # a: 2 groups of 6x8 = 48 weights; b: 1 group of 6x16 = 96 weights; scales: 6 rows x 4 bytes
    assert table.costs.tolist() == [[0, 12 + 24, 24 + 24], [0, 12 + 24, 24 + 24], [0, 24 + 24, 48 + 24]]
    assert table.n_weights == 192 and table.offsets == [0, 2, 3]
    assert table.reachable() == (0.0, 48 + 48 + 72)
    probs = [torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]), torch.tensor([[0.2, 0.3, 0.5]])]
    costs = [torch.as_tensor(table.costs[:2]), torch.as_tensor(table.costs[2:])]
    assert float(expected_bytes(probs, costs)) == pytest.approx(0.5 * 36 + 48 + 0.3 * 48 + 0.5 * 72)
    assert group_costs(12, 8, 6, (8,)).tolist() == [[48 + 24], [48 + 24]]


def test_budget_units_spellings_and_round_trip():
    for raw in ({"avg_bits": 3}, "3 avg_bits", {"value": 3, "unit": "avg_bits"}):
        b = Budget.model_validate(raw)
        assert (b.value, b.unit) == (3.0, "avg_bits")
        assert b.to_bytes(1000) == 375.0
    assert Budget.model_validate({"megabytes": 2.5}).to_bytes(10) == 2_500_000
    assert Budget.model_validate("1200 bytes").to_bytes(10) == 1200
    assert Budget.model_validate(Budget.model_validate({"bytes": 7}).model_dump()).value == 7
    with pytest.raises(pydantic.ValidationError, match="budget unit 'bits' is not known.*valid units: bytes, megabytes, avg_bits"):
        Budget.model_validate({"bits": 3})
    with pytest.raises(pydantic.ValidationError, match="must be a positive number"):
        Budget.model_validate({"bytes": 0})
    with pytest.raises(pydantic.ValidationError, match="is not '<number> <unit>'"):
        Budget.model_validate("3")


def test_unreachable_budget_names_the_reachable_range():
    table = GroupTable.build({"a": (12, 8)}, row_group_size=6, widths=(2, 4))
    assert table.reachable() == (72.0, 96.0)
    assert table.budget_bytes(Budget(value=80, unit="bytes")) == 80
    with pytest.raises(UserError, match=r"smaller than every group at its smallest width.*72 to 96 bytes"):
        table.budget_bytes(Budget(value=70, unit="bytes"))
    with pytest.raises(UserError, match=r"budget 9 avg_bits .* larger than every group at its largest width.*"
                                        r"6 to 8 avg_bits"):
        table.budget_bytes(Budget(value=9, unit="avg_bits"))


def test_band_penalty_zero_inside_log_outside():
    t = 1000.0
    for e in (990.0, 1000.0, 1010.0):
        assert float(band_penalty(torch.tensor(e), t, 0.01)) == 0.0
    above = torch.tensor(1200.0, requires_grad=True)
    loss = band_penalty(above, t, 0.01)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(math.log(1200)) and float(above.grad) == pytest.approx(1 / 1200)
    below = torch.tensor(800.0, requires_grad=True)
    loss = band_penalty(below, t, 0.01)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-math.log(800)) and float(below.grad) == pytest.approx(-1 / 800)


def test_temperature_schedule():
    assert temperature(0.0, 5.0, 1.0, 0.5) == temperature(0.49, 5.0, 1.0, 0.5) == 5.0
    assert temperature(0.5, 5.0, 1.0, 0.5) == 5.0
    assert temperature(1.5, 5.0, 1.0, 0.5) == pytest.approx(5.0 * math.exp(-1.0))
    assert temperature(3.0, 2.0, 0.5, 1.0) == pytest.approx(2.0 * math.exp(-1.0))


# ---------------------------------------------------------------------------------- knapsack
def brute_force(values, costs, cap, lower):
    g, k = values.shape
    best = None
    for combo in itertools.product(range(k), repeat=g):
        c = costs[np.arange(g), combo].sum()
        if c <= cap and (lower is None or c >= lower):
            v = values[np.arange(g), combo].sum()
            best = v if best is None else min(best, v)
    return best


@pytest.mark.parametrize("shared", [False, True])
def test_knapsack_is_optimal_against_brute_force(shared):
    rng = np.random.default_rng(3)
    checked = 0
    for trial in range(25):
        g, k = 6, 3
        values = rng.random((g, k)) * rng.choice([1e-9, 1.0, 1e3])
        if shared:  # groups of two matrices: every group of a matrix costs the same (the real case)
            costs = np.array([[0, 3, 5]] * 3 + [[0, 4, 7]] * 3, dtype=float)
        else:
            costs = rng.integers(0, 9, (g, k)).astype(float)
        cap = (costs.min(1).sum() + costs.max(1).sum()) / 2
        lower = 0.8 * cap if trial % 2 else None
        best = brute_force(values, costs, cap, lower)
        if best is None:
            continue
        choice = solve_mckp(values, costs, cap, lower)
        assert costs[np.arange(g), choice].sum() <= cap + 1e-9
        assert values[np.arange(g), choice].sum() == pytest.approx(best, rel=1e-12, abs=0)
        checked += 1
    assert checked >= 15


def test_knapsack_without_a_fit_is_a_user_error():
    with pytest.raises(UserError, match="no choice of widths fits"):
        solve_mckp(np.zeros((2, 2)), np.array([[2.0, 4.0], [2.0, 4.0]]), capacity=3)


# ---------------------------------------------------------------------------------- Hutchinson
def test_hutchinson_exact_for_a_diagonal_hessian_and_unbiased_for_a_full_one():
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    d = torch.rand(4, 3) + 0.1
    loss = 0.5 * (d * w * w).sum()  # H = diag(d): one Rademacher vector gives the trace exactly
    (tr,) = hutchinson_group_traces(loss, [w], row_group_size=2, samples=1)
    assert torch.allclose(tr, torch.stack([d[:2].sum(), d[2:].sum()]).double(), rtol=1e-6)

    a = torch.randn(12, 12)
    a = a @ a.T  # symmetric, off-diagonal entries
    loss = 0.5 * w.reshape(-1) @ a @ w.reshape(-1)
    gen = torch.Generator().manual_seed(1)
    (tr,) = hutchinson_group_traces(loss, [w], row_group_size=2, samples=1000, generator=gen)
    exact = torch.stack([a.diagonal()[:6].sum(), a.diagonal()[6:].sum()]).double()
    assert torch.allclose(tr, exact, rtol=0.05)


def test_hutchinson_matches_the_exact_hessian_trace_of_a_tiny_net():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 4, (16,))
    w1, w2 = torch.randn(6, 5, requires_grad=True), torch.randn(4, 6, requires_grad=True)

    def loss_fn(a, b):
        return torch.nn.functional.cross_entropy(torch.tanh(x @ a.T) @ b.T, y)

    h = torch.autograd.functional.hessian(loss_fn, (w1, w2))
    full = torch.cat([torch.cat([h[r][c].reshape(w.numel(), v.numel()) for c, v in enumerate((w1, w2))], 1)
                      for r, w in enumerate((w1, w2))]).double()  # (54, 54)
    group_of = torch.cat([torch.arange(30) // 10, 3 + torch.arange(24) // 12])  # groups of 2 rows
    exact = torch.zeros(5, dtype=torch.float64).index_add_(0, group_of, full.diagonal())
    # the estimator of group g is tr_g + sum_{i in g, j != i} v_i v_j H_ij; distinct pairs are uncorrelated:
    # Var = sum_{i < j, both in g} (2 H_ij)^2 + sum_{i in g, j not in g} H_ij^2
    same = group_of[:, None] == group_of[None, :]
    off = full.pow(2) * (~torch.eye(54, dtype=torch.bool))
    var = (off * same * 2).sum(1) + (off * ~same).sum(1)  # per row i: (2 H_ij)^2 / 2 per ordered pair in g
    var = torch.zeros(5, dtype=torch.float64).index_add_(0, group_of, var)
    n = 800
    gen = torch.Generator().manual_seed(0)
    est = torch.cat(hutchinson_group_traces(loss_fn(w1, w2), [w1, w2], row_group_size=2, samples=n, generator=gen))
    assert bool(((est - exact).abs() <= 4 * (var / n).sqrt()).all())
    assert bool(((var / n).sqrt() < 0.15 * exact.abs()).all())  # tight enough to catch a wrong factor or sign


def test_group_sensitivity_by_hand():
    w = torch.tensor([[0.0, 1.0, 3.0], [1.0, 1.0, 2.0], [4.0, -4.0, 0.5], [1.0, 2.0, 3.0]])
    omega = group_sensitivity(w, torch.tensor([2.0, -1.0]), row_group_size=2, widths=(0, 1, 8))
    err0 = float((w[:2] ** 2).sum())
    err1 = float(((w[:2] - asym_fake_quant(w, 1)[:2]) ** 2).sum())
    assert omega[0].tolist() == pytest.approx([2 / 6 * err0, 2 / 6 * err1, 2 / 6 * float(((w[:2] - asym_fake_quant(w, 8)[:2]) ** 2).sum())])
    assert omega[1].tolist() == [0.0, 0.0, 0.0]  # a negative trace counts as 0
    assert omega[0, 0] > omega[0, 1] > omega[0, 2]


# ---------------------------------------------------------------------------------- search
def search(**kw) -> MixedPrecisionSearch:
    base = dict(type="mixed_precision_search", budget={"avg_bits": 2}, row_group_size=8, compile=False)
    return method_types()["mixed_precision_search"].model_validate({**base, **kw})


def test_search_attach_installs_searching_quantizers_with_a_group_table():
    model = tiny()
    m = search()
    m.attach(state_for(model))
    qs = m.quantizers()
    assert len(qs) == 12 and all(isinstance(q, SearchQuantizer) for q in qs)
    assert [tuple(q.logits.shape) for q in qs[:6]] == [(4, 3)] * 4 + [(8, 3), (4, 3)]
    # E[C] at uniform probabilities: every group a third of (0 + 2 + 4 bits) + 2/3 of the scales
    table = m._table
    assert m.expected_size() == pytest.approx(table.costs.mean(axis=1).sum())
    assert table.n_weights == 2 * (4 * 32 * 32 + 2 * 64 * 32)


def test_search_mixing_is_the_probability_weighted_sum_of_the_candidates():
    torch.manual_seed(0)
    w = torch.randn(16, 8, requires_grad=True)
    q = SearchQuantizer(8, [0, 2, 4])
    q.initialize(w)
    q.logits.copy_(torch.randn(2, 3))
    q.tau = 0.7
    torch.manual_seed(5)
    out = q(w)
    torch.manual_seed(5)
    p = torch.nn.functional.gumbel_softmax(q.logits, tau=0.7, dim=-1).repeat_interleave(8, 0)
    ref = p[:, 1:2] * asym_fake_quant(w, 2) + p[:, 2:3] * asym_fake_quant(w, 4)
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()  # straight through, scaled by the nonzero candidates' share per row
    assert torch.allclose(w.grad, (p[:, 1] + p[:, 2])[:, None].expand(16, 8), atol=1e-6)
    q.eval()  # eval: the arg-max architecture, exactly the GroupBitsQuantizer finalize installs
    fixed = GroupBitsQuantizer(8, q.chosen_bits())
    assert torch.equal(q(w.detach()), fixed(w.detach()))


def test_search_logit_gradient_is_exact():
    torch.manual_seed(0)
    w = torch.randn(8, 4)
    q = SearchQuantizer(4, [0, 2, 8])
    q.initialize(w)
    leaf = q.begin_arch()
    q.tau = 1.0
    g = torch.randn(8, 4)
    torch.manual_seed(3)
    (q(w) * g).sum().backward()
    torch.manual_seed(3)
    ref_leaf = leaf.detach().clone().requires_grad_(True)
    p = torch.nn.functional.gumbel_softmax(ref_leaf, tau=1.0, dim=-1).repeat_interleave(4, 0)
    ((p[:, 1:2] * asym_fake_quant(w, 2) + p[:, 2:3] * asym_fake_quant(w, 8)) * g).sum().backward()
    assert torch.allclose(leaf.grad, ref_leaf.grad, atol=1e-5)
    q.end_arch()


def test_values_of_an_architecture_step_are_reused_only_while_the_weight_is_unchanged():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8))
    q = SearchQuantizer(8, [0, 2, 4])
    q.initialize(w)
    q.begin_arch()
    vals = q.values(w)
    q.end_arch()
    assert q.values(w) is vals  # the next weight step: same weight, no second quantization
    assert torch.equal(vals, torch.stack([asym_fake_quant(w.detach(), 2), asym_fake_quant(w.detach(), 4)]))
    w.grad = torch.randn(16, 8)
    version = w._version
    torch.optim.AdamW([w], lr=0.1, fused=True).step()  # changes w without bumping its version counter
    assert w._version == version
    fresh = q.values(w)
    assert fresh is not vals and torch.equal(fresh[1], asym_fake_quant(w.detach(), 4))
    assert q._cache is None  # a weight step keeps nothing (the optimizer changes the weight next)


@pytest.mark.parametrize("over", [True, False])
def test_arch_step_moves_logits_toward_the_budget(over):
    model = tiny()
    # uniform start: E[C] ~ 2 avg bits + scales; 1 avg bit is far below it, 3.9 far above
    m = search(budget={"avg_bits": 1.0 if over else 3.9}, lambda_size=100.0, arch_lr=0.05)
    st = state_for(model)
    m.attach(st)
    model.train()
    before = [q.logits.clone() for q in m.quantizers()]
    size0 = m.expected_size()
    out = m.arch_step(st, batch())
    after = [q.logits for q in m.quantizers()]
    assert out["expected_bytes"] == pytest.approx(size0, rel=1e-5)
    sign = 1 if over else -1
    for b, a in zip(before, after):
        assert bool((sign * (a[:, 0] - b[:, 0]) > 0).all())  # the 0-bit choice up when over budget
        assert bool((sign * (a[:, 2] - b[:, 2]) < 0).all())  # the 4-bit choice down
    assert sign * (m.expected_size() - size0) < 0
    assert all(int(q.arch_steps) == 1 for q in m.quantizers())


def test_arch_step_inside_the_band_follows_the_task_loss_only():
    m = search(budget={"avg_bits": 2}, eps=0.5)  # a wide band around the uniform start (~2.6 avg bits)
    other = search(budget={"avg_bits": 2}, eps=0.5, lambda_size=0.0)
    st, st2 = state_for(tiny()), state_for(tiny())
    m.attach(st)
    other.attach(st2)
    torch.manual_seed(0)
    m.arch_step(st, batch())
    torch.manual_seed(0)
    other.arch_step(st2, batch())
    for a, b in zip(m.quantizers(), other.quantizers()):
        assert torch.equal(a.logits, b.logits)


def test_finalize_fits_the_budget_within_two_percent_by_compactbert_size():
    model = tiny()
    m = search(budget={"avg_bits": 2.5}, candidates=[0, 2, 4, 8])
    st = state_for(model)
    m.attach(st)
    torch.manual_seed(0)
    for q in m.quantizers():  # arg-max widths far above the budget: mostly 8 bits
        q.logits.copy_(torch.randn(q.logits.shape) + torch.tensor([0.0, 0.0, 0.0, 3.0]))
    argmax_bits = [q.chosen_bits() for q in m.quantizers()]
    m.finalize(st)
    widths = chosen_widths(model)
    assert len(widths) == 12 and all(isinstance(lay.weight_quantizer, GroupBitsQuantizer) for lay in m._layers.values())
    target = m._table.n_weights * 2.5 / 8
    assert st.extras["mixed_precision/argmax_bytes"] > 1.5 * target
    measured = targeted_bytes(model, widths)
    assert abs(measured - target) <= 0.02 * target
    assert measured == pytest.approx(st.extras["mixed_precision/final_bytes"], abs=12)  # byte padding only
    flat_before = [b for bits in argmax_bits for b in bits]
    flat_after = [b for bits in widths.values() for b in bits]
    assert sum(a == b for a, b in zip(flat_before, flat_after)) < len(flat_before)


def test_finalize_keeps_the_argmax_widths_when_they_fit():
    # every group at 4 bits: 4 bits + 32 bits of scales per row of 32 (Q/K/V/O, FFN1) or 64 (FFN2)
    all4 = (4 * 32 * 32 * 5 + 64 * 32 * 5 + 32 * 64 * 4.5) / (4 * 32 * 32 + 2 * 64 * 32)
    assert all4 == 4.875
    for budget, kept in ((4.875, True), (4.7, False)):  # 4.875 > 4.7 * 1.02: the widths are re-fitted
        model = tiny()
        m = search(budget={"avg_bits": budget}, candidates=[0, 2, 4])
        st = state_for(model)
        m.attach(st)
        for q in m.quantizers():
            q.logits.copy_(torch.tensor([0.0, 0.0, 1.0]).expand_as(q.logits))
        m.finalize(st)
        bits = {b for widths in chosen_widths(model).values() for b in widths}
        assert (bits == {4}) is kept
        assert st.extras["mixed_precision/final_bytes"] <= st.extras["mixed_precision/budget_bytes"]
        assert st.extras["mixed_precision/final_bytes"] >= 0.98 * st.extras["mixed_precision/budget_bytes"]


# ---------------------------------------------------------------------------------- Hessian
def test_hessian_allocation_prefers_bits_where_the_trace_is_large_and_fits_the_budget():
    model = tiny()
    m = HessianAllocation(budget={"avg_bits": 2.5}, row_group_size=8, batches=2, samples=2)
    st = state_for(model, steps=10)
    m.attach(st)
    assert all(set(q.group_bits.tolist()) == {4} for q in (lay.weight_quantizer for lay in m._layers.values()))
    model.train()
    for step in range(2):
        st.step, st.batch = step, batch()
        m.on_step(st)
    assert model.training  # restored after the estimate
    widths = chosen_widths(model)
    target = m._table.n_weights * 2.5 / 8
    assert abs(targeted_bytes(model, widths) - target) <= 0.02 * target
    omega, costs = m.sensitivities(), m._table.costs
    flat = np.asarray([m.candidates.index(b) for bits in widths.values() for b in bits])
    rows = np.arange(len(flat))
    chosen = omega[rows, flat].sum()
    rng = np.random.default_rng(0)
    for _ in range(200):  # no random choice within the budget is less sensitive
        other = rng.integers(0, 3, len(flat))
        if costs[rows, other].sum() <= target:
            assert omega[rows, other].sum() >= chosen
    # the groups it prunes are the ones whose removal costs least
    assert omega[flat == 0, 0].mean() < omega[flat == 2, 0].mean()
    frozen = {n: list(b) for n, b in widths.items()}
    st.step = 2
    m.on_step(st)  # later steps change nothing
    assert chosen_widths(model) == frozen


# ---------------------------------------------------------------------------------- validation
def test_bad_keys_are_one_line_errors():
    mt = method_types()["mixed_precision_search"]
    cases = {
        "candidates=[0, 3, 16]": ({"candidates": [0, 3, 16]}, r"unknown width\(s\) \[16\]; valid widths: \[0, 1, .*8\]"),
        "candidates=[]": ({"candidates": []}, "candidates is empty"),
        "candidates=[0]": ({"candidates": [0]}, "has no nonzero width"),
        "heldout=0.6": ({"heldout": 0.6}, r"heldout=0.6 is outside \(0, 0.5\]"),
        "heldout=0": ({"heldout": 0.0}, r"heldout=0.0 is outside \(0, 0.5\]"),
        "unit": ({"budget": {"gigabits": 1}}, "budget unit 'gigabits' is not known"),
        "below": ({"budget": {"avg_bits": 1}, "candidates": [2, 4]}, "smaller than every group at its smallest width"),
    }
    for name, (kw, msg) in cases.items():
        with pytest.raises(pydantic.ValidationError, match=msg):
            mt.model_validate({"type": "mixed_precision_search", "budget": {"avg_bits": 3}, **kw})
    assert mt.model_validate({"type": "mixed_precision_search", "budget": {"avg_bits": 3}, "heldout": 0.5}).heldout == 0.5


def test_row_groups_must_divide_every_matrix_named_at_attach():
    model = tiny()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(UserError, match=r"row_group_size=24 does not divide the 32 rows of "
                                        r"bert\.encoder\.layer\.0\.attention\.self\.query \(32x32\); valid: .*8, 16, 32"):
        search(row_group_size=24).attach(state_for(model))
    assert {n: type(m) for n, m in model.named_modules()} == before  # nothing changed
    with pytest.raises(UserError, match="larger than every group at its largest width"):
        HessianAllocation(budget={"megabytes": 1}, row_group_size=8).attach(state_for(tiny()))


RECIPE = """
stages:
  - name: search
    steps: 4
    keep: {keep}
    methods:
      - {{type: mixed_precision_search, budget: {{avg_bits: 2}}, row_group_size: 8}}
      - {{type: distillation}}
{more}
"""


def test_recipe_checks_keep_last_and_warn_without_a_finetune_stage():
    with pytest.raises(UserError, match=r"stages\.0\.methods\.0: mixed_precision_search needs its stage to keep the "
                                        r"last model \(keep: last\), not 'best'"):
        Recipe.from_yaml(RECIPE.format(keep="best", more=""))
    with pytest.warns(UserWarning, match="the chosen widths are not fine-tuned afterwards"):
        Recipe.from_yaml(RECIPE.format(keep="last", more=""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Recipe.from_yaml(RECIPE.format(keep="last", more="  - {name: ft, steps: 2, methods: []}"))


@pytest.mark.parametrize("name", ["aq-bert", "aq-bert-hessian", "aq-bert-uniform"])
def test_ready_recipes_validate(name):
    from compactbert.api import find_recipe

    rec = Recipe.load(find_recipe(name))
    assert len(rec.stages) == 2
    first = rec.stages[0].methods[0]
    if name != "aq-bert-uniform":
        assert first.budget.describe() == "3 avg_bits" and first.candidates == [0, 2, 4] and first.row_group_size == 6


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from toy import make_tiny_model, write_toy_glue

    root = tmp_path_factory.mktemp("aq")
    data = write_toy_glue(root / "glue", "sst2", n_train=96, n_dev=32)
    model_dir = make_tiny_model(root / "bert", "bert", hidden_size=32, num_heads=2, intermediate_size=64)
    return data, model_dir


N_TOY = 2 * (4 * 32 * 32 + 2 * 64 * 32)  # targeted weights of the toy model below


@pytest.mark.parametrize("recipe,budget,target", [
    ("aq-bert", "{avg_bits: 2.5}", N_TOY * 2.5 / 8), ("aq-bert-hessian", "{avg_bits: 2.5}", N_TOY * 2.5 / 8),
    ("aq-bert", "{bytes: 6000}", 6000.0),  # ~2.93 avg bits: a budget in bytes means bytes
])
def test_search_then_finetune_through_compress(toy, tmp_path, recipe, budget, target):
    from compactbert import api

    data, model_dir = toy
    out = tmp_path / recipe
    sets = [f"stages.{i}.{k}" for i in (0, 1) for k in ("epochs=", "steps=6", "batch_size=16")]
    sets += ["bf16=false", f"stages.0.methods.0.budget={budget}", "stages.0.methods.0.row_group_size=8"]
    if recipe == "aq-bert":
        sets += ["stages.0.methods.0.n0=0", "stages.0.methods.0.n1=0", "stages.0.methods.0.heldout=0.25"]
    api.compress(recipe, model_dir, "sst2", out, data=str(data), overrides=sets, progress=False)
    widths = widths_from_spec(out / "model")
    assert len(widths) == 12 and all(len(b) in (4, 8) for b in widths.values())
    assert set(b for bits in widths.values() for b in bits) <= {0, 2, 4}
    size = json.loads((out / "size.json").read_text())
    measured = sum(t["bytes"] for t in size["tensors"] if t["name"].removesuffix(".weight") in widths)
    assert abs(measured - target) <= 0.02 * target
    assert api.size(out)["compressed_bytes"] == size["compressed_bytes"]  # `compactbert size` agrees
    stage0 = widths_from_spec(out / "stages" / ("0-search" if recipe == "aq-bert" else "0-allocate-qat") / "model")
    assert stage0 == widths  # the fine-tune stage kept the widths
    assert json.loads((out / "eval.json").read_text())["metrics"]["accuracy"] >= 0.0
