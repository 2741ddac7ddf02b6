"""compactbert report: collecting eval/size/bench files, the table, the PNGs and the HTML page."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from compactbert.errors import UserError
from compactbert.report import collect, format_table, make_report
from compactbert.report.plots import draw_scatter, pareto_front

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# name, kind, accuracy, bytes, p50, p90, throughput, peak RSS
BENCH_MODELS = [
    ("teacher-fp32", "torch-fp32", 0.9243, 90_868_000, 8.1, 9.0, 76.0, 612),
    ("teacher-ort-fp32", "ort-fp32", 0.9243, 91_400_000, 5.2, 5.6, 82.0, 210),
    ("teacher-ort-int8", "ort-int8", 0.9140, 23_100_000, 4.9, 5.3, 110.5, 150),
    ("xtc-6L-binary", "packed", 0.9037, 3_050_000, 2.1, 2.4, 560.0, 330),
    ("xtc-3L-binary", "packed", 0.8853, 1_690_000, 1.3, 1.5, 980.0, 300),
]


def write_inputs(root: Path) -> dict[str, Path]:
    """A bench.json, a compress run (eval.json + size.json) and a packed dir with its own eval.json."""
    root.mkdir(parents=True, exist_ok=True)
    packed = root / "pofa-90"
    packed.mkdir()
    (packed / "manifest.json").write_text(json.dumps({"format_version": 1}))
    (packed / "model.safetensors").write_bytes(b"\0" * 5000)
    (packed / "config.json").write_text("{}")
    (packed / "eval.json").write_text(json.dumps({"task": "sst2", "split": "dev", "n": 872, "metrics": {"accuracy": 0.8991}}))
    models = [
        {"name": n, "kind": k, "role": "baseline" if n.startswith("teacher") else "compressed", "accuracy": a,
         "metric": "accuracy", "file_bytes": b, "weights_bytes": b - 1000, "latency_ms_bs1_p50": p50,
         "latency_ms_bs1_p90": p90, "throughput_bs32": t, "peak_rss_mb": m, "kernels": f"kernels of {n}",
         "path": f"/nonexistent/{n}"}
        for n, k, a, b, p50, p90, t, m in BENCH_MODELS
    ]
    # the packed dir was benchmarked too: its bench entry has its path and no accuracy
    models.append({"name": "pofa-90", "kind": "packed", "role": "compressed", "accuracy": None,
                   "file_bytes": 9_800_000, "latency_ms_bs1_p50": 2.9, "latency_ms_bs1_p90": 3.3,
                   "throughput_bs32": 400.0, "peak_rss_mb": 340, "kernels": "bf16 oneDNN", "path": str(packed)})
    bench = root / "bench.json"
    bench.write_text(json.dumps({"version": 1, "task": "sst2", "threads": 2, "models": models}))
    run = root / "runs" / "aqbert-search"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"kind": "compress", "task": "sst2"}))
    (run / "eval.json").write_text(json.dumps({"task": "sst2", "split": "dev", "n": 872, "metrics": {"accuracy": 0.8979}}))
    (run / "size.json").write_text(json.dumps({"compressed_bytes": 6_200_000, "dense_fp32_bytes": 90_000_000}))
    return {"bench": bench, "run": run, "packed": packed}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_collect_merges_bench_and_model_dirs(tmp_path):
    paths = write_inputs(tmp_path / "in")
    entries = collect([paths["bench"], paths["run"], paths["packed"]])
    by = {e["name"]: e for e in entries}
    assert list(by) == [n for n, *_ in BENCH_MODELS] + ["pofa-90", "aqbert-search"]
    # the packed dir and its bench entry are one row: bench timings, eval.json accuracy
    pofa = by["pofa-90"]
    assert pofa["accuracy"] == pytest.approx(0.8991)
    assert pofa["latency_ms_bs1_p50"] == 2.9 and pofa["throughput_bs32"] == 400.0
    assert pofa["file_bytes"] == 9_800_000  # the bench's measurement wins over the tiny stand-in files
    # the run: accuracy from eval.json, predicted packed size from size.json, no timings
    run = by["aqbert-search"]
    assert run["accuracy"] == pytest.approx(0.8979) and run["file_bytes"] == 6_200_000
    assert run["latency_ms_bs1_p50"] is None and run["kind"] == "run (compress)"
    assert by["teacher-ort-int8"]["kernels"] == "kernels of teacher-ort-int8"


def test_packed_dir_alone_counts_its_files(tmp_path):
    paths = write_inputs(tmp_path / "in")
    (entry,) = collect([paths["packed"]])
    assert entry["kind"] == "packed"
    assert entry["file_bytes"] == 5000 + len(json.dumps({"format_version": 1})) + 2  # eval.json not counted
    assert entry["weights_bytes"] == 5000


def test_report_writes_pngs_html_and_markdown(tmp_path):
    paths = write_inputs(tmp_path / "in")
    out = tmp_path / "report"
    result = make_report([paths["bench"], paths["run"], paths["packed"]], out, title="SST-2 report")
    names = [p.name for p in result["plots"]]
    assert names == ["accuracy_vs_bytes.png", "accuracy_vs_latency.png", "accuracy_vs_throughput.png"]
    for png in result["plots"]:
        assert png.stat().st_size > 20_000
        assert png_size(png) == (1350, 960)  # 9 x 6.4 inches at 150 dpi

    page = (out / "index.html").read_text()
    md = (out / "report.md").read_text()
    assert page.count("data:image/png;base64,") == 3  # self-contained
    expected = [
        # every model name, and its numbers as the table prints them
        "teacher-fp32", "92.43", "90.9 MB", "8.10", "9.00", "76.0", "612",
        "teacher-ort-fp32", "91.4 MB", "5.20", "82.0", "1.08x", "210",
        "teacher-ort-int8", "91.40", "23.1 MB", "3.93x", "4.90", "110.5", "1.45x",
        "xtc-6L-binary", "90.37", "3.05 MB", "29.8x", "2.10", "560.0", "7.37x",
        "xtc-3L-binary", "88.53", "1.69 MB", "53.8x", "1.30", "980.0", "12.9x",
        "pofa-90", "89.91", "9.8 MB", "2.90", "400.0",
        "aqbert-search", "89.79", "6.2 MB", "14.7x",
    ]
    for text in expected:
        assert text in page, text
        assert text in md, text
    assert "kernels of teacher-ort-int8" in page
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 7  # header + one row per model
    assert json.loads((out / "report.json").read_text())["entries"][0]["name"] == "teacher-fp32"


def test_ratios_stay_within_each_benchmark(tmp_path):
    from compactbert.report.core import COLUMNS, table_rows

    paths = write_inputs(tmp_path / "a")
    other = tmp_path / "b" / "bench.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"models": [
        {"name": "teacher-fp32", "kind": "torch-fp32", "role": "baseline", "file_bytes": 1000, "throughput_bs32": 10.0},
        {"name": "tiny", "kind": "packed", "role": "compressed", "file_bytes": 250, "throughput_bs32": 50.0},
    ]}))
    entries = collect([paths["bench"], other, paths["run"]])
    rows = {r[0]: dict(zip(COLUMNS, r)) for r in table_rows(entries)}
    assert rows["tiny"]["x smaller"] == "4.00x" and rows["tiny"]["x fp32 speed"] == "5.00x"  # vs its own teacher
    assert rows["teacher-fp32 (b)"]["x smaller"] == "-"  # named by the folder of its bench.json
    assert rows["xtc-6L-binary"]["x smaller"] == "29.8x"  # vs the first bench's teacher
    assert rows["aqbert-search"]["x smaller"] == "14.7x"  # outside a bench: the first FP32 teacher


def test_plots_without_timings_are_skipped(tmp_path):
    paths = write_inputs(tmp_path / "in")
    out = tmp_path / "report"
    (out).mkdir()
    (out / "accuracy_vs_latency.png").write_bytes(b"stale")  # an earlier report's plot
    (out / "report.json").write_text('{"entries": []}\n')
    result = make_report([paths["run"]], out)
    assert [p.name for p in result["plots"]] == ["accuracy_vs_bytes.png"]
    assert not (out / "accuracy_vs_latency.png").exists()  # a stale plot is removed
    assert png_size(out / "accuracy_vs_bytes.png") == (1350, 960)


def test_labels_do_not_overlap_in_a_crowded_plot():
    import random

    import matplotlib.pyplot as plt

    rng = random.Random(1)
    entries = [
        {"name": f"model-{i}-{'long-name' if i % 3 == 0 else 'x'}", "kind": "packed" if i % 2 else "ort-int8",
         "accuracy": 0.90 + rng.random() * 0.01, "file_bytes": 5e6 * (1 + rng.random() * 0.6)}
        for i in range(14)
    ]
    fig, boxes = draw_scatter(entries, "file_bytes", "size", "crowded", x_unit="bytes")
    try:
        assert len(boxes) == 14
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                assert not overlap, (a, b)
    finally:
        plt.close(fig)


def test_pareto_front():
    pts = [(1.0, 88.0), (3.0, 90.0), (2.0, 87.0), (5.0, 91.0), (4.0, 89.0), (5.0, 90.5)]
    assert pareto_front(pts) == [(1.0, 88.0), (3.0, 90.0), (5.0, 91.0)]


def test_markdown_table_escapes_pipes():
    text = format_table([{"name": "a|b", "kind": "packed", "accuracy": 0.5, "file_bytes": 1000}])
    assert "a\\|b" in text and "50.00" in text and "1 kB" in text


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "nothing to report"),
        (lambda d: (d / "bad.json").write_text("{nope") and d / "bad.json", "not valid JSON"),
        (lambda d: (d / "x.json").write_text("[1, 2]") and d / "x.json", "neither a bench.json"),
        (lambda d: (d / "eval.json").write_text('{"task": "sst2"}') and d / "eval.json", "no 'metrics'"),
        (lambda d: (d / "bench.json").write_text('{"models": [{"kind": "x"}]}') and d / "bench.json", "no 'name'"),
    ],
)
def test_bad_inputs_are_user_errors(tmp_path, make, match):
    with pytest.raises(UserError, match=match):
        collect([make(tmp_path)])


def test_oversized_or_deeply_nested_json_is_refused_before_parsing(tmp_path, monkeypatch):
    import importlib

    collect_module = importlib.import_module("compactbert.report.collect")
    monkeypatch.setattr(collect_module, "MAX_JSON_BYTES", 1000)
    big = tmp_path / "bench.json"
    big.write_text('{"models": [' + ", ".join(['{"name": "m"}'] * 100) + "]}")  # 1.4 kB
    with pytest.raises(UserError, match=r"bench.json' is larger than 0 KiB"):
        collect([big])
    deep = tmp_path / "deep" / "eval.json"
    deep.parent.mkdir()
    monkeypatch.setattr(collect_module, "MAX_JSON_BYTES", 10**6)
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        collect([deep])


def test_output_that_is_a_file_is_a_user_error(tmp_path):
    paths = write_inputs(tmp_path / "in")
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        make_report([paths["run"]], target)


def test_a_run_and_its_packed_export_of_the_same_name_are_told_apart_by_kind(tmp_path):
    paths = write_inputs(tmp_path / "in")
    packed = tmp_path / "exports" / "aqbert-search"  # exported from the run, same folder name
    packed.mkdir(parents=True)
    (packed / "manifest.json").write_text(json.dumps({"format_version": 1}))
    (packed / "model.safetensors").write_bytes(b"\0" * 700)
    (packed / "config.json").write_text("{}")
    names = [e["name"] for e in collect([paths["run"], packed])]
    assert names == ["aqbert-search", "aqbert-search [packed]"]
