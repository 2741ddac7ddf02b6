"""The packed bf16 runtime on the real embedded model (MiniLM-L6), not a tiny random one (issue 9).

Tiny random models hardly notice a wrong term in a product (the fused Q/K/V product without its
bias passed every tiny-model test while the real MiniLM then agreed on 77% of predictions), so the
bf16 path is checked here against the FP32 Hugging Face model on 200 real Rotten Tomatoes
sentences in padded batches, with a classifier head of seeded random weights (its logits are tiny,
so predictions are sensitive to any error in the encoder). bf16 rounding gives a largest logit
difference of ~6e-4 and 200/200 agreeing predictions; without the QKV bias: 0.037 and 85%.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def minilm_and_sentences():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from compactbert.data.sources import load_examples
    from compactbert.models import embedded_minilm_path

    path = embedded_minilm_path()
    torch.manual_seed(0)  # the classifier head is newly initialised: seeded
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path)
    sentences = [e.text_a for e in load_examples("rt", "dev")[:200]]
    return model, tok, sentences


def test_packed_bf16_minilm_predicts_what_the_fp32_model_predicts(minilm_and_sentences, tmp_path):
    from compactbert.export.pack import export_packed
    from compactbert.runtime import load

    model, tok, sentences = minilm_and_sentences
    export_packed(model, tok, tmp_path)  # as `compactbert export` stores it: fp16 floats
    pm = load(tmp_path, dtype="bf16")
    assert pm.dtype == "bf16"
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # little padding, but some in every batch
    ref, got, padded = torch.zeros(len(sentences), 2), torch.zeros(len(sentences), 2), 0
    for start in range(0, len(order), 40):
        idx = order[start : start + 40]
        enc = tok([sentences[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        padded += int((enc["attention_mask"] == 0).any(dim=1).sum())
        with torch.no_grad():
            ref[idx] = model(**enc).logits
        got[idx] = pm(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert padded >= 100  # most rows carry padding
    agree = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    assert agree >= 0.99
    assert float((got - ref).abs().max()) < 0.005  # bf16: ~6e-4; a lost QKV bias: 0.037
