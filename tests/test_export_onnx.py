"""ONNX export: ORT logits equal PyTorch's (FP32), int8 close, dynamic axes, compressed layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compactbert.errors import UserError
from compactbert.export.onnx import (
    ONNX_FILE,
    cpu_has_vnni,
    export_onnx,
    onnx_input_names,
    onnx_op_counts,
    ort_session,
    quantize_onnx_int8,
)


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=num_labels,
    )
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a decisive head, so that int8 noise rarely flips the argmax
        model.classifier.weight.mul_(20.0)
    return model


def tiny_tokenizer():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(115)]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})


def random_batch(batch: int, seq: int, seed: int, with_types: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 120, (batch, seq))  # (batch, seq)
    mask = np.ones((batch, seq), dtype=np.int64)  # (batch, seq)
    for r in range(batch):  # ragged rows: right padding of random length
        n = int(rng.integers(2, seq + 1))
        mask[r, n:] = 0
        ids[r, n:] = 0
    out = {"input_ids": ids.astype(np.int64), "attention_mask": mask}
    if with_types:
        types = np.zeros((batch, seq), dtype=np.int64)
        types[:, seq // 2 :] = 1
        out["token_type_ids"] = types
    return out


def torch_logits(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(**{k: torch.as_tensor(v) for k, v in feed.items()}).logits.numpy()


def test_fp32_matches_pytorch_with_dynamic_batch_and_sequence(tmp_path):
    model = tiny_bert()
    tok = tiny_tokenizer()
    assert len(tok) == 120
    path = export_onnx(model, tok, tmp_path / "onnx")
    assert path == tmp_path / "onnx" / ONNX_FILE
    # config and tokenizer beside the graph; the info file says what was done
    assert (tmp_path / "onnx" / "config.json").is_file()
    assert (tmp_path / "onnx" / "tokenizer.json").is_file() or (tmp_path / "onnx" / "vocab.txt").is_file()
    info = json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert info["opset"] == 17 and info["exporter"] == "torchscript"
    assert info["check_max_abs_diff"] < 1e-4
    # the user's model is left as it was (attention implementation, eval mode)
    assert model.config._attn_implementation == "sdpa"

    sess = ort_session(path, threads=1)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for batch, seq, seed in [(1, 7, 1), (3, 20, 2), (5, 33, 3)]:  # shapes other than the traced (2, 16)
        feed = random_batch(batch, seq, seed)
        got = sess.run(["logits"], feed)[0]
        ref = torch_logits(model, feed)
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_int8_close_to_fp32_and_settings_recorded(tmp_path):
    model = tiny_bert()
    path = export_onnx(model, None, tmp_path / "onnx")
    q = quantize_onnx_int8(path, tmp_path / "onnx" / "model.int8.onnx")
    settings = json.loads((tmp_path / "onnx" / "onnx_quantize.json").read_text())
    assert settings["per_channel"] is True
    assert settings["reduce_range"] is (not cpu_has_vnni())
    ops = onnx_op_counts(q)
    assert ops.get("MatMulInteger", 0) + ops.get("DynamicQuantizeMatMul", 0) >= 12  # 6 Linear per layer x 2
    assert "MatMulInteger" not in onnx_op_counts(path)

    feed = random_batch(64, 24, seed=5)
    ref = torch_logits(model, feed)  # (64, 3)
    got = ort_session(q, threads=1).run(["logits"], feed)[0]
    spread = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) < 0.1 * spread
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    assert agree >= 0.85


def test_model_without_token_types_has_two_inputs(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    model = DistilBertForSequenceClassification(cfg).eval()
    assert onnx_input_names(model) == ["input_ids", "attention_mask"]
    path = export_onnx(model, None, tmp_path / "onnx")
    sess = ort_session(path, threads=1)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    feed = random_batch(4, 12, seed=7, with_types=False)
    np.testing.assert_allclose(sess.run(["logits"], feed)[0], torch_logits(model, feed), atol=1e-4, rtol=0)


def test_compressed_layers_export_as_they_compute(tmp_path):
    from compactbert.nn.quantizers import DynamicActQuantizer, IntQuantizer
    from compactbert.nn.surgery import compress_modules

    model = tiny_bert()
    layers = compress_modules(model, ["*encoder.layer.*.intermediate.dense", "*encoder.layer.*.output.dense"])
    for layer in layers.values():
        layer.weight_quantizer = IntQuantizer(bits=2, granularity="row")
        layer.input_quantizer = DynamicActQuantizer(bits=8)
    model.eval()
    weight_before = layers["bert.encoder.layer.0.intermediate.dense"].weight.detach().clone()

    path = export_onnx(model, None, tmp_path / "onnx")
    # the user's model keeps its compressed layers and float weights
    layer = layers["bert.encoder.layer.0.intermediate.dense"]
    assert layer.weight_quantizer is not None and torch.equal(layer.weight, weight_before)
    # weights were baked once: the graph has no per-call weight quantization, only the activations'
    feed = random_batch(3, 18, seed=11)
    got = ort_session(path, threads=1).run(["logits"], feed)[0]
    ref = torch_logits(model, feed)
    ort_diff = float(np.abs(got - ref).max())
    assert ort_diff < 1e-3
    # and the uncompressed model is much further away: the quantization is really in the graph
    plain_diff = float(np.abs(torch_logits(tiny_bert(), feed) - ref).max())
    assert plain_diff > 10 * ort_diff


@pytest.mark.parametrize("opset", [9, 30, "17", True])
def test_bad_opset_is_a_user_error(tmp_path, opset):
    with pytest.raises(UserError, match="opset"):
        export_onnx(tiny_bert(), None, tmp_path / "onnx", opset=opset)


def test_quantize_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        quantize_onnx_int8(tmp_path / "nope.onnx", tmp_path / "q.onnx")


def test_export_from_a_model_folder_with_int8(tmp_path):
    from compactbert.export.onnx import export_onnx_path
    from compactbert.nn.io import save_model

    model = tiny_bert()
    save_model(model, tiny_tokenizer(), tmp_path / "run" / "model")
    (tmp_path / "run" / "run.json").write_text('{"kind": "finetune"}')
    paths = export_onnx_path(tmp_path / "run", tmp_path / "onnx", int8=True)
    assert paths == {"onnx": tmp_path / "onnx" / "model.onnx", "onnx_int8": tmp_path / "onnx" / "model.int8.onnx"}
    feed = random_batch(4, 10, seed=3)
    np.testing.assert_allclose(
        ort_session(paths["onnx"], 1).run(["logits"], feed)[0], torch_logits(model, feed), atol=1e-4, rtol=0
    )
    with pytest.raises(UserError, match="no config.json"):
        export_onnx_path(tmp_path / "onnx-missing", tmp_path / "x")
