"""The quantize method (and its binary / ternary / int8 aliases) on tiny BERT, DistilBERT, RoBERTa."""

from __future__ import annotations

import pydantic
import pytest
import torch
import torch.nn.functional as F
from torch import nn
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
from compactbert.methods.quantize import Quantize
from compactbert.nn.compressed import CompressedEmbedding, CompressedLinear
from compactbert.nn.surgery import compress_modules, compressed_modules
from compactbert.methods import method_types
from compactbert.size import size_report


def tiny(arch: str = "bert", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=100, max_position_embeddings=64, num_labels=2)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common)
        return BertForSequenceClassification(cfg)
    if arch == "distilbert":
        cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
        return DistilBertForSequenceClassification(cfg)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        pad_token_id=1, **common)
    return RobertaForSequenceClassification(cfg)


IDS = torch.tensor([[5, 17, 42, 9, 3, 77], [8, 8, 60, 2, 4, 4]])


def logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def make(type_: str, **kw) -> Quantize:
    return method_types()[type_].model_validate({"type": type_, **kw})


def test_registered_types():
    types = method_types()
    assert {"quantize", "binary", "ternary", "int8"} <= set(types)
    assert make("binary").weight_bits() == 1 and make("ternary").weight_bits() == 2
    assert make("int8").weight_bits() == 8 and make("quantize", bits=4).weight_bits() == 4
    assert make("quantize", weight=None, activations="dynamic8").weight_bits() is None


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_ternary_attach_quantizes_encoder_and_word_embeddings(arch):
    model = tiny(arch)
    before = logits(model)
    m = make("ternary")
    m.attach(TrainState(model=model))
    comp = compressed_modules(model)
    linears = [x for x in comp.values() if isinstance(x, CompressedLinear)]
    assert len(linears) == 12 and len(comp) == 13
    assert isinstance(model.get_input_embeddings(), CompressedEmbedding)
    for layer in comp.values():
        w = layer.effective_weight().detach()
        for row in w:  # {-a, 0, +a} per row
            levels = torch.unique(row.abs())
            assert len(levels) <= 2 and float(levels[0]) == 0.0 or len(levels) == 1
    for layer in linears:
        assert layer.input_quantizer.spec() == {"kind": "dynamic_act", "bits": 8}
    after = logits(model)
    assert torch.isfinite(after).all() and not torch.equal(after, before)
    head = [n for n, x in model.named_modules() if "classifier" in n and isinstance(x, nn.Linear)]
    assert head and all(type(model.get_submodule(n)) is nn.Linear for n in head)


def test_binary_levels_in_model():
    model = tiny()
    make("binary", embeddings=False).attach(TrainState(model=model))
    layer = model.bert.encoder.layer[1].intermediate.dense
    w = layer.effective_weight().detach()
    alpha = layer.weight.detach().abs().mean(dim=1, keepdim=True).half().float()
    assert torch.equal(w.abs(), alpha.expand_as(w))
    assert type(model.get_input_embeddings()) is nn.Embedding


def test_int8_w8a8_stays_close_to_float():
    model = tiny()
    ref = logits(model)
    make("int8").attach(TrainState(model=model))
    out = logits(model)
    assert not torch.equal(out, ref)
    assert float((out - ref).abs().max()) < 0.02 * float(ref.abs().max()) + 1e-3
    r = size_report(model)
    # int8 codes + fp16 row scales for Q/K/V/O, FFN in/out, word embeddings; 4002 other params fp32
    assert r["compressed_bytes"] == 8 * (1024 + 64) + 2 * (2048 + 128) + 2 * (2048 + 64) + (3200 + 200) + 4002 * 4


def test_int4_group_and_targets_pattern():
    model = tiny()
    m = make("quantize", bits=4, granularity="group", group_size=16, targets=["*.attention.self.*"])
    m.attach(TrainState(model=model))
    assert sorted(m.layers) == sorted(
        f"bert.encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "key", "value"))
    q = m.layers["bert.encoder.layer.0.attention.self.query"].weight_quantizer
    assert q.spec() == {"kind": "int", "bits": 4, "symmetric": True, "granularity": "group", "group_size": 16,
                        "learned_step": False}
    assert type(model.bert.encoder.layer[0].intermediate.dense) is nn.Linear


def test_pruning_mask_is_kept_when_quantizing():
    model = tiny()
    layer = compress_modules(model, "*layer.0.output.dense")["bert.encoder.layer.0.output.dense"]
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    layer.weight_mask = mask
    make("ternary").attach(TrainState(model=model))
    assert model.bert.encoder.layer[0].output.dense is layer
    assert torch.equal(layer.weight_mask, mask)
    assert bool((layer.effective_weight()[~mask] == 0).all())


def test_learned_step_trains_then_freezes():
    model = tiny()
    m = make("quantize", bits=4, learned_step=True)
    state = TrainState(model=model, total_steps=3)
    m.attach(state)
    steps = [p for n, p in model.named_parameters() if n.endswith("weight_quantizer.step")]
    assert len(steps) == 12
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # built after attach
    model.train()
    labels = torch.tensor([0, 1])
    first = steps[0].detach().clone()
    for step in range(3):
        state.step = step
        m.on_step(state)
        loss = F.cross_entropy(model(input_ids=IDS).logits, labels)
        opt.zero_grad()
        loss.backward()
        assert steps[0].grad is not None and float(steps[0].grad.abs().sum()) > 0
        opt.step()
        m.after_step(state)
    assert not torch.equal(steps[0].detach(), first)
    m.finalize(state)
    assert not any(p.requires_grad for p in steps)


def test_static8_calibrates_then_freezes():
    model = tiny()
    m = make("quantize", weight="int", activations="static8", calibration_steps=2)
    state = TrainState(model=model)
    m.attach(state)
    iq = model.bert.encoder.layer[0].attention.self.query.input_quantizer
    assert iq.calibrating
    model.train()
    for step in range(3):
        state.step = step
        m.on_step(state)
        if step < 2:
            assert iq.calibrating
        model(input_ids=IDS)
    assert not iq.calibrating and int(iq.num_batches) == 2
    assert state.extras["quantize_calibrated_at"] == 2
    m.finalize(state)
    x = torch.full((1, 32), 1e4)
    assert float(iq(x).max()) == pytest.approx(max(-float(iq.min_val), float(iq.max_val)), rel=1e-3)


def test_qat_training_reduces_loss():
    torch.manual_seed(0)
    model = tiny()
    m = make("ternary")
    state = TrainState(model=model)
    m.attach(state)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(3, 100, (16, 8), generator=torch.Generator().manual_seed(1))
    labels = (ids[:, 0] > 50).long()
    model.train()
    losses = []
    for step in range(20):
        state.step = step
        m.on_step(state)
        loss = F.cross_entropy(model(input_ids=ids).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    m.finalize(state)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_unmatched_target_is_user_error_naming_pattern():
    model = tiny()
    with pytest.raises(UserError, match=r"quantize.targets: target pattern '\*attn\.q' matches no Linear"):
        make("quantize", targets=["*attn.q"]).attach(TrainState(model=model))
    assert not compressed_modules(model)


def test_group_size_not_dividing_leaves_model_untouched():
    model = tiny()
    with pytest.raises(UserError, match="group_size=24 does not divide the row length 32"):
        make("quantize", bits=4, granularity="group", group_size=24).attach(TrainState(model=model))
    assert not compressed_modules(model)


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"bits": 9}, "bits=9 is out of range for weight 'int'; valid: 2..8"),
        ({"weight": "binary", "bits": 2}, "bits=2 does not fit weight 'binary'"),
        ({"weight": "ternary", "granularity": "group"}, "granularity: only for weight 'int'"),
        ({"granularity": "group"}, "granularity 'group' needs group_size"),
        ({"group_size": 32}, "group_size is only used with granularity 'group'"),
        ({"weight": None}, "would do nothing"),
        ({"observer": "percentile"}, "only for activations 'static8'"),
        ({"weight": "quaternary"}, "weight 'quaternary' is not a weight quantizer kind; valid: binary, ternary, int, groupbits"),
        ({"activations": "dynamic4"}, "Input should be 'dynamic8' or 'static8'"),
        ({"targets": []}, "targets is empty"),
        ({"bitz": 4}, "Extra inputs are not permitted"),
    ],
)
def test_config_validation(kw, needle):
    with pytest.raises(pydantic.ValidationError) as e:
        make("quantize", **kw)
    assert needle in str(e.value)


def test_alias_rejects_other_weight_and_round_trips():
    with pytest.raises(pydantic.ValidationError):
        make("binary", weight="ternary")
    m = make("int8", granularity="tensor")
    dumped = m.model_dump(mode="json", exclude_none=True)
    assert dumped["type"] == "int8" and dumped["bits"] == 8
    assert make("int8", **{k: v for k, v in dumped.items() if k != "type"}) == m
    assert "int8 weights (symmetric per tensor)" in m.describe()


def test_hooks_out_of_order():
    m = make("ternary")
    with pytest.raises(RuntimeError, match="expected 'attached'"):
        m.finalize(TrainState(model=tiny()))


def test_later_stage_only_sets_its_own_slots():
    model = tiny()
    make("ternary", embeddings=False).attach(TrainState(model=model))
    layer = model.bert.encoder.layer[0].attention.self.key
    wq = layer.weight_quantizer
    make("quantize", weight=None, activations="static8").attach(TrainState(model=model))
    assert layer.weight_quantizer is wq and layer.input_quantizer.spec()["kind"] == "static_act"
    make("quantize", bits=8).attach(TrainState(model=model))  # weights re-quantized, activations kept
    assert layer.weight_quantizer.spec()["kind"] == "int" and layer.input_quantizer.spec()["kind"] == "static_act"


def test_embedding_group_size_checked_before_any_change():
    model = tiny()  # FFN output rows are 64 long (fine), word embedding rows 32 (not divisible by 64)
    with pytest.raises(UserError, match="embeddings: word embeddings: group_size=64 does not divide the row length 32"):
        make("quantize", bits=4, granularity="group", group_size=64, targets=[r"re:.*layer\.\d+\.output\.dense"],
             embeddings=True).attach(TrainState(model=model))
    assert not compressed_modules(model)


@pytest.mark.parametrize(("compile_", "steps", "expected"), [
    ("auto", 499, False), ("auto", 500, True), (True, 1, True), (False, 10**6, False)])
def test_compile_auto_turns_on_for_long_runs_only_and_never_for_embeddings(compile_, steps, expected):
    from compactbert.methods.quantize import COMPILE_MIN_STEPS

    assert COMPILE_MIN_STEPS == 500
    model = tiny()
    m = method_types()["ternary"](compile=compile_)
    m.attach(TrainState(model=model, total_steps=steps))
    layers = [mod for mod in model.modules() if isinstance(mod, CompressedLinear)]
    assert layers and all(lay.weight_quantizer.compiled is expected for lay in layers)
    assert all(lay.input_quantizer.compiled is expected for lay in layers)
    emb = model.get_input_embeddings()
    assert isinstance(emb, CompressedEmbedding) and emb.weight_quantizer.compiled is False
