"""compactbert bench: inputs, measurement, ratios, sizes, and a whole run on tiny models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from compactbert.bench import compute_ratios, model_bytes, print_bench_table, run_bench
from compactbert.bench.inputs import eval_batches, load_inputs, save_inputs, timing_batch
from compactbert.bench.measure import measure_runner, peak_rss_mb, rss_mb
from compactbert.errors import UserError

WORDS = [f"w{i}" for i in range(115)]


def make_tokenizer():
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})


def make_model(folder: Path, layers: int, seed: int, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=num_labels,
    )
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(30.0)  # confident predictions: not all one class
    tok = make_tokenizer()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    teacher, tok = make_model(root / "teacher", layers=2, seed=0)
    student, _ = make_model(root / "student", layers=1, seed=1)
    rng = random.Random(0)
    with open(root / "dev.jsonl", "w") as f:
        for _ in range(24):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))
            f.write(json.dumps({"sentence": text, "label": rng.randint(0, 1)}) + "\n")
    return {"root": root, "teacher": teacher, "student": student, "tok": tok}


# --------------------------------------------------------------------------------------------------
# inputs


def test_timing_rows_are_real_text_without_padding(tiny):
    tok = tiny["tok"]
    texts = [("w1 w2 w3", None), ("w4 w5", "w6 w7 w8")]
    b = timing_batch(tok, texts, batch=5, seq_len=16, seed=0)
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
    ids = b["input_ids"]
    assert ids.shape == (5, 16) and ids.dtype == np.int64
    assert (b["attention_mask"] == 1).all() and (b["token_type_ids"] == 0).all()
    assert (ids[:, 0] == tok.cls_token_id).all() and (ids[:, -1] == tok.sep_token_id).all()
    body = ids[:, 1:-1]
    allowed = {tok.convert_tokens_to_ids(f"w{i}") for i in range(1, 9)}
    assert set(body.ravel().tolist()) <= allowed  # only the texts' tokens, no padding, no [UNK]
    # the rows follow the text stream (w1 w2 w3 w4 w5 w6 w7 w8 w1 ...), wrapping around
    stream = [tok.convert_tokens_to_ids(f"w{i}") for i in range(1, 9)]
    flat = body.ravel().tolist()
    start = stream.index(flat[0])
    assert flat == [stream[(start + k) % 8] for k in range(len(flat))]


def test_timing_rows_without_task_are_random_non_special_ids(tiny):
    tok = tiny["tok"]
    b = timing_batch(tok, None, batch=8, seq_len=32, seed=3)
    body = b["input_ids"][:, 1:-1]
    assert not set(body.ravel().tolist()) & set(tok.all_special_ids)
    assert body.min() >= 5 and body.max() < 120
    assert len(set(body.ravel().tolist())) > 50  # random, not constant
    np.testing.assert_array_equal(b["input_ids"], timing_batch(tok, None, 8, 32, seed=3)["input_ids"])


def test_eval_batches_and_npz_round_trip(tiny, tmp_path):
    from compactbert.data.batching import restore_order
    from compactbert.data.sources import Example

    tok = tiny["tok"]
    examples = [Example(" ".join(WORDS[: n + 1]), None, n % 2) for n in (3, 9, 1, 6, 2)]
    batches, order, labels = eval_batches(tok, examples, 64, batch_size=2)
    assert labels == [1, 1, 1, 0, 0]
    assert [len(b) for b in order] == [2, 2, 1] and sorted(i for b in order for i in b) == list(range(5))
    assert batches[0]["input_ids"].shape == (2, 12)  # longest first: 10 words + [CLS] [SEP]
    save_inputs(tmp_path / "x.npz", timing_batch(tok, None, 4, 16), batches)
    timing, back = load_inputs(tmp_path / "x.npz")
    assert timing["input_ids"].shape == (4, 16)
    assert len(back) == 3 and all(np.array_equal(a[k], b[k]) for a, b in zip(batches, back) for k in a)
    # row lengths come back in example order after restore_order
    lengths = np.concatenate([b["attention_mask"].sum(1) for b in back])
    assert restore_order(order, lengths).tolist() == [6, 12, 4, 9, 5]


# --------------------------------------------------------------------------------------------------
# measurement


class CountingRunner:
    kernels = "numpy"

    def __init__(self):
        self.shapes = []

    def __call__(self, feed):
        self.shapes.append(feed["input_ids"].shape)
        return np.ones((feed["input_ids"].shape[0], 2), dtype=np.float32) * feed["input_ids"][:, :1]


def test_measure_runner_calls_and_results():
    runner = CountingRunner()
    timing = {"input_ids": np.arange(40 * 8).reshape(40, 8), "attention_mask": np.ones((40, 8), dtype=np.int64)}
    evals = [{"input_ids": np.full((3, 5), 7), "attention_mask": np.ones((3, 5))}, {"input_ids": np.full((2, 4), 9)}]
    result, logits = measure_runner(lambda: runner, timing, evals, batch_size=32, n_warmup=2, n_latency=5, n_throughput=3)
    # 2 warm-up + 5 timed at batch 1, 1 warm-up + 3 timed at batch 32, then the two eval batches
    assert runner.shapes == [(1, 8)] * 7 + [(32, 8)] * 4 + [(3, 5), (2, 4)]
    assert logits.shape == (5, 2) and logits[:, 0].tolist() == [7, 7, 7, 9, 9]
    assert 0 < result["latency_ms_bs1_p50"] <= result["latency_ms_bs1_p90"]
    assert result["throughput_bs32"] > 0 and result["kernels"] == "numpy"
    assert result["peak_rss_mb"] >= result["rss_after_load_mb"] > 0


def test_peak_rss_is_at_least_current_rss():
    assert peak_rss_mb() >= rss_mb() > 1


def test_model_bytes_counts_model_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "config.json").write_bytes(b"\0" * 10)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.txt.xz").write_bytes(b"\0" * 7)
    (tmp_path / "bench.json").write_bytes(b"\0" * 500)  # a report about the model is not the model
    (tmp_path / "eval.json").write_bytes(b"\0" * 500)
    assert model_bytes(tmp_path) == (1017, 1000)
    assert model_bytes(tmp_path / "model.safetensors") == (1000, 1000)


def test_compute_ratios():
    models = [
        {"name": "fp32", "throughput_bs32": 100.0, "latency_ms_bs1_p50": 10.0, "latency_ms_bs1_p90": 12.0,
         "file_bytes": 1000, "weights_bytes": 900, "peak_rss_mb": 400.0, "accuracy": 0.9},
        {"name": "small", "throughput_bs32": 650.0, "latency_ms_bs1_p50": 2.5, "latency_ms_bs1_p90": 4.0,
         "file_bytes": 20, "weights_bytes": 18, "peak_rss_mb": 200.0, "accuracy": 0.885},
        {"name": "broken", "throughput_bs32": None, "file_bytes": 500, "accuracy": None},
    ]
    r = compute_ratios(models, "fp32")
    assert r["small"] == pytest.approx({
        "throughput_bs32": 6.5, "latency_bs1_p50": 4.0, "latency_bs1_p90": 3.0, "file_bytes": 50.0,
        "weights_bytes": 50.0, "peak_rss": 2.0, "accuracy_delta": -0.015,
    })
    assert r["broken"] == {"file_bytes": 2.0}
    assert compute_ratios(models, "missing") == {}


# --------------------------------------------------------------------------------------------------
# whole runs


def _teacher_accuracy(tiny) -> float:
    from compactbert.data.batching import Collator, encode
    from compactbert.data.sources import load_examples
    from compactbert.data.tasks import compute_metrics, get_task

    spec = get_task("sst2")
    ex = load_examples(spec, "dev", tiny["root"] / "dev.jsonl")
    feats = encode(ex, tiny["tok"], 128)
    batch = Collator(0)(feats)
    with torch.no_grad():
        logits = tiny["teacher"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 token_type_ids=batch["token_type_ids"]).logits
    return compute_metrics(spec, logits.numpy(), [e.label for e in ex])["accuracy"]


def test_run_bench_end_to_end_in_child_processes(tiny, tmp_path):
    from compactbert.export.pack import export_packed

    packed = tmp_path / "student-packed"
    export_packed(tiny["student"], tiny["tok"], packed)
    out = tmp_path / "results"
    result = run_bench(
        packed, tiny["root"] / "teacher", task="sst2", data=tiny["root"] / "dev.jsonl", threads=1, out=out,
        seq_len=32, batch_size=4, n_warmup=1, n_latency=3, n_throughput=2, progress=True, rounds=1,
        baselines=["torch-fp32", "ort-fp32", "ort-int8"],
    )
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk == result
    assert result["task"] == "sst2" and result["n_eval"] == 24 and result["threads"] == 1 and result["seq_len"] == 32
    assert result["isolated"] is True and "avx2" in result["machine"]["flags"]
    names = [m["name"] for m in result["models"]]
    assert names == ["student-packed", "teacher-fp32", "teacher-ort-fp32", "teacher-ort-int8"]
    by = {m["name"]: m for m in result["models"]}
    for m in result["models"]:
        assert "error" not in m, m
        for key in ("latency_ms_bs1_p50", "latency_ms_bs1_p90", "throughput_bs32", "peak_rss_mb", "file_bytes"):
            assert m[key] > 0, (m["name"], key)
        assert m["latency_ms_bs1_p50"] <= m["latency_ms_bs1_p90"]
        assert isinstance(m["kernels"], str) and m["kernels"]
    assert by["student-packed"]["kind"] == "packed" and by["student-packed"]["role"] == "compressed"
    assert "compactbert runtime" in by["student-packed"]["kernels"]
    assert "MatMulInteger" in by["teacher-ort-int8"]["kernels"] or "DynamicQuantizeMatMul" in by["teacher-ort-int8"]["kernels"]
    # sizes are the files on disk
    teacher_files = sum(f.stat().st_size for f in (tiny["root"] / "teacher").iterdir() if f.is_file())
    assert by["teacher-fp32"]["file_bytes"] == teacher_files
    assert by["teacher-fp32"]["weights_bytes"] == (tiny["root"] / "teacher" / "model.safetensors").stat().st_size
    assert by["student-packed"]["file_bytes"] == model_bytes(packed)[0]
    # accuracy through each runner; FP32 ORT agrees with PyTorch on every example
    assert by["teacher-fp32"]["accuracy"] == pytest.approx(_teacher_accuracy(tiny))
    assert by["teacher-ort-fp32"]["accuracy"] == by["teacher-fp32"]["accuracy"]
    assert by["teacher-ort-fp32"]["agreement_vs_fp32"] == 1.0 and by["teacher-fp32"]["agreement_vs_fp32"] == 1.0
    assert 0.0 <= by["student-packed"]["agreement_vs_fp32"] <= 1.0
    # memory is each child's own: an ONNX Runtime child never imports torch
    assert by["teacher-ort-fp32"]["peak_rss_mb"] < by["teacher-fp32"]["peak_rss_mb"]
    # ratios against both baselines
    ratios = result["ratios"]
    assert ratios["baselines"] == {"fp32": "teacher-fp32", "ort_int8": "teacher-ort-int8", "teacher_runtime": "teacher-runtime"}
    assert ratios["vs_teacher_runtime"] == {}  # not measured this time
    assert set(ratios["vs_fp32"]) == {"student-packed", "teacher-ort-fp32", "teacher-ort-int8"}
    r = ratios["vs_fp32"]["student-packed"]
    assert r["throughput_bs32"] == pytest.approx(by["student-packed"]["throughput_bs32"] / by["teacher-fp32"]["throughput_bs32"])
    assert r["file_bytes"] == pytest.approx(by["teacher-fp32"]["file_bytes"] / by["student-packed"]["file_bytes"])
    assert set(ratios["vs_ort_int8"]) == {"student-packed", "teacher-fp32", "teacher-ort-fp32"}

    from rich.console import Console

    console = Console(record=True, width=200)
    print_bench_table(result, console=console)
    text = console.export_text()
    for name in names:
        assert name in text
    assert "MatMul" in text  # the kernels lines


def test_run_bench_inline_without_task(tiny, tmp_path):
    result = run_bench(
        tiny["root"] / "student", tiny["root"] / "teacher", threads=1, out=tmp_path / "b.json", seq_len=16,
        batch_size=2, n_warmup=0, n_latency=2, n_throughput=1, baselines=["torch-fp32", "torch-int8"],
        isolate=False, progress=False,
    )
    assert (tmp_path / "b.json").is_file()
    assert [m["name"] for m in result["models"]] == ["student", "teacher-fp32", "teacher-torch-int8"]
    assert result["task"] is None and "random" in result["inputs"]
    for m in result["models"]:
        assert m["accuracy"] is None and m["peak_rss_mb"] is None  # no task; no isolation, no memory
        assert m["throughput_bs32"] > 0
    assert "quantized::linear_dynamic" in result["models"][2]["kernels"]
    assert result["ratios"]["vs_ort_int8"] == {}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"threads": 0}, "--threads"),
        ({"threads": True}, "--threads"),
        ({"baselines": ["ort-int4"]}, "unknown baseline 'ort-int4'"),
        ({"baseline": None}, "no --baseline"),
        ({"compressed_dir": "/nonexistent/packed"}, "does not exist"),
        ({"task": "mnli", "data": "mnli.jsonl"}, "has 2 outputs but task mnli needs 3"),
        ({"task": "sst3"}, "unknown task"),
        ({"n_latency": 0}, "n_latency"),
        ({"seq_len": 2}, "too short"),
        ({"out": "/proc/version/bench.json"}, "cannot write"),
    ],
)
def test_bad_input_is_a_user_error(tiny, tmp_path, kwargs, match):
    args = {"compressed_dir": tiny["root"] / "student", "baseline": tiny["root"] / "teacher", "threads": 1,
            "out": None, "progress": False, "data": tiny["root"] / "dev.jsonl"}
    args.update(kwargs)
    if args["data"] == "mnli.jsonl":
        args["data"] = tmp_path / "mnli.jsonl"
        args["data"].write_text(json.dumps({"sentence1": "w1 w2", "sentence2": "w3", "label": "neutral"}) + "\n")
    with pytest.raises(UserError, match=match):
        run_bench(**args)


def test_not_a_model_directory_is_a_user_error(tmp_path, tiny):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a model directory"):
        run_bench(tmp_path / "stuff", tiny["root"] / "teacher", out=None, progress=False)


def test_tampered_packed_directory_is_a_user_error(tiny, tmp_path):
    from compactbert.export.pack import export_packed

    packed = tmp_path / "p"
    export_packed(tiny["student"], tiny["tok"], packed)
    weights = packed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="^p: .*sha256"):
        run_bench(packed, None, baselines=(), threads=1, out=None, seq_len=16, batch_size=2, n_warmup=0,
                  n_latency=1, n_throughput=1, isolate=False, progress=False)


def test_a_model_that_fails_to_run_is_recorded_not_fatal(tiny, tmp_path):
    import shutil

    broken = tmp_path / "broken-onnx"
    shutil.copytree(tiny["root"] / "student", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    result = run_bench(
        broken, tiny["root"] / "teacher", baselines=["torch-fp32"], threads=1, out=tmp_path / "b.json",
        seq_len=16, batch_size=2, n_warmup=0, n_latency=1, n_throughput=1, isolate=False, progress=False,
    )
    bad, good = result["models"]
    assert bad["name"] == "broken-onnx" and bad["kind"] == "ort" and "error" in bad
    assert bad["throughput_bs32"] is None and bad["file_bytes"] > 0
    assert "error" not in good and good["throughput_bs32"] > 0
    assert result["ratios"]["vs_fp32"]["broken-onnx"] == {"file_bytes": pytest.approx(
        good["file_bytes"] / bad["file_bytes"]), "weights_bytes": pytest.approx(good["weights_bytes"] / bad["weights_bytes"])}
    assert json.loads((tmp_path / "b.json").read_text())["models"][0]["error"] == bad["error"]


def test_bench_verb_writes_bench_json_beside_the_first_model_and_prints_the_table(tiny, tmp_path, capsys):
    import shutil

    from compactbert import api

    student = tmp_path / "student"
    shutil.copytree(tiny["root"] / "student", student)
    result = api.bench(
        student, baseline=tiny["root"] / "teacher", threads=1, baselines=["torch-fp32"], seq_len=16, batch_size=2,
        n_warmup=0, n_latency=1, n_throughput=1, isolate=False, progress=False,
    )
    assert json.loads((student / "bench.json").read_text()) == result
    assert [m["name"] for m in result["models"]] == ["student", "teacher-fp32"]
    out = capsys.readouterr().out
    assert "teacher-fp32" in out and f"wrote {student / 'bench.json'}" in out


def test_packed_folders_named_packed_are_rows_named_after_their_run(tiny, tmp_path):
    """compress writes RUN/packed: three such folders benchmarked together are named after their runs,
    not packed, packed-2, packed-3; every one keeps kind 'packed'."""
    from compactbert.bench.plan import spec_for_compressed, unique_names
    from compactbert.export.pack import export_packed

    specs = []
    for run in ("xtc-binary", "xtc-ternary"):
        export_packed(tiny["student"], tiny["tok"], tmp_path / run / "packed")
        specs.append(spec_for_compressed(tmp_path / run / "packed"))
    export_packed(tiny["student"], tiny["tok"], tmp_path / "mine")
    specs += [spec_for_compressed(tmp_path / "mine"), spec_for_compressed(tmp_path / "mine")]
    unique_names(specs)
    assert [s.name for s in specs] == ["xtc-binary", "xtc-ternary", "mine", "mine-2"]
    assert {s.kind for s in specs} == {"packed"}
