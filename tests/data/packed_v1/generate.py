"""How tests/data/packed_v1/ was written: packed directories of format version 1, made with the
code of commit 14039d1 (before the quantizer plugins). Kept for provenance only; the compat test
(tests/test_packed_compat.py) reads the folders and ``expected.json``, it never runs this.

Run from the repository root: ``.venv/bin/python tests/data/packed_v1/generate.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for the fixtures of test_runtime

from test_runtime import a8_model, batch, compressed, hf_logits, tiny_tokenizer  # noqa: E402

from compactbert.export.pack import export_packed, read_packed  # noqa: E402
from compactbert.nn.quantizers import calibration  # noqa: E402
from compactbert.runtime import load  # noqa: E402


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()


def record(folder: Path, arch: str, model, ids, mask, tt) -> dict:
    kw = tt if arch in ("bert", "electra") else None
    packed = read_packed(folder)
    return {
        "arch": arch,
        "input_ids": ids.tolist(), "attention_mask": mask.tolist(), "token_type_ids": tt.tolist(),
        "training_logits": hf_logits(model, arch, ids, mask, tt).tolist(),
        "fp32_logits": load(folder, dtype="fp32")(ids, mask, kw).tolist(),
        "default_logits": load(folder)(ids, mask, kw).tolist(),  # int8 products for A8 models
        "tensors": {k: [list(v.shape), digest(v)] for k, v in sorted(packed.tensors.items())},
        "row_codes": {k: [digest(lv.float()), digest(s)] for k, (lv, s) in sorted(packed.row_codes.items())},
    }


def main() -> None:
    torch.set_num_threads(1)
    out: dict = {}
    # 1. every compression at once (binary/ternary/int-k per tensor/row/group, sym/asym, pruned heads
    #    and neurons, structured and unstructured masks, dynamic A8), fp16 floats, a tokenizer and a
    #    pruned vocabulary
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tok = tiny_tokenizer(Path(tmp))
        model = compressed("bert")
        model.config.pad_token_id = 0
        ids, mask, tt = batch("bert")
        texts = [tok.decode(row[m.bool()][1:-1]) for row, m in zip(ids, mask)]
        folder = HERE / "bert_mixed"
        export_packed(model, tok, folder, prune_vocab_texts=texts + ["a good film"])
        ids = tok(texts, padding=True, return_tensors="pt")
        out["bert_mixed"] = record(folder, "bert", model, ids["input_ids"], ids["attention_mask"],
                                   ids["token_type_ids"])
    # 2. static 8-bit activations, one weight kind per layer, float32 floats: the runtime's int8 path
    model = a8_model("distilbert", static=True)
    ids, mask, tt = batch("distilbert")
    with calibration(model):
        hf_logits(model, "distilbert", ids, mask, tt)
    folder = HERE / "distilbert_a8_static"
    export_packed(model, None, folder, float_dtype="float32")
    out["distilbert_a8_static"] = record(folder, "distilbert", model, ids, mask, tt)
    (HERE / "expected.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
