"""Surgery: matching by pattern, in-place swaps, compression specs, and save -> load with io."""

from __future__ import annotations

import json

import pytest
import torch
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
from compactbert.nn.compressed import CompressedEmbedding, CompressedLinear
from compactbert.nn.io import COMPRESSION_FILE, load_model, save_model
from compactbert.nn.quantizers import DynamicActQuantizer, IntQuantizer, StaticActQuantizer, TernaryQuantizer
from compactbert.nn.surgery import (
    apply_compression_spec,
    bake,
    compress_embeddings,
    compress_modules,
    compressed_modules,
    compression_spec,
    encoder_linear_patterns,
    match_modules,
)


def tiny(arch: str = "bert", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=100, max_position_embeddings=64, num_labels=2)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common)
        return BertForSequenceClassification(cfg).eval()
    if arch == "distilbert":
        cfg = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
        return DistilBertForSequenceClassification(cfg).eval()
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        pad_token_id=1, **common)
    return RobertaForSequenceClassification(cfg).eval()


IDS = torch.tensor([[5, 17, 42, 9, 3, 77], [8, 8, 60, 2, 1, 1]])


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=(IDS != 1).long()).logits


@pytest.mark.parametrize(
    "arch,pattern,example",
    [
        ("bert", "*encoder.layer.*", "bert.encoder.layer.1.output.dense"),
        ("distilbert", "*transformer.layer.*", "distilbert.transformer.layer.1.ffn.lin2"),
        ("roberta", "*encoder.layer.*", "roberta.encoder.layer.0.attention.self.value"),
    ],
)
def test_encoder_linear_patterns_hit_the_six_matrices_per_layer(arch, pattern, example):
    model = tiny(arch)
    pats = encoder_linear_patterns(model)
    assert pats == [pattern]
    found = match_modules(model, pats)
    assert len(found) == 12 and example in found
    assert not any("pooler" in n or "classifier" in n for n in found)


def test_glob_and_regex_patterns():
    model = tiny()
    q = match_modules(model, "*.attention.self.query")
    assert list(q) == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query"]
    r = match_modules(model, ["re:.*layer\\.1\\.(intermediate|output)\\.dense"])
    assert list(r) == ["bert.encoder.layer.1.intermediate.dense", "bert.encoder.layer.1.output.dense"]
    # a regex must match the whole name
    with pytest.raises(UserError):
        match_modules(model, "re:query")
    emb = match_modules(model, "*embeddings*", kinds=(nn.Embedding,))
    assert len(emb) == 3


def test_pattern_matching_nothing_repeats_it_and_lists_names():
    model = tiny()
    with pytest.raises(UserError) as e:
        match_modules(model, ["*encoder.layer.*", "*attention.slef.query"], where="stages.0.methods.0.targets: ")
    msg = str(e.value)
    assert msg.startswith("stages.0.methods.0.targets: target pattern '*attention.slef.query' matches no Linear")
    assert "bert.encoder.layer.0.attention.self.query" in msg and "(14 in all)" in msg


def test_bad_regex_and_empty_patterns():
    model = tiny()
    with pytest.raises(UserError, match=r"'re:\(unclosed' is not a valid regular expression"):
        match_modules(model, "re:(unclosed")
    with pytest.raises(UserError, match="no target patterns"):
        match_modules(model, [])


def test_no_encoder_layers_is_a_user_error():
    with pytest.raises(UserError, match="cannot find encoder layers in Sequential"):
        encoder_linear_patterns(nn.Sequential(nn.Linear(4, 4)))


def test_compress_modules_in_place_idempotent_and_logits_unchanged():
    model = tiny()
    before = logits(model)
    first = compress_modules(model, encoder_linear_patterns(model))
    assert len(first) == 12
    assert model.bert.encoder.layer[0].attention.self.query is first["bert.encoder.layer.0.attention.self.query"]
    assert type(model.bert.pooler.dense) is nn.Linear and type(model.classifier) is nn.Linear
    assert torch.equal(logits(model), before)
    second = compress_modules(model, encoder_linear_patterns(model))
    assert all(second[n] is first[n] for n in first)
    assert len(compressed_modules(model)) == 12


def test_compress_embeddings_word_only():
    model = tiny()
    before = logits(model)
    embs = compress_embeddings(model)
    assert list(embs) == ["bert.embeddings.word_embeddings"]
    assert model.get_input_embeddings() is embs["bert.embeddings.word_embeddings"]
    assert type(model.bert.embeddings.position_embeddings) is nn.Embedding
    assert torch.equal(logits(model), before)
    embs["bert.embeddings.word_embeddings"].weight_quantizer = IntQuantizer(8)
    assert not torch.equal(logits(model), before)


def _compress_everything(model: nn.Module) -> None:
    layers = compress_modules(model, encoder_linear_patterns(model))
    g = torch.Generator().manual_seed(7)
    for i, layer in enumerate(layers.values()):
        layer.weight_mask = torch.rand(layer.weight.shape, generator=g) > 0.4
        layer.weight_quantizer = TernaryQuantizer() if i % 2 else IntQuantizer(4, False, "group", 16, True)
        layer.input_quantizer = DynamicActQuantizer()
    for emb in compress_embeddings(model).values():
        emb.weight_quantizer = IntQuantizer(4, learned_step=True)
        with torch.no_grad():
            emb.weight_quantizer.step.mul_(0.9)  # a learned value that must come back


def test_compression_spec_rebuilds_structure_and_state():
    model = tiny()
    _compress_everything(model)
    spec = json.loads(json.dumps(compression_spec(model)))
    entry = spec["modules"]["bert.encoder.layer.0.attention.self.query"]
    assert entry == {
        "kind": "linear",
        "weight_quantizer": {"kind": "int", "bits": 4, "symmetric": False, "granularity": "group",
                             "group_size": 16, "learned_step": True},
        "input_quantizer": {"kind": "dynamic_act", "bits": 8},
        "has_mask": True,
        "mask_dtype": "bool",
    }
    fresh = tiny(seed=1)
    apply_compression_spec(fresh, spec)
    fresh.load_state_dict(model.state_dict())  # strict
    assert torch.equal(logits(fresh), logits(model))


def test_apply_spec_with_unknown_module():
    spec = {"version": 1, "modules": {"bert.encoder.layer.7.output.dense": {"kind": "linear"}}}
    with pytest.raises(UserError, match="'bert.encoder.layer.7.output.dense' does not exist"):
        apply_compression_spec(tiny(), spec)
    with pytest.raises(UserError, match="not a compression spec"):
        apply_compression_spec(tiny(), {"modules": {}})


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_save_load_logits_identical(tmp_path, arch):
    model = tiny(arch)
    _compress_everything(model)
    expected = logits(model)
    save_model(model, None, tmp_path / "m")
    assert (tmp_path / "m" / COMPRESSION_FILE).is_file()
    assert not list((tmp_path / "m").glob("*.bin"))  # safetensors only
    loaded, tok = load_model(tmp_path / "m")
    assert tok is None
    assert torch.equal(logits(loaded), expected)
    n = "encoder.layer.0.attention.self.query" if arch != "distilbert" else "transformer.layer.0.attention.q_lin"
    layer = loaded.get_submodule(f"{arch}.{n}")
    orig = model.get_submodule(f"{arch}.{n}")
    assert torch.equal(layer.weight_mask, orig.weight_mask)
    assert torch.equal(layer.weight_quantizer.step, orig.weight_quantizer.step)
    assert isinstance(loaded.get_input_embeddings(), CompressedEmbedding)


def test_save_load_static_ranges_and_plain_model(tmp_path):
    model = tiny()
    layers = compress_modules(model, "*intermediate.dense")
    for layer in layers.values():
        layer.input_quantizer = StaticActQuantizer()
        layer.input_quantizer.start_calibration()
    logits(model)
    for layer in layers.values():
        layer.input_quantizer.freeze()
    expected = logits(model)
    save_model(model, None, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    assert torch.equal(logits(loaded), expected)
    # a plain model has no compression.json and a stale one is removed
    save_model(tiny(), None, tmp_path / "m")
    assert not (tmp_path / "m" / COMPRESSION_FILE).exists()
    plain, _ = load_model(tmp_path / "m")
    assert not compressed_modules(plain) and torch.equal(logits(plain), logits(tiny()))


def test_load_model_missing_config(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        load_model(tmp_path)


def test_bake_replaces_with_plain_layers_same_logits():
    model = tiny()
    layers = compress_modules(model, encoder_linear_patterns(model))
    for layer in layers.values():
        layer.weight_quantizer = TernaryQuantizer()
        layer.weight_mask = torch.rand(layer.weight.shape) > 0.5
    expected = logits(model)
    baked = bake(model)
    assert len(baked) == 12 and not compressed_modules(model)
    assert all(type(m) is nn.Linear for m in baked.values())
    assert torch.allclose(logits(model), expected, atol=1e-6, rtol=0)
    assert not isinstance(model.bert.encoder.layer[0].output.dense, CompressedLinear)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "missing.safetensors", None])
def test_a_sharded_index_cannot_point_outside_the_model_folder(tmp_path, shard):
    model = tiny("bert")
    _compress_everything(model)
    save_model(model, None, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.rename(tmp_path / "outside.safetensors")  # a real safetensors file, outside the folder
    index = tmp_path / "m" / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": shard}} if shard else {"weights": []}))
    with pytest.raises(UserError, match="index") as e:
        load_model(tmp_path / "m")
    assert "\n" not in str(e.value)
