"""Fast CPU inference for packed models.

:func:`load` verifies a packed directory (format version, sha256 of every file), unpacks the
weights once to the fastest representation for this CPU, and returns a :class:`PackedModel`::

    from compactbert.runtime import load
    model = load("out/packed")                          # bf16 on AMX / AVX512-BF16 CPUs, else fp32
    batch = model.tokenizer(["a fine film"], return_tensors="pt")
    logits = model(batch["input_ids"], batch["attention_mask"])   # (1, num_labels) float32

Representation (chosen by measurement, see :mod:`compactbert.runtime.kernels`): every weight,
whatever its bit width, becomes a bf16 matrix in oneDNN's blocked layout, and the products run on
the AMX/AVX512-BF16 units with bias, activation and residual fused. ``dtype="fp32"`` is the exact
path: quantized weights decode bitwise to the values the training-time layers used and activation
quantizers are emulated, so with uncompressed tensors exported as float32
(``export_packed(..., float_dtype="float32")``) it reproduces the training-time logits (to ~1e-6).
A model trained with 8-bit activation quantizers (XTC's W1A8/W2A8, W8A8) runs them exactly by
default: its products become oneDNN int8 linears on the integer codes (AMX/VNNI; exact int32
sums, then the weight-row and token scales), the rest runs in float32, and it predicts what the
training-time model predicts. ``act_quant="off"`` (or ``dtype="bf16"``) drops them for the bf16
path: faster, but such a model then sees full-precision activations.

Other engines: ``load(DIR, backend="onnxruntime" | "openvino")`` runs the same packed directory on
ONNX Runtime or OpenVINO (an ONNX graph built at load from the decoded weights, the trained
activation quantizers as float ops: it predicts what the training-time model predicts), and
``backend="auto"`` keeps whichever of the available ones a short probe measures fastest, per batch
size (the batch-1 winner for single sentences, the batch-8 winner for batches; ``describe()`` says
which and what was measured); see :mod:`compactbert.runtime.engines`. This low-level ``load``
defaults to ``backend="compactbert"``; :func:`compactbert.load` defaults to ``"auto"``.

A sentence-embedding model (packed from a bare encoder, no classification head) is used through
:meth:`PackedModel.encode`, which runs the last layer on every token and pools as the model's
sentence-transformers config said at export (mean over the attention mask, L2-normalised, by
default)::

    emb = load("out/minilm-packed").encode(["a fine film", "a good movie"], batch_size=32)  # (2, 384)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..nn.pooling import DEFAULT_POOLING, Pooling, pool, pooling_from_dict
from .. import defaults as D
from ..errors import UserError, positive_int
from .encoder import LeanEncoder
from .engines import ENGINES, RoutedEncoder, check_backend, engine_model, pick_fastest
from .kernels import Int8Linear, cpu_has_native_bf16, mkldnn_available, onednn_int8_max_level

__all__ = ["load", "PackedModel", "LeanEncoder", "default_dtype"]

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


def default_dtype() -> str:
    """``"bf16"`` where bf16 is fast here (native bf16 and oneDNN), else ``"fp32"``."""
    return "bf16" if (cpu_has_native_bf16() and mkldnn_available()) else "fp32"


class PackedModel:
    """A packed model loaded for inference.

    Attributes:
        tokenizer: The stored tokenizer (None if the folder has none).
        config: The packed ``config.json`` (per-layer ``heads_per_layer``, ``ffn_per_layer``, ...).
        manifest: The packed ``manifest.json``.
        path: The folder.
        dtype: ``"bf16"`` or ``"fp32"``.
        backend: ``"mkldnn"`` or ``"torch"`` (this runtime's kernels), or the engine that runs it
            (``"onnxruntime"``, ``"openvino"``; see :mod:`compactbert.runtime.engines`).
        selection: with ``load(..., backend="auto")``, what the probe measured and chose (else None).
        num_labels: Output width.
        id2label: Label names by id (may be empty).
    """

    def __init__(self, encoder: LeanEncoder, tokenizer, config: dict[str, Any], manifest: dict[str, Any], path: Path,
                 dtype: str, backend: str, act_quant: bool):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        self.manifest = manifest
        self.path = path
        self.dtype = dtype
        self.backend = backend
        self.act_quant = act_quant
        self.selection: str | None = None
        self.num_labels = int(config["num_labels"])
        self.id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
        pooling = config.get("pooling")
        self.pooling: Pooling = pooling_from_dict(pooling, f"{path}/config.json") if pooling else DEFAULT_POOLING

    def __repr__(self) -> str:
        c = self.config
        return (f"PackedModel({str(self.path)!r}, arch={c['arch']}, layers={len(c['heads_per_layer'])}, "
                f"heads={c['heads_per_layer']}, ffn={c['ffn_per_layer']}, dtype={self.dtype}, backend={self.backend})")

    def describe(self) -> str:
        """One line on how this model computes (engine or kernels, dtype, shape after removal; with
        ``backend="auto"``, which backend the probe chose and why)."""
        c = self.config
        selection = self.selection
        if isinstance(self.encoder, RoutedEncoder):  # backend="auto" kept two, by batch size
            return self.encoder.describe() + (f"; {selection}" if selection else "")
        if hasattr(self.encoder, "describe"):  # another engine (compactbert.runtime.engines)
            heads, ffn = c["heads_per_layer"], c["ffn_per_layer"]
            show = (lambda v: str(v[0]) if v and len(set(v)) == 1 else str(list(v)))
            line = f"{self.encoder.describe()}; {len(heads)} layers, heads {show(heads)}, ffn {show(ffn)}"
            return line + (f"; {selection}" if selection else "")
        if self.backend == "mkldnn":
            how = ("oneDNN mkldnn._linear_pointwise with weights reordered at load, bias/GELU/residual fused "
                   "(AMX / AVX512-BF16)")
        else:
            how = "torch F.linear (MKL)"
        last = ("[CLS]-only last layer" if self.encoder.head_out is not None
                else f"embedding model ({self.pooling.mode} pooling{', normalised' if self.pooling.normalize else ''})")
        parts = [f"compactbert runtime: {self.dtype} weights, {how}, SDPA flash attention, {last}"]
        n_int8 = sum(isinstance(m, Int8Linear) for m in self.encoder.modules())
        if n_int8:
            parts.append(f"{n_int8} linears as oneDNN int8 qlinear (exact int32 sums: AMX/VNNI, or AVX2 for levels "
                         "within +-64) with exact 8-bit activation "
                         "quantization, scales/bias/GELU/residual in a compiled epilogue")
        elif self.act_quant and self.config.get("act_quant"):
            parts.append("activation quantizers emulated")
        heads, ffn = c["heads_per_layer"], c["ffn_per_layer"]
        show = (lambda v: str(v[0]) if v and len(set(v)) == 1 else str(list(v)))
        parts.append(f"{len(heads)} layers, heads {show(heads)}, ffn {show(ffn)}")
        if c.get("vocab", {}).get("pruned"):
            parts.append(f"vocab {c['vocab']['kept']}/{c['vocab']['original_size']}")
        if selection:
            parts.append(selection)
        return "; ".join(parts)

    @staticmethod
    def _ids(x: Any, name: str) -> torch.Tensor | None:
        if x is None:
            return None
        t = torch.as_tensor(x)
        if t.dim() == 1:
            t = t[None, :]
        if t.dim() != 2:
            raise UserError(f"{name} must have shape (batch, seq); got {tuple(t.shape)}")
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            if name == "attention_mask":
                return t.to(torch.long)
            raise UserError(f"{name} must hold integer token ids; got dtype {t.dtype}")
        return t.to(torch.long)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits (batch, num_labels), float32.

        Args:
            input_ids: (batch, seq) token ids from :attr:`tokenizer` (tensor, array or nested list).
            attention_mask: (batch, seq) 1 for tokens, 0 for padding; default all ones.
            token_type_ids: (batch, seq) segment ids (BERT-style models); default zeros.

        Raises:
            UserError: shapes that do not match, ids outside the vocabulary, or inputs longer than
                the model's positions.
        """
        if self.encoder.head_out is None:
            raise UserError(f"packed model {str(self.path)!r} is an embedding model without a classification "
                            "head; use .encode(sentences) for its sentence embeddings")
        ids = self._ids(input_ids, "input_ids")
        mask = self._ids(attention_mask, "attention_mask")
        tt = self._ids(token_type_ids, "token_type_ids")
        for name, t in (("attention_mask", mask), ("token_type_ids", tt)):
            if t is not None and t.shape != ids.shape:
                raise UserError(f"{name} has shape {tuple(t.shape)} but input_ids has {tuple(ids.shape)}")
        if ids.numel():
            vocab = int(self.config.get("vocab", {}).get("original_size", self.config["vocab_size"]))
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= vocab:
                raise UserError(f"input_ids contain id {hi if hi >= vocab else lo}; valid ids: 0..{vocab - 1}")
            if tt is not None:
                tv = max(int(self.config.get("type_vocab_size", 0)), 1)
                if int(tt.min()) < 0 or int(tt.max()) >= tv:
                    raise UserError(f"token_type_ids must lie in 0..{tv - 1}")
        if ids.shape[1] > self.encoder.max_positions:
            raise UserError(
                f"input length {ids.shape[1]} exceeds the model's {self.encoder.max_positions} positions; "
                f"truncate inputs to at most {self.encoder.max_positions} tokens"
            )
        if ids.shape[0] == 0:
            return torch.zeros(0, self.num_labels)
        if mask is not None:
            if bool(mask.all()):
                mask = None  # nothing padded: attention without a mask is faster
            else:
                # drop trailing columns that are padding in every row (exact: no valid token moves)
                used = torch.nonzero(mask.any(dim=0)).flatten()
                keep = int(used[-1]) + 1 if used.numel() else 1
                if keep < ids.shape[1]:
                    ids, mask = ids[:, :keep], mask[:, :keep]
                    tt = tt[:, :keep] if tt is not None else None
        with torch.inference_mode():
            return self.encoder(ids, mask, tt)

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 32,
                max_length: int = D.MAX_SEQ_LENGTH) -> torch.Tensor:
        """Logits for raw texts (optionally sentence pairs), tokenized with :attr:`tokenizer`.

        Returns:
            (len(texts), num_labels) float32.
        """
        if self.tokenizer is None:
            raise UserError(f"packed model {str(self.path)!r} has no tokenizer; pass token ids to the model instead")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise UserError(f"got {len(texts)} texts but {len(text_pairs)} text pairs; they must match")
        out = []
        for start in range(0, len(texts), batch_size):
            a = list(texts[start : start + batch_size])
            b = list(text_pairs[start : start + batch_size]) if text_pairs is not None else None
            enc = self.tokenizer(a, b, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(self(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")))
        return torch.cat(out) if out else torch.zeros(0, self.num_labels)


    def encode(self, sentences: Sequence[str] | str, batch_size: int = 32, max_length: int | None = None,
               normalize: bool | None = None) -> torch.Tensor:
        """Sentence embeddings, (len(sentences), hidden) float32, pooled as :attr:`pooling` says.

        The last layer runs on every token (not ``[CLS]`` only) and no head runs, so any packed
        model can be encoded; an embedding model is packed without a head. Sentences run in
        length-sorted batches (little padding) and come back in their own order.

        Args:
            sentences: a list of strings (one string is a list of one).
            batch_size: sentences per forward pass.
            max_length: tokenizer truncation (default: the pooling config's ``max_seq_length``, else
                128), capped at the model's positions.
            normalize: L2-normalise (default: the pooling config's; True for all-MiniLM-L6-v2).

        Raises:
            UserError: no tokenizer, a sentence that is not a string, or a bad ``batch_size``.
        """
        if self.tokenizer is None:
            raise UserError(f"packed model {str(self.path)!r} has no tokenizer; it cannot encode text")
        if isinstance(sentences, str):
            sentences = [sentences]
        bad = next((i for i, x in enumerate(sentences) if not isinstance(x, str)), None)
        if bad is not None:
            raise UserError(f"sentences[{bad}] is a {type(sentences[bad]).__name__}; expected a list of strings")
        positive_int(batch_size, "batch_size")
        p = self.pooling
        if normalize is not None:
            p = Pooling(p.mode, bool(normalize), p.max_seq_length, p.source)
        if len(sentences) == 0:
            return torch.zeros(0, self.encoder.hidden)
        length = min(int(max_length or p.max_seq_length or 128), self.encoder.max_positions)
        enc = self.tokenizer(list(sentences), truncation=True, max_length=length)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        feats = [{k: enc[k][i] for k in keys} for i in range(len(sentences))]
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
        out = torch.zeros(len(feats), self.encoder.hidden)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids, mask, types = self._batch([feats[i] for i in idx])
                states = self.encoder.token_states(ids, None if bool(mask.all()) else mask, types)
                out[idx] = pool(states, mask, p)
        return out

    def _batch(self, feats: list[dict[str, list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (ids, attention mask, token types) of tokenized sentences."""
        width = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(feats), width), dtype=torch.long)
        types = torch.zeros((len(feats), width), dtype=torch.long)
        for r, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[r, :n] = torch.tensor(f["input_ids"])
            mask[r, :n] = 1
            if "token_type_ids" in f:
                types[r, :n] = torch.tensor(f["token_type_ids"])
        return ids, mask, types


def load(path: str | os.PathLike, dtype: str = "auto", threads: int | None = None, act_quant: str = "auto",
         verify: bool = True, backend: str = "compactbert") -> PackedModel:
    """Load a packed directory for fast CPU inference.

    Args:
        path: A folder written by :func:`compactbert.export.pack.export_packed`.
        backend: What computes it: ``"compactbert"`` (this runtime), ``"onnxruntime"`` or
            ``"openvino"`` (an ONNX graph built at load from the decoded packed weights, activation
            quantizers as trained; :mod:`compactbert.runtime.engines`), or ``"auto"``: the fastest
            of those available by a short measured probe, at batch 1 and per row at batch 8, each
            kept for the batch sizes it won (``describe()`` says which, and why).
        dtype: ``"auto"`` (bf16 where the CPU has native bf16, else fp32), ``"bf16"`` or ``"fp32"``.
        threads: If given, ``torch.set_num_threads(threads)`` (process-wide).
        act_quant: Run the model's activation quantizers: ``"auto"`` (default: a model trained with
            8-bit activations runs them exactly, its products as oneDNN int8 (AMX/VNNI) and the rest
            in float32, unless ``dtype="bf16"`` is asked for), ``"on"`` (also in bf16) or ``"off"``
            (ignore them: the fast bf16 path, which may change ~0.5% of predictions of such models).
        verify: Check sha256 of every file (default True).

    Raises:
        UserError: the folder is missing, tampered with, truncated, of an unknown format version,
            or an option is invalid.
    """
    from ..export.pack import load_packed_tokenizer, read_packed

    dtype_given = dtype != "auto"
    if dtype == "auto":
        dtype = default_dtype()
    if dtype not in _DTYPES:
        raise UserError(f"dtype={dtype!r} is not valid; valid: auto, bf16, fp32")
    if act_quant not in ("auto", "on", "off"):
        raise UserError(f"act_quant={act_quant!r} is not valid; valid: auto, on, off")
    check_backend(backend)
    if threads is not None:
        positive_int(threads, "threads")
        torch.set_num_threads(threads)
    tdtype = _DTYPES[dtype]
    packed = read_packed(path, verify=verify)
    if backend in ENGINES:
        return engine_model(packed, load_packed_tokenizer(packed.path, packed.manifest), backend, threads, act_quant,
                            dtype if dtype_given else "auto")
    has_aq = bool(packed.act_quant)
    # auto: a model trained with activation quantizers runs them exactly (int8 products, float32
    # elsewhere) unless a dtype was asked for; without them, bf16 where it is fast.
    use_aq = has_aq and (act_quant == "on" or (act_quant == "auto" and (not dtype_given or tdtype == torch.float32)))
    if use_aq and act_quant == "auto":
        tdtype = torch.float32
    dtype = "bf16" if tdtype == torch.bfloat16 else "fp32"
    kernels = "mkldnn" if (tdtype == torch.bfloat16 and mkldnn_available()) else "torch"
    int8 = use_aq and onednn_int8_max_level() > 0  # per weight: levels within what is exact here
    encoder = LeanEncoder(packed.config, packed.tensors, dtype=tdtype, backend=kernels,
                          act_quant=packed.act_quant if use_aq else None, vocab_map=packed.vocab_map,
                          int8_codes=packed.row_codes if int8 else None)
    tokenizer = load_packed_tokenizer(packed.path, packed.manifest)
    model = PackedModel(encoder, tokenizer, packed.config, packed.manifest, packed.path, dtype, kernels, use_aq)
    if backend == "auto":
        return pick_fastest(model, packed, tokenizer, threads, act_quant, dtype if dtype_given else "auto")
    return model
