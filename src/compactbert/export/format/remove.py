"""Physical removal: attention heads and FFN neurons whose weights are all zero leave the model.

A head is dropped (its Q/K/V rows and attention-output columns) when its value rows or its output
columns are all zero in the effective (masked, quantized) weights; a head whose value weight is
zero still adds the constant ``W_o[:, head] @ b_v[head]`` (softmax weights sum to 1), folded into
the output bias. An FFN neuron is dropped when its row of the first matrix or its column of the
second is all zero; the constant ``W_2[:, j] * act(b_1[j])`` of a zero row is folded into the
second bias. Rows a quantizer stores at 0 bits (a removed row group) are zero rows, so such groups
leave the model the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .weight import PackedWeight

__all__ = ["act_value", "remove_heads", "remove_neurons"]


def act_value(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu(x)
    return F.silu(x)


def remove_heads(ws: dict[str, PackedWeight], i: int, head_dim: int) -> tuple[int, int]:
    """Drop removable heads of layer ``i`` in place; return (heads before, heads after)."""
    q, k, v, o = (ws[f"layer.{i}.attn.{n}"] for n in ("q", "k", "v", "o"))
    n_heads = v.eff.shape[0] // head_dim
    if n_heads == 0:
        return 0, 0
    v_zero = (v.eff.reshape(n_heads, head_dim, -1) == 0).flatten(1).all(dim=1)  # (heads,)
    o_zero = (o.eff.reshape(o.eff.shape[0], n_heads, head_dim) == 0).permute(1, 0, 2).flatten(1).all(dim=1)
    drop = v_zero | o_zero
    if not bool(drop.any()):
        return n_heads, n_heads
    fold = v_zero & ~o_zero
    if bool(fold.any()) and v.bias is not None:
        cols = fold.repeat_interleave(head_dim)  # (heads * head_dim,)
        extra = (o.eff[:, cols].double() @ v.bias[cols].double()).float()  # (hidden,)
        o.bias = (o.bias if o.bias is not None else torch.zeros(o.eff.shape[0])) + extra
    keep = (~drop).repeat_interleave(head_dim)
    for n in ("q", "k", "v"):
        ws[f"layer.{i}.attn.{n}"] = ws[f"layer.{i}.attn.{n}"].select(rows=keep)
    ws[f"layer.{i}.attn.o"] = o.select(cols=keep)
    return n_heads, int((~drop).sum())


def remove_neurons(ws: dict[str, PackedWeight], i: int, act: str) -> tuple[int, int]:
    """Drop removable FFN neurons of layer ``i`` in place; return (width before, width after)."""
    up, down = ws[f"layer.{i}.ffn.up"], ws[f"layer.{i}.ffn.down"]
    width = up.eff.shape[0]
    up_zero = (up.eff == 0).all(dim=1)  # (width,)
    down_zero = (down.eff == 0).all(dim=0)  # (width,)
    drop = up_zero | down_zero
    if not bool(drop.any()):
        return width, width
    fold = up_zero & ~down_zero
    if bool(fold.any()) and up.bias is not None:
        const = act_value(act, up.bias[fold])  # (n_fold,)
        extra = (down.eff[:, fold].double() @ const.double()).float()  # (hidden,)
        down.bias = (down.bias if down.bias is not None else torch.zeros(down.eff.shape[0])) + extra
    keep = ~drop
    ws[f"layer.{i}.ffn.up"] = up.select(rows=keep)
    ws[f"layer.{i}.ffn.down"] = down.select(cols=keep)
    return width, int(keep.sum())
