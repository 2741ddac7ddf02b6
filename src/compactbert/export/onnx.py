"""Export a sequence-classification model to ONNX, and quantize it with ONNX Runtime.

:func:`export_onnx` writes ``model.onnx`` (FP32) beside the tokenizer and ``config.json``, so the
folder is self-contained for ONNX Runtime serving. Inputs are ``input_ids``, ``attention_mask`` and
``token_type_ids`` (only when the model has token-type embeddings: BERT yes, RoBERTa/DistilBERT no),
all int64 of shape (batch, sequence) with both axes dynamic; the output is ``logits``
(batch, num_labels).

Which exporter: torch 2.13's default (dynamo / ``torch.export``) needs the ``onnxscript`` package and
is slow on transformers 5.x models; the TorchScript-based exporter (``dynamo=False``) exports BERT-class
encoders in well under a second and gives logits within 1e-6 of PyTorch. So ``exporter="auto"`` uses
the TorchScript one and falls back to dynamo only if it fails.

A model with compressed layers (:class:`~compactbert.nn.compressed.CompressedLinear`) is exported as
it computes: each weight's mask and quantization are baked into an FP32 weight once (so the graph does
not re-quantize weights at every call), while activation quantizers stay in the graph as ONNX ops.
Size on disk is then FP32; use the packed format (``--format packed``) for the small files.

:func:`quantize_onnx_int8` is ONNX Runtime's dynamic int8 quantization -- what users do when they
"just quantize it" -- with settings chosen for the AVX-512 VNNI / AMX Xeons this project targets
(see its docstring).

Example::

    from compactbert.export.onnx import export_onnx, quantize_onnx_int8
    path = export_onnx(model, tokenizer, "out/onnx")          # out/onnx/model.onnx
    quantize_onnx_int8(path, "out/onnx/model.int8.onnx")
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs import MODEL_DIR, ONNX_FILE, RUN, open_path

__all__ = [
    "ONNX_FILE",
    "ONNX_INT8_FILE",
    "export_onnx",
    "export_onnx_path",
    "quantize_onnx_int8",
    "onnx_input_names",
    "cpu_has_vnni",
    "onnx_op_counts",
    "optimize_onnx",
    "ort_session",
]

ONNX_INT8_FILE = "model.int8.onnx"
EXPORT_INFO_FILE = "onnx_export.json"


def _uses_token_types(model) -> bool:
    """True when the model has a token-type embedding (BERT, MiniLM, ELECTRA; not RoBERTa-style ones
    whose ``type_vocab_size`` is 1, nor DistilBERT, which has none)."""
    cfg = getattr(model, "config", None)
    type_vocab = getattr(cfg, "type_vocab_size", None)
    if not type_vocab:
        return False
    # RoBERTa keeps a 1-row token-type table that is always indexed with 0: no input needed.
    return int(type_vocab) > 1


def onnx_input_names(model) -> list[str]:
    """The ONNX input names :func:`export_onnx` gives ``model``."""
    names = ["input_ids", "attention_mask"]
    if _uses_token_types(model):
        names.append("token_type_ids")
    return names


def _bake_weights(model):
    """A copy of ``model`` whose compressed layers hold their effective (masked, quantized) weight as
    a plain FP32 weight; activation quantizers are kept. The original model is not changed."""
    import torch

    from ..nn.compressed import CompressedEmbedding, CompressedLinear, is_compressed

    if not any(is_compressed(m) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (CompressedLinear, CompressedEmbedding)):
                w = m.effective_weight().detach().clone()  # (out, in) or (vocab, dim)
                m.weight_quantizer = None
                m.weight_mask = None
                m.weight.data = w
    return model


def _dummy_inputs(model, names: list[str], batch: int = 2, seq: int = 16):
    """Example inputs for tracing: the second row has padding so the mask path is traced."""
    import torch

    vocab = int(getattr(model.config, "vocab_size", 100) or 100)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=gen)  # (batch, seq)
    mask = torch.ones(batch, seq, dtype=torch.long)  # (batch, seq)
    mask[1:, seq // 2 :] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        types = torch.zeros(batch, seq, dtype=torch.long)  # (batch, seq)
        types[:, seq // 4 : seq // 2] = 1
        out["token_type_ids"] = types
    return out


class _LogitsOnly:
    """Wrap a HF model so that tracing sees positional tensors in and one tensor (``output``: logits,
    or a bare encoder's last_hidden_state) out."""

    def __new__(cls, model, names: list[str], output: str = "logits"):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                kwargs = dict(zip(names, args))
                return getattr(self.model(**kwargs, return_dict=True), output)  # (batch, num_labels) / (batch, seq, dim)

        return Wrapper().eval()


def _export_torchscript(wrapper, args, names, path: Path, opset: int, output: str = "logits") -> None:
    import torch

    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        # The tracer warns about Python booleans computed from shapes inside transformers' mask
        # code; they are constant for every input shape (no padding beyond the mask's length).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(path), input_names=names, output_names=[output], dynamic_axes=axes,
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def _export_dynamo(wrapper, args, names, path: Path, opset: int, output: str = "logits") -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=2, max=8192)
    shapes = tuple({0: batch, 1: seq} for _ in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, args, input_names=names, output_names=[output], dynamic_shapes=shapes,
            opset_version=opset, dynamo=True, external_data=False,
        )
        program.save(str(path))


def _check_opset(opset: Any) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not 14 <= opset <= 21:
        raise UserError(f"ONNX opset {opset!r} is not supported; give an integer from 14 to 21 (default 17)")
    return opset


def _run_exporters(order: list[str], wrapper, args, names: list[str], path: Path, opset: int,
                   output: str = "logits") -> str:
    """Export with the first exporter of ``order`` that works; its name.

    Raises:
        RuntimeError: every exporter failed (the message carries each one's error).
    """
    import torch

    errors: list[str] = []
    for kind in order:
        try:
            with torch.no_grad():
                (_export_torchscript if kind == "torchscript" else _export_dynamo)(wrapper, args, names, path, opset, output)
            return kind
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the next one, report all
            errors.append(f"{kind}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    raise RuntimeError("ONNX export failed with every exporter; " + " | ".join(errors))


def export_onnx(
    model,
    tokenizer,
    out_dir: str | os.PathLike,
    opset: int = 17,
    exporter: str = "auto",
    check: bool = True,
    output: str = "logits",
) -> Path:
    """Export a Hugging Face sequence-classification model to ``out_dir/model.onnx`` (FP32).

    Args:
        model: an ``AutoModelForSequenceClassification``-style model (may hold compressed layers).
        tokenizer: its tokenizer, saved beside the model (None: no tokenizer files).
        out_dir: the folder to write (created; existing files of the same names are replaced).
        opset: the ONNX opset (14..21).
        exporter: ``"torchscript"`` (``torch.onnx.export(..., dynamo=False)``), ``"dynamo"``, or
            ``"auto"``: TorchScript, then dynamo if that fails.
        check: run the exported graph once with ONNX Runtime on the tracing inputs and compare its
            logits with PyTorch's (max abs difference recorded in ``onnx_export.json``).
        output: ``"logits"`` (a classifier), or ``"last_hidden_state"`` for a bare encoder: the
            (batch, sequence, hidden) token states, as sentence-transformers' ONNX backend reads them.

    Returns:
        The path of ``model.onnx``. The folder also holds ``config.json``, the tokenizer files and
        ``onnx_export.json`` (inputs, opset, exporter used, torch version, check result).

    Raises:
        UserError: an unsupported opset or exporter name, or an output path that is a file.
        RuntimeError: every exporter failed (the message carries each one's error).
    """
    import torch

    opset = _check_opset(opset)
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise UserError(f"unknown ONNX exporter {exporter!r}; valid: auto, torchscript, dynamo")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"ONNX output {str(out)!r} is a file; expected a directory")
    out.mkdir(parents=True, exist_ok=True)
    path = out / ONNX_FILE

    was_training = model.training
    model.eval()
    net = _bake_weights(model).eval()
    # Eager attention exports as plain MatMul/Softmax that ONNX Runtime's transformer optimizer can
    # fuse into its Attention op (the SDPA export pattern is not recognised); the logits are the same.
    attn_before = getattr(net.config, "_attn_implementation", None)
    if attn_before not in (None, "eager") and hasattr(net, "set_attn_implementation"):
        try:
            net.set_attn_implementation("eager")
        except (ValueError, ImportError, AttributeError):
            attn_before = None
    names = onnx_input_names(net)
    inputs = _dummy_inputs(net, names)
    args = tuple(inputs[n] for n in names)
    wrapper = _LogitsOnly(net, names, output)

    try:
        used = _run_exporters(["torchscript", "dynamo"] if exporter == "auto" else [exporter], wrapper, args, names,
                              path, opset, output)
    finally:
        if attn_before not in (None, "eager"):
            net.set_attn_implementation(attn_before)
        model.train(was_training)

    info: dict[str, Any] = {
        "file": ONNX_FILE, "inputs": names, "output": output, "opset": opset, "exporter": used,
        "dtype": "float32", "torch": torch.__version__,
    }
    if check:
        import numpy as np

        with torch.no_grad():
            ref = wrapper(*args).float().numpy()  # (batch, num_labels) or (batch, seq, dim)
        got = ort_session(path, threads=1).run([output], {n: inputs[n].numpy() for n in names})[0]
        info["check_max_abs_diff"] = float(np.abs(got - ref).max())

    model.config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return path


def optimize_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike, config=None) -> Path:
    """Fuse a BERT-class ONNX graph with ONNX Runtime's transformer optimizer.

    Attention (6 ``Attention`` nodes for MiniLM-L6), embedding + LayerNorm, bias + GeLU and
    residual + LayerNorm are each fused into one ORT contrib op. This is what ONNX Runtime's own BERT
    tutorials do before quantizing; plain :func:`quantize_onnx_int8` of the unfused graph is what
    users do when they "just quantize it". Quantizing the fused graph gives ``QAttention`` nodes.

    Args:
        onnx_path: the FP32 model from :func:`export_onnx`.
        out_path: where to write the fused model.
        config: the model's HF config (or a dict); read from ``config.json`` beside ``onnx_path``
            when None. Needed for the number of heads and the hidden size.

    Returns:
        ``out_path`` as a Path.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    src = Path(onnx_path)
    if config is None:
        cfg_file = src.parent / "config.json"
        if not cfg_file.is_file():
            raise UserError(f"{str(cfg_file)!r} not found: optimize_onnx needs the model config (heads, hidden size)")
        config = json.loads(cfg_file.read_text())
    if not isinstance(config, dict):
        config = config.to_dict()
    heads = int(config.get("num_attention_heads") or config.get("n_heads") or 0)
    hidden = int(config.get("hidden_size") or config.get("dim") or 0)
    dst = Path(out_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        opt = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
        opt.save_model_to_file(str(dst))
    finally:
        logging.getLogger().setLevel(level)
    return dst


def export_onnx_path(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    opset: int = 17,
    int8: bool = False,
) -> dict[str, Path]:
    """Export a run directory (its ``model/``) or a model folder to ONNX: what ``--format onnx`` does.

    Args:
        path: a compactbert run directory, or a folder written by :func:`compactbert.nn.io.save_model`
            / ``save_pretrained`` (compressed layers are rebuilt from ``compression.json``).
        out_dir: the folder to write.
        opset: the ONNX opset.
        int8: also write ``model.int8.onnx`` with :func:`quantize_onnx_int8`.

    Returns:
        ``{"onnx": model.onnx path[, "onnx_int8": model.int8.onnx path]}``.

    Raises:
        UserError: ``path`` is not a run or model folder, or the model cannot be loaded.
    """
    from ..loading import load_saved

    target = open_path(path)
    p = target.path / MODEL_DIR if target.kind == RUN else target.path
    if not (p / "config.json").is_file():
        raise UserError(
            f"cannot export {str(path)!r} to ONNX: no config.json there (nor in its model/); expected a run "
            f"directory or a model folder"
        )
    model, tokenizer = load_saved(p, "model")
    out: dict[str, Path] = {"onnx": export_onnx(model.float().eval(), tokenizer, out_dir, opset=opset)}
    if int8:
        out["onnx_int8"] = quantize_onnx_int8(out["onnx"], Path(out_dir) / ONNX_INT8_FILE)
    return out


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (Linux ``/proc/cpuinfo``; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    return False


def quantize_onnx_int8(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    per_channel: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """Quantize an ONNX model with ONNX Runtime's dynamic int8 quantization.

    Weights of every ``MatMul``/``Gemm`` become int8 (symmetric, ``QuantType.QInt8``); activations
    are quantized to uint8 per call (dynamic), so no calibration data is needed. This is
    ``onnxruntime.quantization.quantize_dynamic`` -- the one-liner users reach for.

    Settings for this project's CPUs (Xeon with AVX-512 VNNI and AMX):

    * ``reduce_range=False`` on VNNI CPUs: 7-bit weights only exist to avoid the int16 overflow of the
      pre-VNNI ``vpmaddubsw`` u8 x s8 path; VNNI's ``vpdpbusd`` accumulates in int32, so the 8th bit is
      free accuracy. ``None`` (the default) chooses ``not cpu_has_vnni()``.
    * ``per_channel=True``: one scale per output column of each weight instead of one per matrix.
      On MiniLM-L6 (SST-2 head) it keeps predictions closer to FP32 at the same speed (ORT runs both
      through ``DynamicQuantizeMatMul`` / ``MatMulInteger``).

    Args:
        onnx_path: the FP32 model (``model.onnx`` from :func:`export_onnx`).
        out_path: where to write the quantized model.
        per_channel: per-output-channel weight scales.
        reduce_range: 7-bit weights; None: only on CPUs without VNNI.

    Returns:
        ``out_path`` as a Path. Its folder gets ``onnx_quantize.json`` with the settings used.

    Raises:
        UserError: ``onnx_path`` does not exist.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(onnx_path)
    if not src.is_file():
        raise UserError(f"ONNX model {str(src)!r} does not exist; export one first (export_onnx)")
    dst = Path(out_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    # quantize_dynamic logs a warning per model suggesting pre-processing; keep stderr quiet.
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            src, dst, per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
            # Fused ops (Attention, SkipLayerNormalization from ORT's transformer optimizer) are in a
            # contrib domain that ONNX shape inference does not know: their outputs are FP32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().setLevel(level)
    settings = {
        "file": dst.name, "source": src.name, "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8", "activations": "uint8 dynamic (per call)", "per_channel": per_channel,
        "reduce_range": reduce_range, "cpu_vnni": cpu_has_vnni(),
    }
    (dst.parent / "onnx_quantize.json").write_text(json.dumps(settings, indent=2) + "\n")
    return dst


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` with ``threads`` intra-op threads (None: ORT's default),
    one inter-op thread and all graph optimizations on."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=ort_options(threads), providers=["CPUExecutionProvider"])


def ort_options(threads: int | None = None):
    """ONNX Runtime session options: ``threads`` intra-op threads, one inter-op thread, sequential,
    all graph optimizations, quiet logs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def onnx_op_counts(path: str | os.PathLike) -> dict[str, int]:
    """How many nodes of each op type the ONNX file holds (most frequent first)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
