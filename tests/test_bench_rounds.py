"""bench measured in interleaved rounds: the order, the median/min-max math, the load warning, the
clock, bench.json's fields, every baseline engine predicting like the teacher, and a missing
optional engine reported as skipped."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from compactbert.bench import run_bench
from compactbert.bench.load import LoadMeter, contention_warning, others_cores, CpuSample, TOLERANCE_CORES
from compactbert.bench.measure import measure_runner, time_calls
from compactbert.bench.result import compute_ratios, load_summary, print_bench_table
from compactbert.bench.rounds import combine_rounds, paired_ratios, schedule, summarize
from test_bench import WORDS, make_model


def toy_text(rng: random.Random, label: int) -> str:
    """Words from the first half of the vocabulary for class 1, the second half for class 0, plus noise."""
    pool = WORDS[:57] if label else WORDS[57:]
    words = [rng.choice(pool) for _ in range(rng.randint(4, 16))]
    return " ".join(words + [rng.choice(WORDS) for _ in range(2)])


def train_briefly(model, tok, rng: random.Random, steps: int = 120) -> None:
    """A few AdamW steps on :func:`toy_text`: a tiny teacher that predicts with real margins (a random
    one puts every input within int8 noise of its decision boundary)."""
    import torch

    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        labels = [rng.randint(0, 1) for _ in range(16)]
        enc = tok([toy_text(rng, y) for y in labels], padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor(labels)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    teacher, tok = make_model(root / "teacher", layers=2, seed=0)
    student, _ = make_model(root / "student", layers=1, seed=1)
    rng = random.Random(0)
    train_briefly(teacher, tok, rng)
    teacher.save_pretrained(root / "teacher")
    with open(root / "dev.jsonl", "w") as f:
        for i in range(64):
            f.write(json.dumps({"sentence": toy_text(rng, i % 2), "label": i % 2}) + "\n")
    return {"root": root, "teacher": teacher, "student": student, "tok": tok}


# --------------------------------------------------------------------------------------------------
# rounds: order and statistics


def test_schedule_runs_every_model_once_per_round_rotated():
    order = schedule(3, 3)
    assert order == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 0), (2, 2), (2, 0), (2, 1)]
    for r in range(3):
        assert sorted(i for rr, i in order if rr == r) == [0, 1, 2]
    # over as many rounds as models, every model is first once
    firsts = [order[3 * r][1] for r in range(3)]
    assert sorted(firsts) == [0, 1, 2]
    assert schedule(0, 3) == [] and schedule(2, 0) == []
    assert schedule(1, 2) == [(0, 0), (1, 0)]


def test_summarize_is_median_min_max_ignoring_missing_rounds():
    assert summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert summarize([4.0, None, 1.0, 2.0, 10.0]) == {"median": 3.0, "min": 1.0, "max": 10.0}  # even count: mean of middle two
    assert summarize([None, None]) is None and summarize([]) is None
    assert summarize([True, 5]) == {"median": 5.0, "min": 5.0, "max": 5.0}  # a bool is not a measurement


def test_paired_ratios_take_each_round_against_the_same_round():
    # throughput: model/base; latency: base/model; a missing round is left out
    assert paired_ratios([200, 300, 100], [100, 100, 50]) == [2.0, 3.0, 2.0]
    assert paired_ratios([5.0, 10.0], [10.0, 10.0], higher_is_better=False) == [2.0, 1.0]
    assert paired_ratios([1.0, None, 0.0], [1.0, 1.0, 1.0]) == [1.0]


def test_combine_rounds_medians_and_keeps_the_first_rounds_other_fields():
    rounds = [
        {"throughput_bs32": 100.0, "latency_ms_bs1_p50": 9.0, "peak_rss_mb": 300.0, "kernels": "k", "others_cores": 0.0},
        {"throughput_bs32": 140.0, "latency_ms_bs1_p50": 7.0, "peak_rss_mb": 280.0, "kernels": "k2", "others_cores": None},
        {"throughput_bs32": 120.0, "latency_ms_bs1_p50": 8.0, "peak_rss_mb": 310.0, "kernels": "k3", "others_cores": 1.5},
    ]
    c = combine_rounds(rounds)
    assert c["throughput_bs32"] == 120.0 and c["latency_ms_bs1_p50"] == 8.0
    assert c["rounds"]["throughput_bs32"] == [100.0, 140.0, 120.0]
    assert c["rounds"]["others_cores"] == [0.0, None, 1.5] and c["others_cores"] == 0.75
    assert c["kernels"] == "k" and c["peak_rss_mb"] == 310.0  # the largest of the fresh processes
    assert combine_rounds([]) == {}


def test_ratios_of_medians_with_round_by_round_ranges():
    def row(name, thr, lat):
        return {"name": name, "throughput_bs32": float(np.median(thr)), "latency_ms_bs1_p50": float(np.median(lat)),
                "spread": {"throughput_bs32": {"rounds": thr}, "latency_ms_bs1_p50": {"rounds": lat}}}

    base = row("teacher-fp32", [100.0, 50.0, 100.0], [10.0, 20.0, 10.0])
    fast = row("small", [300.0, 100.0, 250.0], [2.0, 5.0, 4.0])
    r = compute_ratios([base, fast], "teacher-fp32")["small"]
    assert r["throughput_bs32"] == pytest.approx(2.5)  # median 250 / median 100
    assert r["throughput_bs32_range"] == pytest.approx([2.0, 3.0])  # 300/100, 100/50, 250/100
    assert r["latency_bs1_p50"] == pytest.approx(2.5)
    assert r["latency_bs1_p50_range"] == pytest.approx([2.5, 5.0])  # 10/2, 20/5, 10/4


# --------------------------------------------------------------------------------------------------
# load


class FakeCounters:
    """Machine busy CPU-seconds, own CPU-seconds and a wall clock that advance by given steps."""

    def __init__(self, busy_per_s: float, own_per_s: float):
        self.t, self.busy_per_s, self.own_per_s = 0.0, busy_per_s, own_per_s

    def advance(self, seconds: float):
        self.t += seconds

    def meter(self, cpus=2):
        return LoadMeter(lambda: self.t * self.busy_per_s, lambda: self.t * self.own_per_s, lambda: self.t, cpus=cpus)


def test_load_meter_reports_what_others_used():
    fake = FakeCounters(busy_per_s=2.0, own_per_s=1.0)  # machine fully busy, we use one core
    m = fake.meter()
    m.start()
    fake.advance(2.0)
    assert m.stop() == pytest.approx(1.0)
    quiet = FakeCounters(busy_per_s=1.02, own_per_s=1.0)
    m = quiet.meter()
    m.start()
    quiet.advance(3.0)
    assert m.stop() == pytest.approx(0.02)
    # too short a window for 10 ms counters, no counters, no start: unknown
    m = fake.meter()
    m.start()
    fake.advance(0.1)
    assert m.stop() is None
    assert LoadMeter(lambda: None, lambda: 0.0, lambda: fake.t).stop() is None
    # a reading beyond the machine is clamped to it
    assert others_cores(CpuSample(0.0, 0.0, 0.0), CpuSample(1.0, 9.0, 0.0), cpus=2) == 2.0


def test_contention_warning_counts_only_the_cores_the_benchmark_needed():
    # 2 cores, 2 threads: nothing is free, anything beyond the tolerance is contention
    assert contention_warning(TOLERANCE_CORES / 2, 2, 2) is None
    w = contention_warning(0.5, 2, 2, "teacher-fp32")
    assert w is not None and "0.50 of 2 cores" in w and "teacher-fp32" in w and "ranking" in w
    # 16 cores, 2 threads: others may use the 14 free ones
    assert contention_warning(13.0, 16, 2) is None
    assert contention_warning(15.0, 16, 2) is not None
    assert contention_warning(None, 2, 2) is None


def test_load_summary_lists_contended_timings_and_warns():
    rows = [
        {"name": "a", "spread": {"others_cores": {"rounds": [0.0, 0.9, 0.05]}}},
        {"name": "b", "spread": {"others_cores": {"rounds": [0.1, None, 0.0]}}},
        {"name": "skipped", "spread": {}},
    ]
    s = load_summary(rows, cpus=2, threads=2, loadavg_start=[1.0, 1.0, 1.0], loadavg_end=[1.2, 1.0, 1.0])
    assert s["contended"] == [{"model": "a", "round": 1, "others_cores": 0.9}]
    assert s["others_cores_max"] == 0.9 and s["others_cores_median"] == pytest.approx(0.05)
    assert "a (round 2; 1 of 5 timings contended)" in s["warning"]
    assert s["loadavg_start"] == [1.0, 1.0, 1.0]
    quiet = load_summary(rows[1:], cpus=2, threads=2)
    assert quiet["warning"] is None and quiet["contended"] == []


def test_measure_runner_records_others_cores_and_the_cpu_clock(monkeypatch):
    from compactbert.bench import measure

    fake = FakeCounters(busy_per_s=2.0, own_per_s=0.5)
    calls = []

    def runner(feed):
        calls.append(feed["input_ids"].shape)
        fake.advance(0.1)
        return np.zeros((feed["input_ids"].shape[0], 2), dtype=np.float32)

    ticks = iter(range(0, 10**6, 7))
    monkeypatch.setitem(measure.CLOCKS, "cpu", lambda: next(ticks) / 1000.0)  # 7 ms per reading pair
    timing = {"input_ids": np.zeros((4, 8), dtype=np.int64)}
    result, _ = measure_runner(lambda: runner, timing, batch_size=4, n_warmup=1, n_latency=3, n_throughput=2,
                               clock="cpu", meter=fake.meter())
    assert result["clock"] == "cpu" and result["latency_ms_bs1_p50"] == pytest.approx(7.0)
    assert result["throughput_bs32"] == pytest.approx(4 / 0.007)
    assert result["others_cores"] == pytest.approx(1.5)  # 2 busy - 0.5 own
    assert time_calls(lambda: None, 0, 2, clock="cpu") == pytest.approx([7.0, 7.0])
    with pytest.raises(ValueError, match="unknown clock"):
        time_calls(lambda: None, 0, 1, clock="gpu")


# --------------------------------------------------------------------------------------------------
# the rounds loop


def test_measure_models_interleaves_rounds_scores_once_and_survives_failures(tiny, tmp_path):
    from compactbert.bench.plan import BenchSettings, ModelSpec, make_plan
    from compactbert.bench.run import measure_models, prepare_inputs

    root = tiny["root"]
    plan = make_plan([root / "student", root / "student"], None, [], BenchSettings(threads=1, seq_len=16, batch_size=2, rounds=3),
                     task="sst2", data=root / "dev.jsonl", out=None)
    plan.specs[1].name = "twin"
    plan.specs.append(ModelSpec("flaky", "torch-fp32", root / "teacher", root / "teacher", root / "teacher", "baseline"))
    plan.specs.append(ModelSpec("teacher-ov-fp32", "ov-fp32", root / "teacher", root / "teacher", root / "teacher",
                                "baseline", skip="skipped: openvino not installed (pip install 'compactbert[bench]')"))
    inputs = prepare_inputs(plan, tmp_path)
    seen = []

    def fake_measure(plan, spec, inp, work, tag, console, scored):
        seen.append((spec.name, scored))
        r = len([s for s in seen if s[0] == spec.name])  # this model's round, 1-based
        if spec.name == "flaky" and r == 2:
            return {"error": "RuntimeError: boom"}, None
        result = {"throughput_bs32": 100.0 * r, "latency_ms_bs1_p50": 10.0 / r, "kernels": spec.name}
        logits = np.tile([[0.0, 1.0]], (len(inp.labels), 1)) if scored else None
        return result, logits

    rows = measure_models(plan, inputs, tmp_path, measure=fake_measure)
    assert seen == [
        ("student", True), ("twin", True), ("flaky", True),  # round 1 (the skipped model never runs)
        ("twin", False), ("flaky", False),  # round 2 starts one further on; flaky fails
        ("student", False),
        ("student", False), ("twin", False),  # round 3 (ov skipped, flaky not run again)
    ]
    by = {r["name"]: r for r in rows}
    assert by["student"]["throughput_bs32"] == 200.0 and by["student"]["rounds"] == 3
    assert by["student"]["spread"]["throughput_bs32"] == {"min": 100.0, "max": 300.0, "rounds": [100.0, 200.0, 300.0]}
    assert by["student"]["accuracy"] == pytest.approx(np.mean(inputs[next(iter(inputs))].labels))
    assert by["flaky"]["throughput_bs32"] == 100.0 and "after 1 round(s): RuntimeError: boom" in by["flaky"]["error"]
    assert by["teacher-ov-fp32"]["skipped"].startswith("skipped: openvino not installed")
    assert by["teacher-ov-fp32"]["throughput_bs32"] is None and by["teacher-ov-fp32"]["rounds"] == 0


# --------------------------------------------------------------------------------------------------
# whole runs


def test_bench_json_keeps_its_fields_and_adds_rounds_spread_load(tiny, tmp_path):
    out = tmp_path / "bench.json"
    result = run_bench(
        tiny["root"] / "student", tiny["root"] / "teacher", task="sst2", data=tiny["root"] / "dev.jsonl", threads=1,
        out=out, seq_len=16, batch_size=2, n_warmup=0, n_latency=2, n_throughput=1, rounds=2,
        baselines=["torch-fp32", "torch-bf16", "runtime"], isolate=False, progress=False,
    )
    assert json.loads(out.read_text()) == result
    assert result["version"] == 2 and result["rounds"] == 2 and result["clock"] == "wall"
    m = result["machine"]
    assert {"cpu", "flags", "avx512", "vnni", "amx", "native_bf16", "summary"} <= set(m)
    assert set(result["load"]) >= {"loadavg_start", "loadavg_end", "others_cores_max", "contended", "warning"}
    assert [r["name"] for r in result["models"]] == ["student", "teacher-fp32", "teacher-torch-bf16", "teacher-runtime"]
    for r in result["models"]:
        for key in ("throughput_bs32", "latency_ms_bs1_p50", "latency_ms_bs1_p90", "kind", "role", "accuracy"):
            assert r[key] is not None, (r["name"], key)
        assert r["rounds"] == 2
        sp = r["spread"]["throughput_bs32"]
        assert len(sp["rounds"]) == 2 and sp["min"] <= r["throughput_bs32"] <= sp["max"]
    by = {r["name"]: r for r in result["models"]}
    assert by["teacher-runtime"]["kind"] == "packed" and by["teacher-runtime"]["role"] == "baseline"
    assert "compactbert runtime" in by["teacher-runtime"]["kernels"]
    assert by["teacher-torch-bf16"]["kind"] == "torch-bf16" and "bf16" in by["teacher-torch-bf16"]["kernels"]
    from compactbert.runtime.kernels import cpu_has_native_bf16

    assert (by["teacher-torch-bf16"]["note"] is None) == cpu_has_native_bf16()
    ratios = result["ratios"]
    assert ratios["baselines"]["teacher_runtime"] == "teacher-runtime"
    r = ratios["vs_teacher_runtime"]["student"]
    assert r["throughput_bs32"] == pytest.approx(by["student"]["throughput_bs32"] / by["teacher-runtime"]["throughput_bs32"])
    lo, hi = r["throughput_bs32_range"]
    assert lo <= hi
    assert set(ratios["vs_fp32"]) == {"student", "teacher-torch-bf16", "teacher-runtime"}


def test_a_missing_optional_engine_is_a_skipped_row_not_a_crash(tiny, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("openvino", "nncf") else real(name, *a))
    result = run_bench(
        tiny["root"] / "student", tiny["root"] / "teacher", threads=1, out=None, seq_len=16, batch_size=2,
        n_warmup=0, n_latency=1, n_throughput=1, rounds=1, baselines=["torch-fp32", "ov-fp32", "ov-int8"],
        isolate=False, progress=False,
    )
    by = {r["name"]: r for r in result["models"]}
    assert by["teacher-ov-fp32"]["skipped"] == "skipped: openvino not installed (pip install 'compactbert[bench]')"
    assert by["teacher-ov-int8"]["skipped"] == "skipped: openvino and nncf not installed (pip install 'compactbert[bench]')"
    assert by["teacher-ov-int8"]["throughput_bs32"] is None and "error" not in by["teacher-ov-int8"]
    assert by["student"]["throughput_bs32"] > 0 and by["teacher-fp32"]["throughput_bs32"] > 0
    from rich.console import Console

    console = Console(record=True, width=300)
    print_bench_table(result, console=console)
    text = console.export_text()
    assert "teacher-ov-fp32 (skipped)" in text
    assert "teacher-ov-fp32: skipped: openvino not installed (pip install 'compactbert[bench]')" in text


# --------------------------------------------------------------------------------------------------
# every baseline engine predicts like the teacher


def test_every_baseline_kind_predicts_like_the_teacher(tiny, tmp_path):
    import torch

    from compactbert.bench.inputs import eval_batches
    from compactbert.bench.plan import BASELINE_KINDS, OV_FILE, calibration_feeds, export_baselines
    from compactbert.bench.runners import build_runner
    from compactbert.data.sources import load_examples

    root = tiny["root"]
    examples = load_examples("sst2", "dev", root / "dev.jsonl")
    batches, _, _ = eval_batches(tiny["tok"], examples, 64, 8)
    with torch.no_grad():
        ref = np.concatenate([tiny["teacher"](**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy() for b in batches])
    assert 0.2 < ref.argmax(-1).mean() < 0.8  # both classes predicted: agreement means something
    from compactbert.bench.plan import BenchPlan, BenchSettings
    from compactbert.data.tasks import get_task

    plan = BenchPlan([], BenchSettings(seq_len=16), task=get_task("sst2"), data=root / "dev.jsonl")
    from compactbert.bench.plan import missing_engine

    here = [k for k in BASELINE_KINDS if missing_engine(k) is None]  # OpenVINO ones with the bench extra (make test)
    kinds = [k for k in here if not k.startswith("torch")]
    folders = export_baselines(root / "teacher", kinds, tmp_path, calibration_feeds(plan, root / "teacher", kinds))
    paths = {k: root / "teacher" for k in here if k.startswith("torch")}
    paths.update({k: folders[k] / (OV_FILE if k.startswith("ov") else "model.onnx") for k in kinds if k != "runtime"})
    paths["runtime"] = folders["runtime"]
    from compactbert.runtime.kernels import cpu_has_native_bf16

    # FP32 engines compute the teacher's function; the others round (bf16, int8, fp16 packed weights)
    exact = {"torch-fp32", "ort-fp32", "ort-fp32-fused", "ov-fp32"} | ({"ov-default"} if not cpu_has_native_bf16() else set())
    scale = float(np.abs(ref).max())
    for kind in here:
        runner = build_runner("packed" if kind == "runtime" else kind, paths[kind], 1)
        got = np.concatenate([runner(b) for b in batches])
        agree = (got.argmax(-1) == ref.argmax(-1)).mean()
        diff = float(np.abs(got - ref).max())
        if kind in exact:
            assert agree == 1.0 and diff < 1e-3 * scale, (kind, agree, diff)
        else:  # int8 / bf16 / fp16 weights: the same classes (NNCF on 64 calibration rows moves logits most)
            assert agree >= 0.95, (kind, agree, diff)


def test_packed_models_on_each_backend(tiny, tmp_path):
    from compactbert.errors import UserError
    from compactbert.export.pack import export_packed
    from compactbert.runtime.engines import available_engines

    packed = tmp_path / "student-packed"
    export_packed(tiny["student"], tiny["tok"], packed, float_dtype="float32")
    backends = ["compactbert", *available_engines()]
    result = run_bench(
        packed, None, task="sst2", data=tiny["root"] / "dev.jsonl", baselines=(), threads=1, out=None, seq_len=16,
        batch_size=2, n_warmup=0, n_latency=1, n_throughput=1, rounds=1, backends=backends, isolate=False,
        progress=False,
    )
    rows = {r["name"]: r for r in result["models"]}
    assert list(rows) == ["student-packed"] + [f"student-packed@{b}" for b in backends[1:]]
    for b in backends[1:]:
        r = rows[f"student-packed@{b}"]
        assert r["kind"] == f"packed-{b}" and r["throughput_bs32"] > 0
        assert r["kernels"].startswith({"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[b])
        assert r["accuracy"] == rows["student-packed"]["accuracy"]  # the same model, same predictions
        assert r["file_bytes"] == rows["student-packed"]["file_bytes"]  # the packed directory is the artefact
    with pytest.raises(UserError, match="--backends: 'tensorrt' is not valid"):
        run_bench(packed, None, baselines=(), out=None, backends=["tensorrt"], progress=False)
