"""A lean encoder forward for BERT / RoBERTa / DistilBERT / ELECTRA layouts, built from dense weights.

Compared with running the Hugging Face module in bf16 it:

* fuses Q, K and V into one product (``(tokens, hidden) @ (hidden, 3 * heads * head_dim)``);
* fuses bias, GELU and the residual add into the products (oneDNN post-ops, :mod:`.kernels`);
* takes per-layer head counts and FFN widths from the config (pruned heads and neurons are
  physically absent; a layer with no head or no neuron left adds only its constant bias);
* in the last layer computes only the ``[CLS]`` row after the attention's keys and values (the
  classifier reads nothing else), which saves ~1/num_layers of the work;
* runs the small classification head in float32;
* for a sentence-embedding model (packed without a head), :meth:`LeanEncoder.token_states` returns
  every token's last-layer state, for the pooling to read.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import ActQuant, Int8Linear, Linear, onednn_int8_max_level

__all__ = ["LeanEncoder"]


class _Layer(nn.Module):
    """One encoder layer's weights (absent parts are None)."""

    def __init__(self, heads: int, qkv, q, k, v, o, o_const, ln1, up, down, down_const, ln2):
        super().__init__()
        self.heads = heads
        self.qkv, self.q, self.k, self.v, self.o = qkv, q, k, v, o  # fused Q/K/V, or separate ones
        self.up, self.down = up, down
        # (hidden,) output of an attention block with no heads / an FFN with no neurons
        self.register_buffer("o_const", o_const)
        self.register_buffer("down_const", down_const)
        self.register_buffer("ln1_w", ln1[0])
        self.register_buffer("ln1_b", ln1[1])
        self.register_buffer("ln2_w", ln2[0])
        self.register_buffer("ln2_b", ln2[1])


class _Builder:
    """Builds the runtime's linears from decoded tensors: fused Q/K/V where the three share their
    input quantization, exact int8 products where the weight has integer levels and the input
    quantizer gives int8 codes."""

    def __init__(self, tensors: dict[str, torch.Tensor], aq: dict[str, dict[str, Any]],
                 codes: dict[str, tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype, backend: str,
                 hidden: int, head_dim: int):
        self.tensors, self.aq, self.codes = tensors, aq, codes
        self.dtype, self.backend, self.hidden, self.head_dim = dtype, backend, hidden, head_dim

    def tensor(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def act_quant_of(self, name: str) -> ActQuant | None:
        spec = self.aq.get(name)
        return ActQuant(spec["spec"], spec.get("params")) if spec else None

    def int8_ok(self, name: str, quant: ActQuant | None) -> bool:
        """An exact int8 product: integer weight levels within what this CPU's int8 product holds
        exactly (:func:`onednn_int8_max_level`), and an input quantizer that gives int8 codes."""
        code = self.codes.get(f"{name}.weight")
        return (quant is not None and code is not None and quant.exact_int8
                and int(code[0].abs().max()) <= onednn_int8_max_level())

    def lin(self, name: str, dt: torch.dtype | None = None, backend: str | None = None) -> Linear | Int8Linear:
        quant = self.act_quant_of(name)
        bias = self.tensors.get(f"{name}.bias")
        if self.int8_ok(name, quant):
            levels, scales = self.codes[f"{name}.weight"]
            return Int8Linear(levels, scales, bias, quant, dt or self.dtype)
        return Linear(self.tensor(f"{name}.weight"), bias, dt or self.dtype, backend or self.backend, quant)

    def _constant(self, name: str) -> torch.Tensor:
        bias = self.tensors.get(name)
        return (bias if bias is not None else torch.zeros(self.hidden)).to(self.dtype)

    def attention(self, p: str, heads: int) -> tuple:
        """(qkv, q, k, v, o, o_const) of layer prefix ``p``: a fused QKV linear, or three, or none."""
        if heads == 0:
            return None, None, None, None, None, self._constant(f"{p}.attn.o.bias")
        names = [f"{p}.attn.{n}" for n in "qkv"]
        keys = {(self.act_quant_of(n).key() if n in self.aq else None) for n in names}
        if len(keys) != 1:
            q, k, v = (self.lin(n) for n in names)
            return None, q, k, v, self.lin(f"{p}.attn.o"), None
        bs = [self.tensors.get(f"{n}.bias") for n in names]
        b = torch.cat([x if x is not None else torch.zeros(heads * self.head_dim) for x in bs])
        quant = self.act_quant_of(names[0])
        if all(self.int8_ok(n, quant) for n in names):
            parts = [self.codes[f"{n}.weight"] for n in names]
            qkv = Int8Linear(torch.cat([c[0] for c in parts]), torch.cat([c[1] for c in parts]), b, quant, self.dtype)
        else:
            w = torch.cat([self.tensor(f"{n}.weight") for n in names])  # (3 * heads * d, hidden)
            qkv = Linear(w, b, self.dtype, self.backend, quant)
        return qkv, None, None, None, self.lin(f"{p}.attn.o"), None

    def ffn(self, p: str, width: int) -> tuple:
        """(up, down, down_const) of layer prefix ``p``."""
        if width == 0:
            return None, None, self._constant(f"{p}.ffn.down.bias")
        return self.lin(f"{p}.ffn.up"), self.lin(f"{p}.ffn.down"), None


class LeanEncoder(nn.Module):
    """Sequence-classification forward over dense weights.

    Args:
        config: The packed ``config.json`` (``arch``, ``hidden_size``, ``head_dim``,
            ``heads_per_layer``, ``ffn_per_layer``, ``hidden_act``, ``layer_norm_eps``, ...).
        tensors: Canonical name -> float32 tensor (``layer.0.attn.q.weight`` ...).
        dtype: Compute dtype: ``torch.bfloat16`` or ``torch.float32``.
        backend: ``"mkldnn"`` or ``"torch"`` (see :class:`~.kernels.Linear`).
        act_quant: Canonical linear name -> ``{"spec", "params"}`` (``PackedWeights.act_quant``):
            activation quantizers to emulate, or None to run without them.
        vocab_map: (original vocab,) old token id -> embedding row, after vocabulary pruning.
        int8_codes: Weight name -> (int8 levels, per-row scales) (``PackedWeights.row_codes``): a
            linear with a symmetric activation quantizer and such a weight runs as an exact
            :class:`~.kernels.Int8Linear` (needs ``act_quant``).
    """

    def __init__(self, config: dict[str, Any], tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                 backend: str = "torch", act_quant: dict[str, dict[str, Any]] | None = None,
                 vocab_map: torch.Tensor | None = None,
                 int8_codes: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.backend = backend
        self.hidden = int(config["hidden_size"])
        self.head_dim = int(config["head_dim"])
        self.eps = float(config["layer_norm_eps"])
        self.act = str(config["hidden_act"])
        self.pad_id = int(config["pad_token_id"])
        self.position_style = config.get("position_style", "absolute")
        self.position_offset = self.pad_id + 1 if self.position_style == "roberta" else 0
        self.register_buffer("vocab_map", vocab_map)
        build = _Builder(tensors, act_quant or {}, int8_codes or {}, dtype, backend, self.hidden, self.head_dim)
        t, lin = build.tensor, build.lin

        # embeddings: tables in the compute dtype; sum and LayerNorm in float32
        self.register_buffer("word", t("emb.word.weight").to(dtype))
        self.register_buffer("position", t("emb.position.weight").to(dtype))
        tt = t("emb.token_type.weight").to(dtype) if "emb.token_type.weight" in tensors else None
        self.register_buffer("token_type", tt)
        self.register_buffer("emb_ln_w", t("emb.ln.weight").float())
        self.register_buffer("emb_ln_b", t("emb.ln.bias").float())
        self.proj = lin("emb.proj") if "emb.proj.weight" in tensors else None
        self.max_positions = self.position.shape[0] - self.position_offset

        self.layers = nn.ModuleList()
        for i, (heads, width) in enumerate(zip(config["heads_per_layer"], config["ffn_per_layer"])):
            p = f"layer.{i}"
            self.layers.append(_Layer(
                int(heads), *build.attention(p, int(heads)),
                (t(f"{p}.attn.ln.weight").to(dtype), t(f"{p}.attn.ln.bias").to(dtype)),
                *build.ffn(p, int(width)),
                (t(f"{p}.ffn.ln.weight").to(dtype), t(f"{p}.ffn.ln.bias").to(dtype)),
            ))
        # classification head: tiny, float32 (None for an embedding model packed without one)
        head = config.get("head")
        self.head_act = head.get("activation") if head else None
        self.head_dense = lin("head.dense", torch.float32, "torch") if "head.dense.weight" in tensors else None
        self.head_out = lin("head.out", torch.float32, "torch") if head else None

    # ------------------------------------------------------------------ pieces
    def _embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        # input_ids: (batch, seq) original ids -> (batch * seq, hidden) in the compute dtype
        b, s = input_ids.shape
        ids = self.vocab_map[input_ids] if self.vocab_map is not None else input_ids
        x = self.word[ids].float()  # (batch, seq, emb)
        if self.token_type is not None:
            tt = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            x = x + self.token_type[tt].float()
        if self.position_style == "roberta":
            not_pad = input_ids.ne(self.pad_id).int()
            pos = torch.cumsum(not_pad, dim=1).type_as(not_pad) * not_pad + self.pad_id  # (batch, seq)
            x = x + self.position[pos.long()].float()
        else:
            x = x + self.position[:s].float()  # (seq, emb) broadcast
        x = F.layer_norm(x, (x.shape[-1],), self.emb_ln_w, self.emb_ln_b, self.eps)
        x = x.to(self.dtype).reshape(b * s, -1)
        if self.proj is not None:
            x = self.proj(x)  # (tokens, hidden)
        return x

    def _ln(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden,), w, b, self.eps)

    def _layer(self, lay: _Layer, x: torch.Tensor, b: int, s: int, mask: torch.Tensor | None, last: bool) -> torch.Tensor:
        # x: (batch * seq, hidden); in the last layer the result is (batch, hidden): the [CLS] rows
        d = self.head_dim
        if last:
            res = x.view(b, s, self.hidden)[:, 0]  # (batch, hidden)
        else:
            res = x
        if lay.heads == 0:
            x = self._ln(res + lay.o_const, lay.ln1_w, lay.ln1_b)
        else:
            h = lay.heads
            if lay.qkv is not None:
                qkv = lay.qkv(x)  # (tokens, 3 * h * d)
                q, k, v = qkv.view(b, s, 3, h, d).permute(2, 0, 3, 1, 4)  # each (batch, h, seq, d)
            else:
                q, k, v = (lin(x).view(b, s, h, d).transpose(1, 2) for lin in (lay.q, lay.k, lay.v))
            if last:
                q = q[:, :, :1]  # (batch, h, 1, d): only [CLS] queries
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (batch, h, sq, d)
            ctx = ctx.transpose(1, 2).reshape(-1, h * d)  # (batch * sq, h * d)
            x = self._ln(lay.o(ctx, residual=res), lay.ln1_w, lay.ln1_b)
        if lay.up is None:
            return self._ln(x + lay.down_const, lay.ln2_w, lay.ln2_b)
        hmid = lay.up(x, activation=self.act)  # (rows, ffn)
        return self._ln(lay.down(hmid, residual=x), lay.ln2_w, lay.ln2_b)

    def _additive_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        # (batch, seq) 1/0 -> (batch, 1, 1, seq): 0 for tokens, the dtype's minimum for padding
        if attention_mask is None:
            return None
        keep = attention_mask.bool()[:, None, None, :]
        mask = torch.zeros(keep.shape, dtype=self.dtype, device=keep.device)
        return mask.masked_fill(~keep, torch.finfo(self.dtype).min)

    # ------------------------------------------------------------------ forward
    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer states of every token, (batch, seq, hidden) float32: what sentence embeddings pool.

        Unlike :meth:`forward`, the last layer computes all tokens (not only ``[CLS]``) and no head runs.
        """
        b, s = input_ids.shape
        mask = self._additive_mask(attention_mask)
        x = self._embed(input_ids, token_type_ids)  # (batch * seq, hidden)
        for lay in self.layers:
            x = self._layer(lay, x, b, s, mask, last=False)
        return x.view(b, s, self.hidden).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, num_labels), float32.

        Args:
            input_ids: (batch, seq) int64 original token ids (validated by the caller).
            attention_mask: (batch, seq) 1/0, or None when nothing is padded (faster).
            token_type_ids: (batch, seq) or None (zeros).
        """
        b, s = input_ids.shape
        mask = self._additive_mask(attention_mask)
        x = self._embed(input_ids, token_type_ids)  # (batch * seq, hidden)
        n = len(self.layers)
        if n == 0:
            x = x.view(b, s, self.hidden)[:, 0]
        for i, lay in enumerate(self.layers):
            x = self._layer(lay, x, b, s, mask, last=(i == n - 1))
        cls = x.float()  # (batch, hidden)
        if self.head_dense is not None:
            cls = self.head_dense(cls, activation=self.head_act)
        return self.head_out(cls)  # (batch, num_labels)
