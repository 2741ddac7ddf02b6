"""benchmarks/bench_engines.py --section: one machine's engine table goes to its own RESULTS
section and leaves another machine's in place."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_engines  # noqa: E402


def test_a_named_section_is_replaced_and_the_default_one_kept(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text("<!-- bench_engines:start -->\nAVX2 table\n<!-- bench_engines:end -->\n\n"
                       "<!-- bench_engines_vnni:start -->\nold VNNI table\n<!-- bench_engines_vnni:end -->\n")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"load": {"warning": None}}))
    monkeypatch.setattr(bench_engines, "section", lambda result, command, name, note="": f"new table for {name}\n")
    argv = ["--teacher", "t", "--from-json", str(bench), "--command", "c", "--results", str(results)]
    assert bench_engines.main(argv + ["--section", "bench_engines_vnni"]) == 0
    text = results.read_text()
    assert "AVX2 table" in text and "old VNNI table" not in text and "new table for bench_engines_vnni" in text
    assert bench_engines.main(argv) == 0  # the default section is still bench_engines
    assert "AVX2 table" not in results.read_text() and "new table for bench_engines\n" in results.read_text()
