"""Several bit widths inside one weight (groupbits), through size, the packed format and the runtime:
what size counts is what lands on disk, 0-bit groups take nothing and leave the model, and the
runtime computes what the training-time model computes."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from compactbert.export.pack import export_packed, read_packed
from compactbert.nn.quant.groupbits import GroupBitsQuantizer
from compactbert.nn.surgery import compress_modules, encoder_linear_patterns
from compactbert.runtime import load
from compactbert.size import size_report
from test_runtime import HEAD_DIM, batch, hf_logits, layer_linears, run, tiny


def mixed(arch: str = "bert"):
    """Layer 0: FFN up with groups of 16 rows at 4, 2, 0 and 8 bits (16 neurons at 0 bits); V with
    head 1 at 0 bits; Q with 2, 0, 4, 4 (a half-empty head that stays); O with row-masked rows on top
    of 1/3/5/8 bits; down at 3 and 6 bits. Layer 1 unquantized."""
    model = tiny(arch)
    compress_modules(model, encoder_linear_patterns(model))
    l0 = layer_linears(model, 0)
    l0["up"].weight_quantizer = GroupBitsQuantizer(16, [4, 2, 0, 8])
    l0["v"].weight_quantizer = GroupBitsQuantizer(HEAD_DIM, [8, 0, 3, 3])
    l0["q"].weight_quantizer = GroupBitsQuantizer(HEAD_DIM, [2, 0, 4, 4])
    l0["o"].weight_quantizer = GroupBitsQuantizer(8, [1, 3, 5, 8])
    m = torch.ones_like(l0["o"].weight)
    m[10:14] = 0  # whole output rows: stored as the kept block
    l0["o"].weight_mask = m
    l0["down"].weight_quantizer = GroupBitsQuantizer(16, [3, 6])
    return model.eval()


def disk_bytes(folder, entry) -> int:
    """Bytes of an entry's tensors as stored in model.safetensors."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in entry["parts"].values())


def size_of(report, name: str) -> int:
    return next(t["bytes"] for t in report["tensors"] if t["name"] == name)


def test_size_is_the_bytes_on_disk(tmp_path):
    model = mixed()
    report = size_report(model, uncompressed_bits=32)
    kept = export_packed(model, None, tmp_path / "kept", float_dtype="float32", remove_pruned=False)
    assert kept["payload_bytes"] == report["compressed_bytes"]
    for cname, hf in [("ffn.up", "intermediate.dense"), ("attn.v", "attention.self.value"),
                      ("attn.o", "attention.output.dense"), ("ffn.down", "output.dense")]:
        entry = kept["tensors"][f"layer.0.{cname}.weight"]
        assert entry["bytes"] == disk_bytes(tmp_path / "kept", entry) == size_of(report, f"bert.encoder.layer.0.{hf}.weight")
    # up: 16 rows x 32 at 4, 2 and 8 bits; nothing for the 0-bit rows; fp16 scale + minimum per stored row
    up = kept["tensors"]["layer.0.ffn.up.weight"]
    assert up["bytes"] == 16 * 32 * (4 + 2 + 8) // 8 + 48 * 2 * 2
    assert up["quant"]["row_bits"] == [[4, 16], [2, 16], [0, 16], [8, 16]]
    assert sorted(up["parts"]) == ["codes.2", "codes.4", "codes.8", "mins", "scales"]
    o = kept["tensors"]["layer.0.attn.o.weight"]
    assert o["encoding"] == "rows" and o["quant"]["params"] == ["scales", "mins"]
    # removing the 0-bit neurons does not change what up costs: they cost nothing already
    removed = export_packed(model, None, tmp_path / "removed", float_dtype="float32")
    up2 = removed["tensors"]["layer.0.ffn.up.weight"]
    assert up2["shape"] == [48, 32] and up2["quant"]["row_bits"] == [[4, 16], [2, 16], [8, 16]]
    assert up2["bytes"] == disk_bytes(tmp_path / "removed", up2) == up["bytes"]
    assert removed["payload_bytes"] < kept["payload_bytes"]  # down lost 16 columns, V and O one head


def test_decoded_weights_are_bitwise_the_training_weights(tmp_path):
    model = mixed()
    export_packed(model, None, tmp_path, float_dtype="float32", remove_pruned=False)
    t = read_packed(tmp_path).tensors
    l0 = layer_linears(model, 0)
    for name, key in [("up", "ffn.up"), ("q", "attn.q"), ("o", "attn.o"), ("down", "ffn.down")]:
        assert torch.equal(t[f"layer.0.{key}.weight"], l0[name].effective_weight().detach()), name
    assert bool((t["layer.0.ffn.up.weight"][32:48] == 0).all())


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_runtime_computes_the_training_time_logits(tmp_path, arch):
    inputs, model = batch(arch), mixed(arch)
    ref = hf_logits(model, arch, *inputs)
    export_packed(model, None, tmp_path, float_dtype="float32")
    pm = load(tmp_path, dtype="fp32")
    assert pm.config["ffn_per_layer"] == [48, 64]  # the 0-bit group of FFN neurons is gone
    assert pm.config["heads_per_layer"] == [3, 4]  # and so is the head whose V rows are 0 bits
    out = run(pm, arch, *inputs)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    assert math.isfinite(float(out.abs().max()))
