"""Pruning: schedules, exact sparsity, locked masks, resume, structured / N:M / block patterns."""

from __future__ import annotations

import copy
import io

import pydantic
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from compactbert.errors import UserError
from compactbert.methods.base import TrainState
from compactbert.methods.prune import (
    BlockPruning,
    MagnitudePruning,
    NMPruning,
    StructuredPruning,
    layer_parts,
    lowest_k,
    nm_mask,
    pruned_structure,
    schedule_progress,
)
from compactbert.nn.compressed import CompressedLinear
from compactbert.methods import method_types
from compactbert.train.lr import rewound_lr_lambda

ARCHS = ("bert", "distilbert", "roberta")


def tiny(arch: str = "bert", layers: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=100, max_position_embeddings=64, num_labels=2)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
        return BertForSequenceClassification(cfg)
    if arch == "distilbert":
        cfg = DistilBertConfig(dim=32, n_layers=layers, n_heads=2, hidden_dim=64, dropout=0.0, attention_dropout=0.0,
                               seq_classif_dropout=0.0, **common)
        return DistilBertForSequenceClassification(cfg)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                        pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    return RobertaForSequenceClassification(cfg)


def batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(3, 100, (4, 8), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (4,), generator=g)}


def targets(model) -> dict[str, CompressedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, CompressedLinear)}


class Loop:
    """A minimal stand-in for the training loop: hooks in the documented order, AdamW."""

    def __init__(self, model, methods, total_steps, lr=1e-2):
        self.model, self.methods = model, list(methods)
        self.state = TrainState(model=model, total_steps=total_steps)
        for m in self.methods:
            m.attach(self.state)
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)

    def step(self, step: int) -> None:
        s = self.state
        s.step, s.batch = step, batch(step)
        for m in self.methods:
            m.on_step(s)
        inputs = {k: v for k, v in s.batch.items() if k != "labels"}
        s.outputs = self.model(**inputs)
        loss = F.cross_entropy(s.outputs.logits, s.batch["labels"])
        for m in self.methods:
            extra = m.loss(s)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        for m in self.methods:
            m.after_step(s)

    def run(self, start: int, stop: int, finalize: bool = True) -> None:
        for step in range(start, stop):
            self.step(step)
        if finalize:
            self.state.step = stop
            for m in self.methods:
                m.finalize(self.state)


# ------------------------------------------------------------------ schedule arithmetic
def test_cubic_and_linear_schedule_values_at_known_steps():
    m = MagnitudePruning(sparsity=0.9, start=0, end=100, frequency=10)
    m.attach(TrainState(model=tiny(), total_steps=200))
    assert m.schedule_steps == (0, 100)
    assert m.sparsity_at(0) == 0.0
    assert m.sparsity_at(50) == pytest.approx(0.9 * (1 - 0.5**3))  # 0.7875
    assert m.sparsity_at(59) == pytest.approx(0.7875)  # held until the next update at 60
    assert m.sparsity_at(10) == pytest.approx(0.9 * (1 - 0.9**3))
    assert m.sparsity_at(100) == 0.9 and m.sparsity_at(199) == 0.9
    lin = MagnitudePruning(sparsity=0.8, schedule="linear", start=20, end=0.6, frequency=20)
    lin.attach(TrainState(model=tiny(), total_steps=100))
    assert lin.schedule_steps == (20, 60)
    assert [lin.sparsity_at(t) for t in (0, 19, 20, 39, 40, 60)] == pytest.approx([0, 0, 0, 0, 0.4, 0.8])
    zg = MagnitudePruning(sparsity=0.9, initial_sparsity=0.5, start=0, end=100, frequency=10)
    zg.attach(TrainState(model=tiny(), total_steps=200))
    assert zg.sparsity_at(0) == 0.5
    assert zg.sparsity_at(50) == pytest.approx(0.9 + (0.5 - 0.9) * 0.125)
    assert schedule_progress(5, 10, 20, 1, "cubic") is None


def test_end_is_clamped_to_the_last_step_so_the_target_is_reached_in_the_run():
    m = MagnitudePruning(sparsity=0.5, start=0, end=1.0, frequency=3)
    m.attach(TrainState(model=tiny(), total_steps=10))
    assert m.schedule_steps == (0, 9)
    assert m.sparsity_at(9) == 0.5


def test_lowest_k_is_exact_with_ties():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 2.0, 1.0])
    assert lowest_k(scores, 3).tolist() == [True, True, False, False, True, False, False]
    assert int(lowest_k(torch.ones(10), 7).sum()) == 7
    assert int(lowest_k(torch.ones(10), 0).sum()) == 0 and int(lowest_k(torch.ones(10), 10).sum()) == 10


# ------------------------------------------------------------------ magnitude pruning in a loop
@pytest.mark.parametrize("arch", ARCHS)
def test_gradual_magnitude_pruning_reaches_the_target_exactly_per_layer(arch):
    model = tiny(arch)
    m = MagnitudePruning(sparsity=0.9, start=0, end=12, frequency=4)
    loop = Loop(model, [m], total_steps=16)
    seen = []
    for step in range(16):
        loop.step(step)
        seen.append(loop.state.extras["magnitude_pruning/sparsity"])
    loop.run(16, 16)
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] == 0.9
    layers = targets(model)
    assert len(layers) == 12  # 6 Linear per layer, 2 layers; pooler and head untouched
    for name, layer in layers.items():
        n = layer.weight.numel()
        assert int((layer.weight == 0).sum()) == round(0.9 * n), name
        assert int((~layer.weight_mask).sum()) == round(0.9 * n), name
        # the kept weights are the largest ones of this layer
        kept, dropped = layer.weight[layer.weight_mask].abs(), layer.weight[~layer.weight_mask]
        assert kept.min() > 0 and torch.all(dropped == 0)
    assert "classifier" not in {n.split(".")[-1] for n in layers}


def test_global_scope_counts_zeros_over_all_targets():
    model = tiny()
    with torch.no_grad():  # make layers differ in scale so a global threshold treats them differently
        model.bert.encoder.layer[0].intermediate.dense.weight.mul_(10)
    m = MagnitudePruning(sparsity=0.75, schedule="one_shot", scope="global")
    Loop(model, [m], total_steps=3).run(0, 3)
    layers = targets(model).values()
    total = sum(layer.weight.numel() for layer in layers)
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    assert zeros == round(0.75 * total)
    big = model.bert.encoder.layer[0].intermediate.dense
    assert (big.weight == 0).float().mean() < 0.2  # the scaled layer keeps most of its weights


def test_exact_count_with_tied_weights():
    model = tiny()
    layer = model.bert.encoder.layer[0].output.dense  # 64 inputs x 32 outputs
    with torch.no_grad():
        layer.weight.fill_(0.5)
    m = MagnitudePruning(sparsity=0.3, schedule="one_shot", targets=["*layer.0.output.dense"])
    Loop(model, [m], total_steps=1).run(0, 0)
    assert int((layer.weight == 0).sum()) == round(0.3 * 2048)


def test_finalize_reaches_the_target_even_if_the_run_stops_early():
    model = tiny()
    m = MagnitudePruning(sparsity=0.6, start=0, end=90, frequency=10)
    loop = Loop(model, [m], total_steps=100)
    loop.run(0, 25)  # stopped long before `end`
    for layer in targets(model).values():
        assert int((layer.weight == 0).sum()) == round(0.6 * layer.weight.numel())


# ------------------------------------------------------------------ masks persist
def test_masks_round_trip_through_the_state_dict_and_safetensors(tmp_path):
    model = tiny()
    Loop(model, [MagnitudePruning(sparsity=0.5, schedule="one_shot")], total_steps=2).run(0, 2)
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    fresh = tiny(seed=1)
    # The method attached to the fresh model creates the same buffers, so a strict load works.
    MagnitudePruning(sparsity=0.5, schedule="one_shot").attach(TrainState(model=fresh, total_steps=2))
    load_model(fresh, str(path), strict=True)
    for (name, a), b in zip(targets(model).items(), targets(fresh).values()):
        assert torch.equal(a.weight_mask, b.weight_mask), name
        assert torch.equal(a.weight, b.weight), name
        assert a.weight_mask.dtype == torch.bool
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert any(k.endswith("weight_mask") for k in model.state_dict())


def test_resumed_schedule_continues_identically():
    def make():
        model = tiny(seed=3)
        return model, MagnitudePruning(sparsity=0.8, start=2, end=14, frequency=3)

    model_a, m_a = make()
    Loop(model_a, [m_a], total_steps=20).run(0, 20)

    model_b, m_b = make()
    loop_b = Loop(model_b, [m_b], total_steps=20)
    loop_b.run(0, 8, finalize=False)  # interrupted mid-schedule
    weights = copy.deepcopy(model_b.state_dict())
    opt_state = copy.deepcopy(loop_b.opt.state_dict())

    model_c, m_c = make()
    loop_c = Loop(model_c, [m_c], total_steps=20)  # attach, then load the checkpoint (as the loop does)
    model_c.load_state_dict(weights, strict=True)
    loop_c.opt.load_state_dict(opt_state)
    loop_c.run(8, 20)
    for (name, a), b in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, b), name


def test_locked_mask_is_unchanged_by_training_and_pruned_weights_stay_zero(tmp_path):
    sparse = tiny()
    Loop(sparse, [MagnitudePruning(sparsity=0.7, schedule="one_shot")], total_steps=1).run(0, 1)
    before = {n: (layer.weight_mask.clone(), layer.weight.detach().clone()) for n, layer in targets(sparse).items()}
    lock = MagnitudePruning(lock_mask=True)
    Loop(sparse, [lock], total_steps=6, lr=5e-2).run(0, 6)
    for name, layer in targets(sparse).items():
        mask, w0 = before[name]
        assert torch.equal(layer.weight_mask, mask), name
        assert torch.all(layer.weight[~mask] == 0), name
        assert not torch.equal(layer.weight[mask], w0[mask]), name  # the kept weights did train


def test_lock_mask_without_masks_locks_the_zero_pattern_and_refuses_a_dense_model():
    model = tiny()
    layer = model.bert.encoder.layer[1].attention.self.query
    with torch.no_grad():
        layer.weight[:, :8] = 0.0  # a sparse checkpoint saved as a plain model
    m = MagnitudePruning(lock_mask=True, targets=["*layer.1.attention.self.query"])
    Loop(model, [m], total_steps=4, lr=5e-2).run(0, 4)
    q = model.bert.encoder.layer[1].attention.self.query
    assert torch.all(q.weight[:, :8] == 0) and torch.all(q.weight[:, 8:] != 0)
    with pytest.raises(UserError, match="nothing to lock"):
        MagnitudePruning(lock_mask=True).attach(TrainState(model=tiny(), total_steps=4))


def test_lr_rewind_step_and_rewound_schedule():
    m = MagnitudePruning(sparsity=0.5, start=0, end=0.5, lr_rewind=True)
    assert m.lr_rewind_step is None  # known after attach
    m.attach(TrainState(model=tiny(), total_steps=100))
    assert m.lr_rewind_step == 50
    assert MagnitudePruning(sparsity=0.5).lr_rewind_step is None

    def linear_decay(n):
        return lambda step: 1.0 - step / n

    f = rewound_lr_lambda(linear_decay, 100, 50)
    assert [f(0), f(25), f(49), f(50), f(75)] == pytest.approx([1.0, 0.5, 0.02, 1.0, 0.5])
    g = rewound_lr_lambda(linear_decay, 100, None)
    assert g(50) == 0.5


# ------------------------------------------------------------------ structured pruning
def _physically_remove(model, structure):
    """Slice the pruned heads / neurons out of a BERT/RoBERTa copy (what an exporter does)."""
    model = copy.deepcopy(model)
    heads = model.config.num_attention_heads
    for i, parts in enumerate(layer_parts(model)):
        d = parts["q"].out_features // heads
        keep_rows = torch.tensor([r for r in range(heads * d) if r // d not in structure[i]["heads"]])
        keep_n = torch.tensor([j for j in range(parts["ffn_in"].out_features) if j not in structure[i]["neurons"]])
        for role, rows, cols in (("q", keep_rows, None), ("k", keep_rows, None), ("v", keep_rows, None),
                                 ("o", None, keep_rows), ("ffn_in", keep_n, None), ("ffn_out", None, keep_n)):
            lin = parts[role]
            w = lin.weight.detach()
            b = lin.bias.detach()
            if rows is not None:
                w, b = w[rows], b[rows]
            if cols is not None:
                w = w[:, cols]
            new = torch.nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                new.weight.copy_(w)
                new.bias.copy_(b)
            parent_name, _, attr = next(n for n, mod in model.named_modules() if mod is lin).rpartition(".")
            setattr(model.get_submodule(parent_name), attr, new)
    return model


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_structured_one_shot_masks_whole_heads_and_neurons_and_removal_keeps_the_function(arch):
    model = tiny(arch, layers=3)
    m = StructuredPruning(heads=0.5, neurons=0.25, schedule="one_shot")
    Loop(model, [m], total_steps=4).run(0, 4)
    structure = pruned_structure(model)
    assert sorted(structure) == [0, 1, 2]
    for i, parts in enumerate(layer_parts(model)):
        assert len(structure[i]["heads"]) == 1 and len(structure[i]["neurons"]) == 16
        h = structure[i]["heads"][0]
        rows = slice(16 * h, 16 * (h + 1))
        for role in ("q", "k", "v"):
            assert torch.all(parts[role].weight[rows] == 0) and not parts[role].weight_mask[rows].any()
        assert torch.all(parts["o"].weight[:, rows] == 0)
        other = slice(16 * (1 - h), 16 * (2 - h))
        assert parts["o"].weight_mask[:, other].all()
        for j in structure[i]["neurons"]:
            assert torch.all(parts["ffn_in"].weight[j] == 0) and torch.all(parts["ffn_out"].weight[:, j] == 0)
    model.eval()
    small = _physically_remove(model, structure).eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    b = {k: v for k, v in batch(99).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(small(**b).logits, model(**b).logits, rtol=0, atol=1e-5)


def test_structured_magnitude_prunes_the_smallest_units():
    model = tiny(layers=2)
    parts = layer_parts(model)
    with torch.no_grad():
        for role in ("q", "k", "v"):
            parts[0][role].weight[16:].mul_(0.01)  # head 1 of layer 0 is tiny
        parts[1]["o"].weight[:, :16].mul_(0.01)  # head 0 of layer 1 is tiny
        for j in (3, 7):
            parts[0]["ffn_in"].weight[j].mul_(0.001)
            parts[0]["ffn_out"].weight[:, j].mul_(0.001)
    m = StructuredPruning(heads=0.5, neurons=2 / 64, schedule="one_shot")
    Loop(model, [m], total_steps=1).run(0, 0)
    structure = pruned_structure(model)
    assert structure[0] == {"heads": [1], "neurons": [3, 7]}
    assert structure[1]["heads"] == [0] and len(structure[1]["neurons"]) == 2


def test_structured_global_scope_keeps_one_head_per_layer():
    model = tiny(layers=2)
    with torch.no_grad():
        for part in layer_parts(model)[0].values():
            part.weight.mul_(0.01)  # layer 0 is all small: a global choice would take both its heads
    m = StructuredPruning(heads=0.5, scope="global", schedule="one_shot")
    Loop(model, [m], total_steps=1).run(0, 0)
    structure = pruned_structure(model)
    assert len(structure[0]["heads"]) == 1 and len(structure[1]["heads"]) == 1
    assert structure[0]["neurons"] == []


@pytest.mark.parametrize("arch", ARCHS)
def test_structured_taylor_gradual_on_each_architecture(arch):
    model = tiny(arch, layers=2)
    m = StructuredPruning(heads=0.5, neurons=0.5, score="taylor", start=0, end=6, frequency=2)
    loop = Loop(model, [m], total_steps=10)
    assert hasattr(model, "_prune_scores")
    loop.step(0)
    loop.step(1)
    scores = model._prune_scores.neurons_0
    assert scores.shape == (64,) and scores.min() > 0  # |w * grad| accumulated for every neuron
    for step in range(2, 10):
        loop.step(step)
    counts = [loop.state.extras["structured_pruning/neurons_pruned"]]
    loop.run(10, 10)
    structure = pruned_structure(model)
    assert all(len(v["heads"]) == 1 and len(v["neurons"]) == 32 for v in structure.values())
    assert counts == [64]
    assert not hasattr(model, "_prune_scores")  # training-only state is gone from the final model


def test_structured_resume_with_taylor_scores_continues_identically():
    def make():
        model = tiny(seed=5)
        return model, StructuredPruning(heads=0.5, neurons=0.5, score="taylor", start=1, end=9, frequency=2)

    model_a, m_a = make()
    Loop(model_a, [m_a], total_steps=12).run(0, 12)
    model_b, m_b = make()
    loop_b = Loop(model_b, [m_b], total_steps=12)
    loop_b.run(0, 4, finalize=False)
    weights, opt_state = copy.deepcopy(model_b.state_dict()), copy.deepcopy(loop_b.opt.state_dict())
    assert any(k.startswith("_prune_scores.") for k in weights)
    model_c, m_c = make()
    loop_c = Loop(model_c, [m_c], total_steps=12)
    model_c.load_state_dict(weights, strict=True)
    loop_c.opt.load_state_dict(opt_state)
    loop_c.run(4, 12)
    assert pruned_structure(model_a) == pruned_structure(model_c)
    for (name, a), b in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------ N:M and blocks
def test_nm_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 1.0, 1.0, 1.0, 1.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]


@pytest.mark.parametrize("arch", ARCHS)
def test_nm_pruning_2_of_4_holds_through_training(arch):
    model = tiny(arch)
    m = NMPruning(n=2, m=4, start=2)
    loop = Loop(model, [m], total_steps=6)
    loop.run(0, 2, finalize=False)
    assert all(layer.weight_mask.all() for layer in targets(model).values())  # not yet
    loop.run(2, 6)
    for name, layer in targets(model).items():
        groups = (layer.weight != 0).reshape(layer.out_features, -1, 4).sum(-1)
        assert torch.all(groups == 2), name
        assert torch.all(layer.weight_mask.reshape(layer.out_features, -1, 4).sum(-1) == 2), name


@pytest.mark.parametrize("block", [(4, 1), (1, 4), (2, 2)])
def test_block_pruning_zeroes_whole_blocks_with_the_smallest_norms(block):
    model = tiny()
    m = BlockPruning(sparsity=0.5, block=block, schedule="one_shot")
    ref = {n: mod.weight.detach().clone() for n, mod in model.named_modules() if n.endswith("intermediate.dense")}
    Loop(model, [m], total_steps=1).run(0, 0)
    br, bc = block
    for name, layer in targets(model).items():
        r, c = layer.weight.shape
        blocks = layer.weight_mask.reshape(r // br, br, c // bc, bc)
        kept_any, kept_all = blocks.any(3).any(1), blocks.all(3).all(1)
        assert torch.equal(kept_any, kept_all), name  # every block all kept or all pruned
        assert int((~kept_any).sum()) == round(0.5 * kept_any.numel()), name
    name = next(iter(ref))
    w0 = ref[name].reshape(64 // br, br, 32 // bc, bc).pow(2).sum((1, 3)).sqrt()
    mask = targets(model)[name].weight_mask.reshape(64 // br, br, 32 // bc, bc).any(3).any(1)
    assert w0[~mask].max() <= w0[mask].min()


# ------------------------------------------------------------------ stacking and errors
def test_magnitude_on_top_of_structured_keeps_structured_zeros():
    model = tiny()
    structured = StructuredPruning(heads=0.5, schedule="one_shot")
    magnitude = MagnitudePruning(sparsity=0.6, schedule="one_shot", start=1)
    Loop(model, [structured, magnitude], total_steps=3).run(0, 3)
    structure = pruned_structure(model)
    assert all(len(v["heads"]) == 1 for v in structure.values())
    for layer in targets(model).values():
        assert int((layer.weight == 0).sum()) == round(0.6 * layer.weight.numel()) or layer.out_features == 32


def test_registered_types_and_configuration_errors():
    types = method_types()
    for name, cls in [("magnitude_pruning", MagnitudePruning), ("structured_pruning", StructuredPruning),
                      ("nm_pruning", NMPruning), ("block_pruning", BlockPruning)]:
        assert types[name] is cls
    assert "sparsity=0.9" in MagnitudePruning(sparsity=0.9).describe()
    assert "keep the student's sparsity pattern" in MagnitudePruning(lock_mask=True).describe()
    bad = [
        (dict(sparsity=1.0), "less than 1"),
        (dict(), "'sparsity' is required"),
        (dict(sparsity=0.5, lock_mask=True), "remove 'sparsity'"),
        (dict(sparsity=0.5, end=1.5), "must be in \\[0, 1\\]"),
        (dict(sparsity=0.5, start=10, end=5), "must come after start"),
        (dict(sparsity=0.5, end=1), "end: 1 is step 1"),
        (dict(sparsity=0.5, initial_sparsity=0.7), "initial_sparsity"),
        (dict(sparsity=0.5, sheduel="cubic"), "Extra inputs"),
        (dict(sparsity=0.5, schedule="exponential"), "cubic"),
    ]
    for kwargs, msg in bad:
        with pytest.raises(pydantic.ValidationError, match=msg):
            MagnitudePruning(**kwargs)
    with pytest.raises(pydantic.ValidationError, match="n \\(4\\) must be smaller than m"):
        NMPruning(n=4, m=4)
    with pytest.raises(pydantic.ValidationError, match="set 'heads' and/or 'neurons'"):
        StructuredPruning()
    with pytest.raises(pydantic.ValidationError, match="give a later 'start'"):
        StructuredPruning(heads=0.5, score="taylor", schedule="one_shot")
    with pytest.raises(UserError, match="'\\*nothing\\*' matches no Linear"):
        MagnitudePruning(sparsity=0.5, targets=["*nothing*"]).attach(TrainState(model=tiny(), total_steps=5))
    with pytest.raises(UserError, match="must come after start"):
        MagnitudePruning(sparsity=0.5, start=50, end=0.25).attach(TrainState(model=tiny(), total_steps=100))
    with pytest.raises(UserError, match="not a multiple of m=3"):
        NMPruning(n=1, m=3).attach(TrainState(model=tiny(), total_steps=5))
    with pytest.raises(UserError, match="block 3x1 does not tile"):
        BlockPruning(sparsity=0.5, block=(3, 1)).attach(TrainState(model=tiny(), total_steps=5))
