"""`compactbert report` draws the chosen bit widths of mixed-precision models: one PNG per model
(matrices x row groups, coloured by bits) and a table of average bits per layer and matrix kind;
models without groupbits weights get no such picture."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from compactbert.errors import UserError
from compactbert.methods.mixed_precision import widths_from_spec
from compactbert.report import collect, make_report
from compactbert.report.widths import (
    NO_GROUP,
    draw_widths,
    layer_index,
    matrix_kind,
    summary_table,
    widths_figsize,
    widths_matrix,
    widths_of_folder,
    widths_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def bert(layer: int, what: str) -> str:
    names = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attn-out": "attention.output.dense", "ffn-in": "intermediate.dense", "ffn-out": "output.dense"}
    return f"bert.encoder.layer.{layer}.{names[what]}"


# ------------------------------------------------------------------------------------- the data
def test_kinds_and_layers_of_bert_distilbert_and_packed_names():
    assert [matrix_kind(bert(0, k)) for k in ("query", "key", "value", "attn-out", "ffn-in", "ffn-out")] == [
        "query", "key", "value", "attn-out", "ffn-in", "ffn-out"]
    distil = "distilbert.transformer.layer.4."
    assert [matrix_kind(distil + s) for s in ("attention.q_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2")] == [
        "query", "attn-out", "ffn-in", "ffn-out"]
    assert matrix_kind("layer.2.attn.v.weight") == "value" and matrix_kind("layer.2.ffn.down") == "ffn-out"
    assert matrix_kind("classifier") is None
    assert layer_index(bert(11, "key")) == 11 and layer_index(distil + "ffn.lin1") == 4 and layer_index("pooler.dense") is None


def test_widths_matrix_orders_layers_then_kinds_and_pads_shorter_rows():
    widths = {  # given out of order; FFN-in has twice the groups
        bert(1, "ffn-out"): [2, 2], bert(0, "ffn-in"): [0, 2, 4, 8], bert(0, "query"): [4, 0],
        bert(1, "query"): [8, 8], bert(0, "ffn-out"): [0, 4], "bert.pooler.dense": [2, 4],
    }
    matrix, names = widths_matrix(widths)
    assert names == [bert(0, "query"), bert(0, "ffn-in"), bert(0, "ffn-out"), bert(1, "query"), bert(1, "ffn-out"),
                     "bert.pooler.dense"]
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[4, 0, NO_GROUP, NO_GROUP], [0, 2, 4, 8], [0, 4, NO_GROUP, NO_GROUP],
                               [8, 8, NO_GROUP, NO_GROUP], [2, 2, NO_GROUP, NO_GROUP], [2, 4, NO_GROUP, NO_GROUP]]


def test_summary_averages_by_kind_layer_and_overall():
    widths = {bert(0, "query"): [4, 0], bert(0, "ffn-in"): [0, 2, 4, 8], bert(1, "query"): [8, 8]}
    s = widths_summary(widths)
    assert s["by_kind"] == {"query": 5.0, "ffn-in": 3.5}  # (4+0+8+8)/4, (0+2+4+8)/4
    assert s["by_layer"] == {0: 3.0, 1: 8.0}  # (4+0+0+2+4+8)/6
    assert s["cells"] == {(0, "query"): 2.0, (0, "ffn-in"): 3.5, (1, "query"): 8.0}
    assert s["overall"] == pytest.approx(34 / 8) and s["pruned_share"] == 2 / 8
    header, rows = summary_table(s)
    assert header == ["layer", "query", "ffn-in", "layer avg"]
    assert rows == [["0", "2.00", "3.50", "3.00"], ["1", "8.00", "-", "8.00"], ["all", "5.00", "3.50", "4.25"]]
    # groups of different row counts weigh by their rows
    assert widths_summary({"a": [8], "b": [0]}, rows_per_group={"a": 3, "b": 1})["overall"] == 6.0


def test_the_drawn_image_is_the_widths_matrix():
    import matplotlib.pyplot as plt

    widths = {bert(0, "query"): [4, 0, 2], bert(0, "ffn-in"): [0, 2, 4, 8, 8, 0]}
    fig = draw_widths(widths, "t", dpi=50)
    try:
        (image,) = fig.axes[0].images
        assert np.array_equal(np.asarray(image.get_array()), widths_matrix(widths)[0])
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels == ["0 bits (pruned)", "2 bits", "4 bits", "8 bits", "no group"]
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["L0 query", "L0 ffn-in"]
    finally:
        plt.close(fig)
    assert draw_widths({}, "t") is None


def test_malformed_widths_in_a_spec_or_manifest_are_one_line_user_errors(tmp_path):
    bad = {"modules": {"layer.0.q": {"weight_quantizer": {"kind": "groupbits", "group_bits": [2, "x"]}}}}
    (tmp_path / "compression.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"group_bits is \[2, 'x'\]; valid: a non-empty list of integers 0\.\.8"):
        widths_of_folder(tmp_path)
    packed = tmp_path / "packed"
    packed.mkdir()
    entry = {"quant": {"spec": {"kind": "groupbits", "group_bits": [9]}}, "source": "bert.encoder.layer.0.x.weight"}
    (packed / "manifest.json").write_text(json.dumps({"tensors": {"layer.0.q.weight": entry}}))
    with pytest.raises(UserError, match=r"tensor 'layer\.0\.q\.weight': group_bits is not a list .* integers 0\.\.8"):
        widths_of_folder(packed)


# ------------------------------------------------------------------------------------- end to end
RECIPE = """
bf16: false
stages:
  - name: search
    steps: 3
    batch_size: 16
    methods:
      - {type: mixed_precision_search, budget: {avg_bits: 2.5}, row_group_size: 8, n0: 0, n1: 0, heldout: 0.25,
         compile: false}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A toy teacher folder, a 3-step AQ-BERT search run on it (mixed widths) and its packed export."""
    from compactbert import api
    from toy import make_tiny_model, write_toy_glue

    root = tmp_path_factory.mktemp("widths")
    data = write_toy_glue(root / "glue", "sst2", n_train=48, n_dev=16)
    teacher = make_tiny_model(root / "bert", "bert", hidden_size=32, num_heads=2, intermediate_size=64)
    (root / "search.yaml").write_text(RECIPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the search is the last stage: a warning, as intended
        run = api.compress(str(root / "search.yaml"), teacher, "sst2", root / "aq-run", data=str(data), progress=False)
    packed = api.export(run, root / "aq-packed")
    return {"teacher": Path(teacher), "run": Path(run), "packed": Path(packed)}


def test_report_draws_one_widths_picture_per_mixed_precision_model(runs, tmp_path):
    spec = widths_from_spec(runs["run"] / "model" / "compression.json")
    assert len(spec) == 12 and len({b for bits in spec.values() for b in bits}) > 1  # mixed widths
    result = make_report([runs["teacher"], runs["run"], runs["packed"]], tmp_path / "report")
    by = {e["name"]: e for e in result["entries"]}
    assert by["aq-run"]["widths"] == spec and by["aq-packed"]["widths"] == spec  # the export keeps them
    assert by["bert"]["widths"] is None  # a float model: no picture
    assert [p.name for p in result["widths_plots"]] == ["widths_aq-run.png", "widths_aq-packed.png"]
    matrix, names = widths_matrix(spec)
    assert matrix.shape == (12, 8)  # 2 layers x 6 matrices; FFN-in 64 rows = 8 groups of 8, the others 4
    for i, name in enumerate(names):
        assert matrix[i, : len(spec[name])].tolist() == spec[name]
    w, h = widths_figsize(12)
    for png in result["widths_plots"]:
        assert png_size(png) == (round(w * 100), round(h * 100))
        assert png.stat().st_size > 10_000  # drawn, not blank
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + 2  # accuracy vs bytes + two widths pictures
    assert "Bit widths per row group" in page and "layer avg" in page
    md = (tmp_path / "report" / "report.md").read_text()
    s = widths_summary(spec)
    kinds = " | ".join(f"{v:.2f}" for v in s["by_kind"].values())
    assert f"| all | {kinds} | {s['overall']:.2f} |" in md
    assert "![widths of aq-run](widths_aq-run.png)" in md
    # an earlier report, widths pictures included, is replaced as a whole
    again = make_report([runs["teacher"]], tmp_path / "report")
    assert again["widths_plots"] == [] and not list((tmp_path / "report").glob("widths_*.png"))


def test_models_without_groupbits_get_no_widths_picture(runs, tmp_path):
    (entry,) = collect([runs["teacher"]])
    assert entry["widths"] is None
    result = make_report([runs["teacher"]], tmp_path / "r")
    assert result["widths_plots"] == [] and not list((tmp_path / "r").glob("widths_*"))
    assert "Bit widths" not in (tmp_path / "r" / "index.html").read_text()
