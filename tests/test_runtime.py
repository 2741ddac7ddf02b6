"""Packed export -> runtime load: logits equal to the training-time model, physical removal, sizes,
vocabulary pruning and integrity checks. Tiny random models (hidden 32, 2 layers), no downloads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from compactbert.errors import UserError
from compactbert.export.bits import packed_nbytes
from compactbert.export.pack import export_packed, read_packed, verify_packed
from compactbert.nn.quantizers import (
    BinaryQuantizer,
    DynamicActQuantizer,
    IntQuantizer,
    StaticActQuantizer,
    TernaryQuantizer,
    calibration,
)
from compactbert.nn.surgery import compress_embeddings, compress_modules, encoder_linear_patterns
from compactbert.runtime import load
from compactbert.size import size_report

HEAD_DIM = 8  # hidden 32, 4 heads


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, num_labels=3)
        model = BertForSequenceClassification(cfg)
    elif arch == "roberta":
        cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=66, pad_token_id=1, num_labels=3)
        model = RobertaForSequenceClassification(cfg)
    elif arch == "electra":  # embeddings of width 16 projected to 32; gelu head
        cfg = ElectraConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, num_labels=3)
        model = ElectraForSequenceClassification(cfg)
    else:
        cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                               max_position_embeddings=64, num_labels=3)
        model = DistilBertForSequenceClassification(cfg)
    with torch.no_grad():  # HF initialises biases and LayerNorms to 0/1: make them matter
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def layer_linears(model, i: int) -> dict[str, torch.nn.Module]:
    """q, k, v, o, up, down of layer i (after compress_modules they are CompressedLinear)."""
    base = model.base_model
    if hasattr(base, "transformer"):
        lay = base.transformer.layer[i]
        a = lay.attention
        return {"q": a.q_lin, "k": a.k_lin, "v": a.v_lin, "o": a.out_lin, "up": lay.ffn.lin1, "down": lay.ffn.lin2}
    lay = base.encoder.layer[i]
    s = lay.attention.self
    return {"q": s.query, "k": s.key, "v": s.value, "o": lay.attention.output.dense,
            "up": lay.intermediate.dense, "down": lay.output.dense}


def compressed(arch: str, act_quant: bool = True):
    """A model with every compression at once: several quantizers, a head pruned through its V rows
    (bias folded), a head pruned through its O columns, FFN neurons pruned through W1 rows (folded)
    and W2 columns, structured row masks (quantized and float), an unstructured mask, and a ternary
    word embedding."""
    model = tiny(arch)
    layers = compress_modules(model, encoder_linear_patterns(model))
    quantizers = [BinaryQuantizer, TernaryQuantizer, lambda: IntQuantizer(4, granularity="group", group_size=16),
                  lambda: IntQuantizer(8, symmetric=False), lambda: IntQuantizer(2, granularity="tensor"),
                  lambda: IntQuantizer(3, symmetric=False, granularity="group", group_size=8)]
    for j, layer in enumerate(layers.values()):
        layer.weight_quantizer = quantizers[j % len(quantizers)]()
    l0, l1 = layer_linears(model, 0), layer_linears(model, 1)
    m = torch.ones_like(l0["v"].weight)
    m[HEAD_DIM : 2 * HEAD_DIM] = 0  # layer 0, head 1: V rows
    l0["v"].weight_mask = m
    m = torch.ones_like(l1["o"].weight)
    m[:, 3 * HEAD_DIM :] = 0  # layer 1, head 3: O columns
    l1["o"].weight_mask = m
    m = torch.ones_like(l0["up"].weight)
    m[5:12] = 0  # 7 neurons through W1 rows (their constant gelu(b1) is folded)
    l0["up"].weight_mask = m
    m = torch.ones_like(l1["down"].weight)
    m[:, 40:44] = 0  # 4 neurons through W2 columns
    l1["down"].weight_mask = m
    m = torch.ones_like(l0["down"].weight)
    m[0:3] = 0  # whole output rows of a group-quantized matrix: stored as kept block + bitmaps
    l0["down"].weight_mask = m
    l1["k"].weight_quantizer = None
    m = torch.ones_like(l1["k"].weight)
    m[0:4] = 0  # rows of a float matrix (half a head's keys: the head stays)
    l1["k"].weight_mask = m
    g = torch.Generator().manual_seed(3)
    l1["q"].weight_quantizer = None
    l1["q"].weight_mask = torch.rand(l1["q"].weight.shape, generator=g) > 0.8  # 80% unstructured, fp values
    if act_quant:  # inputs that physical removal does not touch
        for lay in (l0, l1):
            for n in ("q", "k", "v", "up"):
                lay[n].input_quantizer = DynamicActQuantizer(8)
    emb = compress_embeddings(model)
    next(iter(emb.values())).weight_quantizer = TernaryQuantizer()
    return model.eval()


def batch(arch: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (5, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    mask[3, 4:] = 0
    if arch == "roberta":
        ids[mask == 0] = 1  # RoBERTa positions come from the pad id
    tt = torch.zeros_like(ids)
    if arch in ("bert", "electra"):
        tt[:, 9:] = 1
    return ids, mask, tt


def hf_logits(model, arch, ids, mask, tt):
    kw = {"token_type_ids": tt} if arch in ("bert", "electra") else {}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kw).logits


def run(pm, arch, ids, mask, tt):
    return pm(ids, mask, tt if arch in ("bert", "electra") else None)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra"])
def test_compressed_model_round_trip_is_exact_in_fp32(tmp_path, arch):
    model = compressed(arch)
    ids, mask, tt = batch(arch)
    ref = hf_logits(model, arch, ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, dtype="fp32")
    assert pm.config["heads_per_layer"] == [3, 3]
    width0, width1 = pm.config["ffn_per_layer"]
    assert width0 <= 64 - 7 and width1 <= 64 - 4  # at least the pruned neurons are gone
    out = run(pm, arch, ids, mask, tt)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_bf16_runtime_agrees_with_training_model(tmp_path, arch):
    """bf16 rounding only: every prediction, logits within 3% of their spread over the batch (bf16
    gives ~1.7%), and the last layer's states of every real token within 0.008 on average (bf16
    gives ~0.0044; the QKV product without its bias gives ~0.012). Rows padded to 3..12 tokens."""
    model = compressed(arch, act_quant=False)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 100, (64, 12), generator=g)
    mask = (torch.arange(12)[None, :] < torch.randint(3, 13, (64, 1), generator=g)).long()
    if arch == "roberta":
        ids[mask == 0] = 1
    ref = hf_logits(model, arch, ids, mask, torch.zeros_like(ids))
    with torch.no_grad():
        kw = {"token_type_ids": torch.zeros_like(ids)} if arch == "bert" else {}
        states = model.base_model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state
    export_packed(model, None, tmp_path)  # fp16 storage of the uncompressed tensors
    pm = load(tmp_path, dtype="bf16")
    out = pm(ids, mask)
    assert out.dtype == torch.float32 and out.shape == (64, 3)
    spread = float((ref - ref.mean(0)).abs().max())
    assert float((out - ref).abs().max()) < 0.03 * spread
    assert torch.equal(out.argmax(-1), ref.argmax(-1))
    with torch.inference_mode():
        got = pm.encoder.token_states(ids, mask)
    assert float((got - states)[mask.bool()].abs().mean()) < 0.008


def test_trailing_padding_is_skipped_exactly(tmp_path):
    model = compressed("roberta")
    ids, mask, _ = batch("roberta")
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, dtype="fp32")
    padded_ids = torch.cat([ids, torch.ones(5, 11, dtype=torch.long)], dim=1)  # 1 = RoBERTa's pad id
    padded_mask = torch.cat([mask, torch.zeros(5, 11, dtype=torch.long)], dim=1)
    ref = hf_logits(model, "roberta", padded_ids, padded_mask, None)
    torch.testing.assert_close(pm(padded_ids, padded_mask), ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(pm(ids, mask), ref, atol=2e-5, rtol=0)
    assert "2 layers, heads 3, ffn [" in pm.describe()


@pytest.mark.parametrize("arch,rows", [("bert", 20), ("roberta", 22)])  # RoBERTa positions start after pad id 1
def test_max_positions_keeps_only_the_first_position_rows(tmp_path, arch, rows):
    model = tiny(arch)
    ids, mask, tt = batch(arch)
    ref = hf_logits(model, arch, ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32", max_positions=20)
    assert read_packed(tmp_path).tensors["emb.position.weight"].shape == (rows, 32)
    pm = load(tmp_path, dtype="fp32")
    torch.testing.assert_close(run(pm, arch, ids, mask, tt), ref, atol=2e-5, rtol=0)
    with pytest.raises(UserError, match="exceeds the model's 20 positions"):
        pm(torch.full((1, 21), 7))
    with pytest.raises(UserError, match="max_positions"):
        export_packed(model, None, tmp_path / "x", max_positions=0)


def test_removed_structures_are_physically_smaller(tmp_path):
    model = compressed("bert")
    manifest = export_packed(model, None, tmp_path, float_dtype="float32")
    packed = read_packed(tmp_path)
    t = packed.tensors
    assert t["layer.0.attn.q.weight"].shape == (3 * HEAD_DIM, 32)
    assert t["layer.0.attn.v.weight"].shape == (3 * HEAD_DIM, 32)
    assert t["layer.0.attn.o.weight"].shape == (32, 3 * HEAD_DIM)
    assert t["layer.1.attn.o.weight"].shape == (32, 3 * HEAD_DIM)
    assert t["layer.0.attn.q.bias"].shape == (3 * HEAD_DIM,)
    assert t["layer.0.ffn.up.weight"].shape[0] == t["layer.0.ffn.down.weight"].shape[1] == packed.config["ffn_per_layer"][0]
    assert packed.config["removed"]["heads"] == 2
    assert manifest["tensors"]["layer.0.ffn.down.weight"]["encoding"] == "rows"
    assert manifest["tensors"]["layer.0.ffn.down.weight"]["quant"]["scale_layout"] == "group"
    assert manifest["tensors"]["layer.1.attn.k.weight"]["encoding"] == "rows"
    # the unstructured 80% mask on fp32 values is stored as a bitmask + the kept values
    e = manifest["tensors"]["layer.1.attn.q.weight"]
    assert e["encoding"] == "bitmask"
    nnz = int((model.bert.encoder.layer[1].attention.self.query.weight_mask != 0)[: 3 * HEAD_DIM].sum())
    assert e["bytes"] == math.ceil(3 * HEAD_DIM * 32 / 8) + 4 * nnz


def test_decoded_weights_are_bitwise_the_training_weights(tmp_path):
    model = compressed("bert")
    export_packed(model, None, tmp_path)
    t = read_packed(tmp_path).tensors
    l0 = layer_linears(model, 0)
    for name in ("k", "o"):  # untouched by removal except dropped head columns/rows
        ref = l0[name].effective_weight().detach()
        got = t[f"layer.0.attn.{name}.weight"]
        keep = torch.ones(4, dtype=torch.bool)
        keep[1] = False
        sel = keep.repeat_interleave(HEAD_DIM)
        ref = ref[sel] if name == "k" else ref[:, sel]
        assert torch.equal(got, ref)
    emb = model.bert.embeddings.word_embeddings
    assert torch.equal(t["emb.word.weight"], emb.effective_weight().detach())


def test_payload_matches_size_accounting_without_structured_pruning(tmp_path):
    model = tiny("bert")
    layers = compress_modules(model, encoder_linear_patterns(model))
    for j, layer in enumerate(layers.values()):
        layer.weight_quantizer = [BinaryQuantizer(), TernaryQuantizer(), IntQuantizer(4),
                                  IntQuantizer(8, symmetric=False, granularity="group", group_size=8)][j % 4]
    compress_embeddings(model)["bert.embeddings.word_embeddings"].weight_quantizer = BinaryQuantizer()
    manifest = export_packed(model, None, tmp_path)
    assert manifest["payload_bytes"] == size_report(model, uncompressed_bits=16)["compressed_bytes"]
    e = manifest["tensors"]["layer.0.attn.q.weight"]  # binary 32x32: 1 bit per weight + 32 fp16 scales
    assert (e["encoding"], e["bits"], e["bytes"]) == ("dense", 1, packed_nbytes(32 * 32, 1) + 2 * 32)
    on_disk = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert manifest["total_bytes"] == on_disk


def test_static_activation_quantizer_is_exact(tmp_path):
    model = tiny("bert")
    layers = compress_modules(model, encoder_linear_patterns(model))
    for layer in layers.values():
        layer.weight_quantizer = IntQuantizer(8)
        layer.input_quantizer = StaticActQuantizer(4, symmetric=False)
    ids, mask, tt = batch("bert")
    with calibration(model):
        hf_logits(model, "bert", ids, mask, tt)
    ref = hf_logits(model, "bert", ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, dtype="fp32")
    assert pm.act_quant
    torch.testing.assert_close(pm(ids, mask, tt), ref, atol=2e-5, rtol=0)
    # without emulation the logits move (so the emulation is what makes them exact)
    off = load(tmp_path, dtype="fp32", act_quant="off")(ids, mask, tt)
    assert float((off - ref).abs().max()) > 20 * float((pm(ids, mask, tt) - ref).abs().max()) + 1e-5


def _clipped_inputs(model) -> tuple[list, dict[str, int]]:
    """Hooks counting inputs of the static quantizers that fall outside their calibrated range."""
    counts: dict[str, int] = {}
    hooks = []
    for name, q in model.named_modules():
        if isinstance(q, StaticActQuantizer):
            def hook(mod, args, name=name):
                p = mod.packed_params()  # the calibrated range: scale (and zero point)
                v = args[0].float() / p["scale"] + p.get("zero_point", 0)
                counts[name] = counts.get(name, 0) + int(((v < mod.qmin - 0.5) | (v > mod.qmax + 0.5)).sum())
            hooks.append(q.register_forward_pre_hook(hook))
    return hooks, counts


@pytest.mark.parametrize(("bits", "symmetric"), [(8, True), (4, False)])
def test_static_activation_ranges_hold_on_other_data(tmp_path, bits, symmetric):
    """Calibrated on one batch, evaluated on another whose activations leave the calibrated range:
    the runtime clamps them exactly as the training-time model does (int8 products where oneDNN's
    are exact, float32 emulation elsewhere)."""
    model = a8_model("distilbert", static=True)
    for m in model.modules():
        if getattr(m, "input_quantizer", None) is not None:
            m.input_quantizer = StaticActQuantizer(bits, symmetric=symmetric)
    ids, mask, tt = batch("distilbert", seed=1)
    with calibration(model):
        hf_logits(model, "distilbert", ids[:2, :6], mask[:2, :6], None)  # a small calibration batch
    export_packed(model, None, tmp_path, float_dtype="float32")
    other, omask, _ = batch("distilbert", seed=2)
    hooks, clipped = _clipped_inputs(model)
    ref = hf_logits(model, "distilbert", other, omask, None)
    for h in hooks:
        h.remove()
    assert sum(clipped.values()) > 100 and len([c for c in clipped.values() if c]) >= 4  # out of range, widely
    for kw in ({}, {"dtype": "fp32"}):  # default (int8 products where exact) and the float32 emulation
        torch.testing.assert_close(load(tmp_path, **kw)(other, omask), ref, atol=2e-5, rtol=0)


def test_static_int8_codes_saturate_like_the_training_quantizer():
    """What the runtime's int8 products consume: codes clamped to +-qmax (200 steps is 127, not -56)."""
    q = StaticActQuantizer(8)
    with calibration(q):
        q(torch.tensor([-1.0, 1.0]))
    scale = q.packed_params()["scale"].reshape(())
    x = torch.tensor([[-500.0, -200.0, -1.0, -0.3, 0.0, 0.3, 1.0, 200.0, 500.0]]) * scale
    codes, s = q.int8_codes(x)
    assert codes.dtype == torch.int8 and torch.equal(s, scale)
    assert codes.tolist() == [[-127, -127, -1, 0, 0, 0, 1, 127, 127]]
    assert torch.equal(codes.float() * scale, q(x))  # the training-time fake quantization, clamped too
    assert torch.equal(q(x)[0, -2:], torch.full((2,), 127.0) * scale)


def test_layer_without_heads_or_neurons(tmp_path):
    model = tiny("bert")
    layers = compress_modules(model, encoder_linear_patterns(model))
    l1 = layer_linears(model, 1)
    l1["v"].weight_mask = torch.zeros_like(l1["v"].weight)
    l1["up"].weight_mask = torch.zeros_like(l1["up"].weight)
    ids, mask, tt = batch("bert")
    ref = hf_logits(model, "bert", ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, dtype="fp32")
    assert pm.config["heads_per_layer"] == [4, 0] and pm.config["ffn_per_layer"] == [64, 0]
    assert len(layers) == 12
    torch.testing.assert_close(pm(ids, mask, tt), ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(load(tmp_path, dtype="bf16")(ids, mask, tt), ref, atol=0.05, rtol=0.05)


def test_plain_model_exports_in_fp16_and_fp32(tmp_path):
    model = tiny("distilbert")
    ids, mask, tt = batch("distilbert")
    ref = hf_logits(model, "distilbert", ids, mask, tt)
    m16 = export_packed(model, None, tmp_path / "fp16")
    m32 = export_packed(model, None, tmp_path / "fp32", float_dtype="float32")
    assert m32["payload_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    assert m16["payload_bytes"] == m32["payload_bytes"] // 2
    torch.testing.assert_close(load(tmp_path / "fp32", dtype="fp32")(ids, mask), ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(load(tmp_path / "fp16", dtype="fp32")(ids, mask), ref, atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------- tokenizer, vocabulary
WORDS = ["the", "a", "film", "good", "bad", "movie", "plot", "actor", "great", "boring", "fun", "story", "##s", "##ing"]


def tiny_tokenizer(tmp_path: Path) -> BertTokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(100 - 5 - len(WORDS))]
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizer.from_pretrained(str(folder), do_lower_case=True)


def bert_with_vocab():
    model = tiny("bert")
    model.config.pad_token_id = 0
    return model


def test_tokenizer_is_stored_and_reloaded(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    model = bert_with_vocab()
    manifest = export_packed(model, tok, tmp_path / "p", float_dtype="float32")
    assert any(name.startswith("tokenizer/") and name.endswith(".xz") for name in manifest["files"])
    pm = load(tmp_path / "p", dtype="fp32")
    texts = ["a good film", "the plot was boring stories"]
    assert pm.tokenizer(texts)["input_ids"] == tok(texts)["input_ids"]
    enc = tok(texts, padding=True, return_tensors="pt")
    ref = hf_logits(model, "bert", enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    torch.testing.assert_close(pm.predict(texts), ref, atol=2e-5, rtol=0)


def test_vocabulary_pruning_keeps_seen_tokens_and_maps_others_to_unk(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    model = bert_with_vocab()
    compress_embeddings(model)["bert.embeddings.word_embeddings"].weight_quantizer = BinaryQuantizer()
    seen = ["a good film", ("the plot", "great fun")]
    export_packed(model, tok, tmp_path / "p", prune_vocab_texts=seen, float_dtype="float32")
    pm = load(tmp_path / "p", dtype="fp32")
    kept = 5 + len({"a", "good", "film", "the", "plot", "great", "fun"})  # + all special tokens
    assert pm.config["vocab"]["kept"] == kept
    assert read_packed(tmp_path / "p").tensors["emb.word.weight"].shape == (kept, 32)
    enc = tok(["good film", "great plot"], return_tensors="pt")
    ref = hf_logits(model, "bert", enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    torch.testing.assert_close(pm(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), ref, atol=2e-5, rtol=0)
    # "boring" was never seen: it reads as [UNK]
    enc = tok(["boring film"], return_tensors="pt")
    unk = enc["input_ids"].clone()
    unk[0, 1] = tok.unk_token_id
    ref = hf_logits(model, "bert", unk, enc["attention_mask"], enc["token_type_ids"])
    torch.testing.assert_close(pm(enc["input_ids"], enc["attention_mask"]), ref, atol=2e-5, rtol=0)


def test_vocabulary_pruning_can_map_unseen_tokens_to_the_nearest_kept_one(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    model = bert_with_vocab()
    emb = model.bert.embeddings.word_embeddings.weight
    bad, boring = tok.convert_tokens_to_ids(["bad", "boring"])
    with torch.no_grad():
        emb[boring] = 2.0 * emb[bad]  # same direction: "bad" is the nearest kept token to "boring"
    manifest = export_packed(model, tok, tmp_path / "p", prune_vocab_texts=["a bad film", "good fun"],
                             float_dtype="float32", unseen_tokens="nearest")
    assert manifest["tensors"]["emb.word.weight"]["shape"] == [5 + 5, 32]
    pm = load(tmp_path / "p", dtype="fp32")
    as_bad = tok(["a bad film"], return_tensors="pt")
    as_boring = tok(["a boring film"], return_tensors="pt")
    ref = hf_logits(model, "bert", as_bad["input_ids"], as_bad["attention_mask"], as_bad["token_type_ids"])
    torch.testing.assert_close(pm(as_boring["input_ids"]), ref, atol=2e-5, rtol=0)
    with pytest.raises(UserError, match="unseen_tokens"):
        export_packed(model, tok, tmp_path / "q", prune_vocab_texts=["a"], unseen_tokens="closest")


# ----------------------------------------------------------------------------- integrity
@pytest.fixture()
def packed_dir(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    export_packed(compressed("bert"), tok, tmp_path / "p")
    return tmp_path / "p"


def test_every_file_is_json_safetensors_or_xz(packed_dir):
    files = sorted(p.relative_to(packed_dir).as_posix() for p in packed_dir.rglob("*") if p.is_file())
    assert "manifest.json" in files and "model.safetensors" in files and "config.json" in files
    assert all(f.endswith((".json", ".safetensors", ".xz")) for f in files)
    manifest = verify_packed(packed_dir)
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    assert manifest["format_version"] == 2  # version 2: per-row bit widths (version 1 is still read)


def test_tampered_file_is_rejected(packed_dir):
    f = packed_dir / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model\.safetensors.*sha256"):
        load(packed_dir)


def test_truncated_file_is_rejected(packed_dir):
    f = packed_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"model\.safetensors.*truncated"):
        load(packed_dir)


@pytest.mark.parametrize("victim", ["config.json", "model.safetensors"])
def test_missing_file_is_rejected(packed_dir, victim):
    (packed_dir / victim).unlink()
    with pytest.raises(UserError, match=f"{victim}.*missing"):
        load(packed_dir)


def test_tampered_tokenizer_is_rejected(packed_dir):
    f = next((packed_dir / "tokenizer").glob("*.xz"))
    f.write_bytes(f.read_bytes() + b"x")
    with pytest.raises(UserError, match="tokenizer/"):
        load(packed_dir)


def test_unknown_format_version_is_rejected(packed_dir):
    m = json.loads((packed_dir / "manifest.json").read_text())
    m["format_version"] = 99
    (packed_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="format_version 99.*version 1"):
        load(packed_dir)


def test_missing_or_broken_manifest_is_rejected(packed_dir, tmp_path):
    (packed_dir / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load(packed_dir)
    (packed_dir / "manifest.json").unlink()
    with pytest.raises(UserError, match="no manifest.json"):
        load(packed_dir)
    with pytest.raises(UserError, match="not a directory"):
        load(tmp_path / "nowhere")


def test_manifest_edited_to_wrong_shape_is_rejected(packed_dir):
    m = json.loads((packed_dir / "manifest.json").read_text())
    m["tensors"]["layer.0.attn.k.weight"]["shape"] = [64, 32]
    (packed_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"has shape \[64, 32\]; config.json implies \[24, 32\]"):
        load(packed_dir)


def test_bad_inputs_give_user_errors(packed_dir):
    pm = load(packed_dir)
    with pytest.raises(UserError, match="valid ids: 0..99"):
        pm(torch.tensor([[2, 100, 3]]))
    with pytest.raises(UserError, match="exceeds the model's 64 positions"):
        pm(torch.full((1, 65), 7))
    with pytest.raises(UserError, match="attention_mask has shape"):
        pm(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(UserError, match="dtype"):
        load(packed_dir, dtype="int3")
    assert pm(torch.tensor([[2, 7, 3]])).shape == (1, 3)  # 1-D/2-D lists and tensors are accepted


def a8_model(arch: str, static: bool = False):
    """Every encoder Linear with per-row weights (int8 / ternary / binary) and 8-bit activations."""
    model = tiny(arch)
    layers = compress_modules(model, encoder_linear_patterns(model))
    kinds = [lambda: IntQuantizer(8), TernaryQuantizer, BinaryQuantizer]
    for j, layer in enumerate(layers.values()):
        layer.weight_quantizer = kinds[(j // 6) % 3]()  # one kind per layer: Q/K/V fuse
        layer.input_quantizer = StaticActQuantizer(8) if static else DynamicActQuantizer(8)
    next(iter(compress_embeddings(model).values())).weight_quantizer = IntQuantizer(8)
    return model.eval()


@pytest.mark.parametrize(("arch", "static"), [("bert", False), ("roberta", False), ("distilbert", True)])
def test_a8_models_run_exact_int8_products_by_default(tmp_path, arch, static):
    from compactbert.runtime.kernels import Int8Linear, onednn_int8_max_level

    model = a8_model(arch, static)
    ids, mask, tt = batch(arch)
    if static:
        with calibration(model):
            hf_logits(model, arch, ids, mask, tt)
    ref = hf_logits(model, arch, ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path)  # auto: the activation quantizers run, as int8 products
    int8 = [m for m in pm.encoder.modules() if isinstance(m, Int8Linear)]
    # layer j uses kind (j // 6) % 3: layer 0 int8 levels (+-127), layer 1 ternary (+-1). VNNI / AMX
    # multiply both exactly; AVX2 only levels within +-64 (int16 pair sums): the ternary layer only.
    limit = onednn_int8_max_level()
    expected = {127: 2 * 4, 64: 4, 0: 0}[limit]  # fused QKV, O, up, down per layer
    assert pm.dtype == "fp32" and len(int8) == expected
    assert all(int(m.levels_max) <= limit for m in int8)
    assert ("int8 qlinear" in pm.describe()) == (expected > 0)
    out = run(pm, arch, ids, mask, tt)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    fast = run(load(tmp_path, act_quant="off"), arch, ids, mask, tt)  # bf16, activations unquantized
    assert float((fast - ref).abs().max()) > 20 * float((out - ref).abs().max())


def test_rounding_floats_to_fp16_makes_the_default_fp16_export_exact(tmp_path):
    from compactbert.export.pack import round_floats_to_fp16

    model = a8_model("bert")
    ids, mask, tt = batch("bert")
    latent = {n: p.detach().clone() for n, p in model.named_parameters()
              if "encoder.layer" in n and n.endswith(("query.weight", "dense.weight")) and "LayerNorm" not in n}
    assert len(latent) == 2 * 4
    unrounded = hf_logits(model, "bert", ids, mask, tt)
    export_packed(model, None, tmp_path / "before")
    before = run(load(tmp_path / "before"), "bert", ids, mask, tt)
    assert round_floats_to_fp16(model) > 10  # LayerNorms, biases, position and type embeddings, head
    assert all(torch.equal(p, latent[n]) for n, p in model.named_parameters() if n in latent)  # codes kept
    ln = model.bert.encoder.layer[0].output.LayerNorm.weight
    assert torch.equal(ln, ln.half().float())
    ref = hf_logits(model, "bert", ids, mask, tt)
    export_packed(model, None, tmp_path / "after")  # fp16 storage now loses nothing
    after = run(load(tmp_path / "after"), "bert", ids, mask, tt)
    torch.testing.assert_close(after, ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)  # the export stored fp16 values anyway
    assert not torch.equal(unrounded, ref)  # what changed is the evaluated model: now what is shipped


def exact_int8_product(limit: int, seed: int) -> bool:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (16, 256), dtype=torch.int8, generator=g)
    wt = torch.randint(-limit, limit + 1, (32, 256), dtype=torch.int8, generator=g)
    x[3], wt[5] = 127, limit  # the worst case of int16 pair sums
    try:
        w = torch.ops.onednn.qlinear_prepack(wt, None)
        y = torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, w, torch.ones(32), torch.zeros(32, dtype=torch.int64),
                                               None, 1.0, 0, torch.float32, "none", [], "")
        return bool(torch.equal(y, x.double().matmul(wt.double().T).float()))
    except (RuntimeError, AttributeError):
        return False


def test_int8_probe_accepts_only_exact_products():
    """The runtime uses oneDNN's int8 product only for weights it multiplies exactly in int32: every
    int8 weight on VNNI / AMX; on AVX2 (int16 pair sums that saturate) only levels within +-64."""
    from compactbert.runtime.kernels import onednn_int8_available, onednn_int8_max_level

    limit = onednn_int8_max_level()
    assert limit in (0, 64, 127)
    assert onednn_int8_available() == (limit == 127) == exact_int8_product(127, 1)
    if limit:
        assert exact_int8_product(limit, 2) and exact_int8_product(1, 3)
    if limit == 64:  # AVX2: one level more and the worst case saturates
        assert not exact_int8_product(65, 4)
    if limit == 0:
        assert not exact_int8_product(64, 5)
