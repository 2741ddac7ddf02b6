"""load(DIR, backend=...): a packed model on ONNX Runtime / OpenVINO (an ONNX graph built from the
decoded packed weights, activation quantizers as trained) predicts what the training-time model
predicts; 'auto' picks by a measured probe and says so; the packed directory stays the artefact."""

from __future__ import annotations

import pytest
import torch

from compactbert.errors import UserError
from compactbert.export.pack import export_packed
from compactbert.nn.quantizers import StaticActQuantizer, IntQuantizer, calibration
from compactbert.nn.surgery import compress_embeddings, compress_modules, encoder_linear_patterns
from compactbert.runtime import load
from compactbert.runtime.engines import available_engines
from test_runtime import a8_model, batch, bert_with_vocab, compressed, hf_logits, layer_linears, run, tiny, tiny_tokenizer

ENGINES = available_engines()  # onnxruntime is a dependency; openvino comes with the bench extra


def random_rows(arch: str, n: int = 400, seq: int = 12, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, seq), generator=g)
    tt = torch.zeros_like(ids)
    return ids, torch.ones_like(ids), tt


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).float().mean())


def test_onnxruntime_is_always_available():
    assert "onnxruntime" in ENGINES


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta", "electra"])
def test_compressed_model_on_an_engine_predicts_like_the_training_model(tmp_path, engine, arch):
    # several weight quantizers, pruned heads and neurons, a sparse matrix, a ternary embedding, 8-bit
    # dynamic activations on q/k/v/up
    model = compressed(arch)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, backend=engine, threads=1)
    assert pm.backend == engine and pm.dtype == "fp32" and pm.act_quant
    assert pm.config["heads_per_layer"] == [3, 3]  # the pruned structure is absent from the graph too
    ids, mask, tt = batch(arch)  # padding in two rows
    ref = hf_logits(model, arch, ids, mask, tt)
    torch.testing.assert_close(run(pm, arch, ids, mask, tt), ref, atol=2e-5, rtol=0)
    ids, mask, tt = random_rows(arch)
    ref = hf_logits(model, arch, ids, mask, tt)
    out = pm(ids, mask)
    assert agreement(out, ref) >= 0.995 and float((out - ref).abs().max()) < 1e-4
    name = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[engine]
    d = pm.describe()
    assert d.startswith(name) and "activation quantizers run as float ops" in d and "2 layers, heads 3" in d


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("arch", "static"), [("bert", False), ("distilbert", True)])
def test_a8_models_keep_their_activation_quantization_exactly(tmp_path, engine, arch, static):
    model = a8_model(arch, static)  # int8 / ternary / binary weights, 8-bit activations everywhere
    ids, mask, tt = batch(arch)
    if static:
        with calibration(model):
            hf_logits(model, arch, ids, mask, tt)
    ref = hf_logits(model, arch, ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, backend=engine, threads=1)
    out = run(pm, arch, ids, mask, tt)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    off = run(load(tmp_path, backend=engine, act_quant="off", threads=1), arch, ids, mask, tt)
    assert float((off - ref).abs().max()) > 20 * float((out - ref).abs().max())  # the quantizers are what makes it exact


@pytest.mark.parametrize("engine", ENGINES)
def test_asymmetric_static_activations(tmp_path, engine):
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
    pm = load(tmp_path, backend=engine, threads=1)
    torch.testing.assert_close(pm(ids, mask, tt), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_layer_without_heads_or_neurons(tmp_path, engine):
    model = tiny("bert")
    compress_modules(model, encoder_linear_patterns(model))
    l1 = layer_linears(model, 1)
    l1["v"].weight_mask = torch.zeros_like(l1["v"].weight)  # layer 1: no head left
    l1["up"].weight_mask = torch.zeros_like(l1["up"].weight)  # ... and no neuron
    ids, mask, tt = batch("bert")
    ref = hf_logits(model, "bert", ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32")
    # fp32: OpenVINO's default on a CPU with native bf16 (AMX or AVX512-BF16) is bf16 arithmetic
    pm = load(tmp_path, backend=engine, threads=1, dtype="fp32")
    assert pm.config["heads_per_layer"] == [4, 0] and pm.config["ffn_per_layer"] == [64, 0]
    torch.testing.assert_close(pm(ids, mask, tt), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_pruned_vocabulary_and_texts(tmp_path, engine):
    tok = tiny_tokenizer(tmp_path)
    model = bert_with_vocab()
    compress_embeddings(model)["bert.embeddings.word_embeddings"].weight_quantizer = IntQuantizer(8)
    export_packed(model, tok, tmp_path / "p", prune_vocab_texts=["a good film", ("the plot", "great fun")],
                  float_dtype="float32")
    pm = load(tmp_path / "p", backend=engine, threads=1, dtype="fp32")
    ref = load(tmp_path / "p", dtype="fp32")  # compactbert's runtime maps unseen tokens the same way
    texts = ["a good film", "the boring plot", "great fun"]
    torch.testing.assert_close(pm.predict(texts), ref.predict(texts), atol=2e-5, rtol=0)


@pytest.mark.parametrize("engine", ENGINES)
def test_embedding_model_encodes_like_the_runtime(tmp_path, engine):
    tok = tiny_tokenizer(tmp_path)
    model = bert_with_vocab()
    export_packed(model.base_model, tok, tmp_path / "emb", float_dtype="float32")
    texts = ["a good film", "the plot was boring", "fun"]
    ref = load(tmp_path / "emb", dtype="fp32").encode(texts)
    pm = load(tmp_path / "emb", backend=engine, threads=1, dtype="fp32")
    got = pm.encode(texts)
    assert got.shape == ref.shape == (3, 32)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)
    with pytest.raises(UserError, match="embedding model"):
        pm(torch.tensor([[2, 7, 3]]))


def test_auto_measures_every_available_backend_and_says_which_it_chose(tmp_path):
    model = compressed("bert")
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, backend="auto", threads=1)
    d = pm.describe()
    assert "backend auto chose " in d and pm.selection in d
    for name in ["compactbert", *ENGINES]:
        assert f"{name} " in pm.selection.split(": ", 1)[1]  # every candidate's probe times are listed
    ids, mask, tt = batch("bert")
    torch.testing.assert_close(pm(ids, mask, tt), hf_logits(model, "bert", ids, mask, tt), atol=2e-5, rtol=0)


@pytest.mark.parametrize("winners", [("onnxruntime", "compactbert"), ("compactbert", "onnxruntime"),
                                     ("onnxruntime", "onnxruntime")])
def test_auto_keeps_the_batch1_winner_for_small_batches_and_the_batch8_winner_for_large(tmp_path, monkeypatch,
                                                                                          winners):
    from compactbert import api
    from compactbert.runtime import engines

    small, large = winners

    def fake_times(models, reps=3):  # the probe's verdict, fixed: ``small`` wins batch 1, ``large`` batch 8
        return {n: (1e-3 if n == small else 5e-3, 1e-3 if n == large else 5e-3) for n in models}

    monkeypatch.setattr(engines, "probe_times", fake_times)
    model = compressed("bert")
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = api.load(tmp_path, threads=1)  # compactbert.load: backend="auto" by default
    calls: list[tuple[str, int]] = []
    encoders = {pm.encoder} if not isinstance(pm.encoder, engines.RoutedEncoder) else {pm.encoder.small, pm.encoder.large}
    for enc in encoders:
        name = getattr(enc, "engine", "compactbert")
        enc.register_forward_hook(lambda m, a, out, name=name: calls.append((name, a[0].shape[0])))
    ids, mask, tt = random_rows("bert", n=8)
    ref = hf_logits(model, "bert", ids, mask, tt)
    for rows in (1, 2, 3, 8):
        torch.testing.assert_close(pm(ids[:rows], mask[:rows]), ref[:rows], atol=2e-5, rtol=0)
    want = [(small if rows <= engines.ROUTE_MAX_ROWS else large, rows) for rows in (1, 2, 3, 8)]
    assert calls == want
    if small == large:
        assert pm.selection.startswith(f"backend auto chose {small}: ") and pm.backend == "onnxruntime"
    else:
        assert pm.selection.startswith(f"backend auto chose {small} for batches of 1-2 rows and {large} for larger")
        d = pm.describe()
        assert d.startswith(f"batches of 1-2 rows on {small} [") and f"larger batches on {large} [" in d
        assert "ONNX Runtime" in d and "compactbert runtime" in d


def test_unsupported_activation_quantizer_is_dropped_and_its_effect_reported(tmp_path, monkeypatch):
    from compactbert.runtime import engines, graph

    model = a8_model("bert")
    export_packed(model, None, tmp_path, float_dtype="float32")
    monkeypatch.delitem(graph.ACT_EMITTERS, "dynamic_act")  # as if the kind had no ONNX form
    # the float graph, where activation quantizers need an ONNX form: with VNNI these 8-bit weight
    # levels would run as exact integer products on the codes instead, quantizer or not
    monkeypatch.setattr(engines, "ort_int8_max_level", lambda: 0)
    pm = load(tmp_path, backend="onnxruntime", threads=1)
    d = pm.describe()
    assert "activation quantizers without an ONNX form dropped: dynamic_act (" in d
    assert "vs the trained arithmetic on 64 random rows: same class " in d and "largest logit difference" in d


def test_backend_errors_are_user_errors(tmp_path, monkeypatch):
    model = tiny("bert")
    export_packed(model, None, tmp_path, float_dtype="float32")
    with pytest.raises(UserError, match="backend='tensorrt' is not valid; valid: compactbert, onnxruntime, openvino, auto"):
        load(tmp_path, backend="tensorrt")
    with pytest.raises(UserError, match="dtype='bf16' is not available with backend='onnxruntime'"):
        load(tmp_path, backend="onnxruntime", dtype="bf16")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(UserError, match=r"backend='openvino' needs the openvino package.*compactbert\[bench\]"):
        load(tmp_path, backend="openvino")
    # auto without OpenVINO still works, among what is there
    pm = load(tmp_path, backend="auto", threads=1)
    assert "openvino" not in pm.selection


def test_onnxruntime_runs_exact_int8_products_where_levels_allow(tmp_path):
    """A8 models on ONNX Runtime: linears with integer levels within what this CPU's u8 x s8 product
    sums exactly (every int8 level on VNNI/AMX, +-64 on AVX2) become MatMulInteger; the logits stay
    those of the training-time model."""
    from compactbert.runtime.engines import ort_int8_max_level

    model = a8_model("bert", False)  # layer 0: int8 levels (+-127), layer 1: ternary; word embeddings int8
    ids, mask, tt = batch("bert")
    ref = hf_logits(model, "bert", ids, mask, tt)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, backend="onnxruntime", threads=1)
    limit = ort_int8_max_level()
    assert limit in (0, 64, 127)
    layer1 = {f"layer.1.{n}" for n in ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.up", "ffn.down")}
    layer0 = {n.replace("layer.1", "layer.0") for n in layer1}
    got = set(pm.encoder.int8_linears)
    expected = (layer0 | layer1) if limit == 127 else (layer1 if limit == 64 else set())
    assert got == expected
    assert ("exact int8 products" in pm.describe()) == bool(expected)
    graph = pm.encoder.session("logits").graph.model
    ops = [n.op_type for n in graph.graph.node]
    # one fused integer product per stacked group: layer 0 q+k+v, the last layer k+v (its queries
    # come from [CLS] alone), then o, up, down each
    products = {127: 4 + 5, 64: 5, 0: 0}[limit]
    assert ops.count("MatMulIntegerToFloat") == products and "MatMulInteger" not in ops
    assert ops.count("QuantizeLinear") == {127: 4 + 5, 64: 5, 0: 0}[limit]  # per-token codes, once per distinct input
    torch.testing.assert_close(run(pm, "bert", ids, mask, tt), ref, atol=2e-5, rtol=0)
    ids, mask, tt = random_rows("bert")
    ref = hf_logits(model, "bert", ids, mask, tt)
    assert agreement(pm(ids, mask), ref) >= 0.995


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_onnxruntime_graph_is_fused_and_computes_what_the_plain_graph_computes(tmp_path, arch):
    """ONNX Runtime gets the fused graph (stacked q/k/v products, one attention kernel with the key
    padding mask, bias+GELU and residual+LayerNorm in one op each); OpenVINO the plain opset-17 one.
    On padded rows both give the same logits and token states."""
    import onnxruntime as ort

    from compactbert.export.onnx import ort_options
    from compactbert.export.pack import read_packed
    from compactbert.runtime.graph import build_graph

    export_packed(compressed(arch), None, tmp_path, float_dtype="float32")
    packed = read_packed(tmp_path)
    ids, mask, tt = batch(arch)  # padding in two rows
    for output in ("logits", "states"):
        outs = {}
        for fused in (False, True):
            g = build_graph(packed.config, packed.tensors, packed.act_quant, packed.vocab_map, output, fused=fused)
            ops = {n.op_type for n in g.model.graph.node}
            fused_ops = {"MultiHeadAttention", "SkipLayerNormalization", "BiasGelu"}
            assert (fused_ops <= ops) if fused else not (fused_ops & ops)
            sess = ort.InferenceSession(g.model.SerializeToString(), ort_options(1), providers=["CPUExecutionProvider"])
            feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            if "token_type_ids" in g.inputs:
                feed["token_type_ids"] = tt.numpy()
            outs[fused] = torch.from_numpy(sess.run([g.output], feed)[0])
        if output == "states":  # padded positions are not defined the same way; compare the tokens
            keep = mask.bool()
            outs = {k: v[keep] for k, v in outs.items()}
        torch.testing.assert_close(outs[True], outs[False], atol=2e-5, rtol=0)
    pm = load(tmp_path, backend="onnxruntime", threads=1)
    assert "MultiHeadAttention" in {n.op_type for n in pm.encoder.session("logits").graph.model.graph.node}


def test_probe_times_one_short_sentence_at_batch_1_and_long_rows_at_batch_8(tmp_path):
    """The batch-1 probe is what single calls carry (a short sentence), the batch-8 probe long rows;
    both capped at the model's positions, and the selection line says which lengths were timed."""
    from compactbert.runtime import engines

    export_packed(compressed("bert"), None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, threads=1)
    pos = pm.encoder.max_positions
    shapes = [tuple(b[0].shape) for b in engines._probe_batches(pm)]
    assert shapes == [(1, min(32, pos)), (8, min(128, pos))]
    auto = load(tmp_path, backend="auto", threads=1)
    assert f"t(bs1, {min(32, pos)} tokens) / t(bs8, {min(128, pos)} tokens)/8" in auto.selection
