"""Size accounting equals a hand count on a tiny BERT (hidden 32, 2 layers, FFN 64, vocab 100)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from compactbert.nn.quantizers import BinaryQuantizer, IntQuantizer, StaticActQuantizer, TernaryQuantizer
from compactbert.nn.surgery import compress_embeddings, compress_modules
from compactbert.size import format_size_table, size_report, tensor_plan

# Parameters of the tiny model, by hand:
#   embeddings: word 100x32 + position 64x32 + token type 2x32 + LayerNorm 2x32
#   per layer:  Q,K,V,O 4 x (32x32 + 32) + LN 64 + intermediate 64x32 + 64 + output 32x64 + 32 + LN 64
#   pooler 32x32 + 32, classifier 2x32 + 2
EMB = 100 * 32 + 64 * 32 + 2 * 32 + 64
LAYER = 4 * (32 * 32 + 32) + 64 + (64 * 32 + 64) + (32 * 64 + 32) + 64
PARAMS = EMB + 2 * LAYER + (32 * 32 + 32) + (2 * 32 + 2)


def tiny() -> nn.Module:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def entry(report: dict, name: str) -> dict:
    return next(t for t in report["tensors"] if t["name"] == name)


def test_plain_model_is_fp32_everywhere():
    model = tiny()
    assert sum(p.numel() for p in model.parameters()) == PARAMS == 23586
    r = size_report(model)
    assert r["dense_fp32_bytes"] == r["compressed_bytes"] == PARAMS * 4
    assert r["ratio"] == 1.0
    assert len(r["tensors"]) == len(list(model.parameters()))
    r16 = size_report(model, uncompressed_bits=16)
    assert r16["compressed_bytes"] == PARAMS * 2 and r16["ratio"] == 2.0


def test_xtc_style_ternary_plus_int8_embeddings_hand_count():
    model = tiny()
    for layer in compress_modules(model, "*encoder.layer.*").values():
        layer.weight_quantizer = TernaryQuantizer()
    compress_embeddings(model)["bert.embeddings.word_embeddings"].weight_quantizer = IntQuantizer(8, granularity="row")
    r = size_report(model)
    qkvo = 32 * 32 * 2 // 8 + 32 * 2  # 2-bit codes + one fp16 scale per row = 320
    ffn_in = 64 * 32 * 2 // 8 + 64 * 2  # 640
    ffn_out = 32 * 64 * 2 // 8 + 32 * 2  # 576
    word = 100 * 32 + 100 * 2  # int8 codes + per-row scales = 3400
    quantized_params = 8 * 32 * 32 + 2 * 64 * 32 + 2 * 32 * 64 + 100 * 32
    rest = (PARAMS - quantized_params) * 4  # everything else stays fp32
    expected = 8 * qkvo + 2 * ffn_in + 2 * ffn_out + word + rest
    assert (qkvo, ffn_in, ffn_out, word, rest) == (320, 640, 576, 3400, 16008)
    assert r["compressed_bytes"] == expected == 24400
    assert r["dense_fp32_bytes"] == PARAMS * 4 == 94344
    assert r["ratio"] == pytest.approx(94344 / 24400)
    q = entry(r, "bert.encoder.layer.0.attention.self.query.weight")
    assert q == {"name": "bert.encoder.layer.0.attention.self.query.weight", "shape": [32, 32], "params": 1024,
                 "bits": 2, "sparsity": 0.0, "encoding": "dense", "bytes": 320}
    assert entry(r, "bert.embeddings.word_embeddings.weight")["bytes"] == 3400
    assert entry(r, "bert.embeddings.position_embeddings.weight")["bytes"] == 64 * 32 * 4
    assert "total: 24,400 bytes packed" in format_size_table(r)


def _keep_exactly(shape: tuple[int, int], nnz: int, seed: int = 0) -> torch.Tensor:
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    mask[torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(seed))[:nnz]] = True
    return mask.reshape(shape)


def test_sparse_encodings_hand_count():
    model = tiny()
    layers = compress_modules(model, ["*layer.0.intermediate.dense", "*layer.1.output.dense",
                                      "*layer.0.attention.self.query", "*layer.0.attention.self.key"])
    # (a) unstructured 90%, fp32 values: bitmask 2048/8 + 205 x 4 bytes
    a = layers["bert.encoder.layer.0.intermediate.dense"]
    a.weight_mask = _keep_exactly((64, 32), 205)
    # (b) structured: 16 of 32 rows and 48 of 64 columns kept, ternary; bias zero at removed rows
    b = layers["bert.encoder.layer.1.output.dense"]
    rows = torch.zeros(32, dtype=torch.bool)
    rows[:16] = True
    cols = torch.ones(64, dtype=torch.bool)
    cols[::4] = False
    b.weight_mask = rows[:, None] & cols[None, :]
    b.weight_quantizer = TernaryQuantizer()
    with torch.no_grad():
        b.bias[16:] = 0.0
    # (c) binary cannot store zeros densely: 10% pruned -> bitmask
    c = layers["bert.encoder.layer.0.attention.self.query"]
    c.weight_mask = _keep_exactly((32, 32), 922)
    c.weight_quantizer = BinaryQuantizer()
    c.input_quantizer = StaticActQuantizer()  # + one fp16 range scale
    # (d) int8 with 10% pruned: dense is smaller than bitmask
    d = layers["bert.encoder.layer.0.attention.self.key"]
    d.weight_mask = _keep_exactly((32, 32), 922)
    d.weight_quantizer = IntQuantizer(8, granularity="row", learned_step=True)  # step = the scales, not extra
    r = size_report(model)

    ea = entry(r, "bert.encoder.layer.0.intermediate.dense.weight")
    assert (ea["encoding"], ea["bytes"], ea["bits"]) == ("bitmask", 2048 // 8 + 205 * 4, 32)
    assert ea["sparsity"] == pytest.approx(1 - 205 / 2048, abs=1e-6)
    eb = entry(r, "bert.encoder.layer.1.output.dense.weight")
    assert (eb["encoding"], eb["bytes"]) == ("rows", 16 * 48 * 2 // 8 + 32 // 8 + 64 // 8 + 16 * 2)  # 236
    assert entry(r, "bert.encoder.layer.1.output.dense.bias")["bytes"] == 16 * 4
    ec = entry(r, "bert.encoder.layer.0.attention.self.query.weight")
    assert (ec["encoding"], ec["bytes"]) == ("bitmask", 1024 // 8 + (922 + 7) // 8 + 32 * 2)  # 308, not 192
    assert entry(r, "bert.encoder.layer.0.attention.self.query.input_quantizer")["bytes"] == 2
    ed = entry(r, "bert.encoder.layer.0.attention.self.key.weight")
    assert (ed["encoding"], ed["bytes"]) == ("dense", 1024 + 32 * 2)
    assert not any("step" in t["name"] for t in r["tensors"])

    changed = {
        "bert.encoder.layer.0.intermediate.dense.weight": 2048,
        "bert.encoder.layer.1.output.dense.weight": 2048,
        "bert.encoder.layer.1.output.dense.bias": 32,
        "bert.encoder.layer.0.attention.self.query.weight": 1024,
        "bert.encoder.layer.0.attention.self.key.weight": 1024,
    }
    rest = (PARAMS - sum(changed.values())) * 4
    assert r["compressed_bytes"] == rest + ea["bytes"] + eb["bytes"] + 64 + ec["bytes"] + 2 + ed["bytes"]
    assert r["dense_fp32_bytes"] == PARAMS * 4


def test_bias_of_structured_rows_counts_fully_when_nonzero():
    model = tiny()
    layer = compress_modules(model, "*layer.0.intermediate.dense")["bert.encoder.layer.0.intermediate.dense"]
    mask = torch.zeros(64, 32, dtype=torch.bool)
    mask[:40] = True
    layer.weight_mask = mask
    with torch.no_grad():
        layer.bias.fill_(0.1)
    r = size_report(model)
    w = entry(r, "bert.encoder.layer.0.intermediate.dense.weight")
    assert (w["encoding"], w["bytes"]) == ("rows", 40 * 32 * 4 + 64 // 8 + 32 // 8)
    assert entry(r, "bert.encoder.layer.0.intermediate.dense.bias")["bytes"] == 64 * 4


def test_tensor_plan_group_scales_and_sub_byte_padding():
    w = torch.randn(3, 10)
    # 3 x 10 x 3 bits = 90 bits -> 12 bytes, + 3 x 2 groups x (scale + zero point) x 2 bytes
    plan = tensor_plan(w, None, IntQuantizer(3, False, "group", 5))
    assert (plan["encoding"], plan["bytes"]) == ("dense", 12 + 3 * 2 * 2 * 2)
    assert tensor_plan(w, torch.ones(3, 10), BinaryQuantizer())["encoding"] == "dense"  # all kept
