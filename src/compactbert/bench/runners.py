"""Runners: one callable per way of running a model, ``runner(feed) -> logits``.

A *runner* takes a batch as a dict of int64 numpy arrays (``input_ids``, ``attention_mask``,
optionally ``token_type_ids``; each ``(batch, seq)``) and returns the logits as a float32 numpy
array ``(batch, num_labels)``. Each runner also says which kernels it runs on (``kernels``), so a
result can be explained.

Kinds:

* ``torch-fp32``: a Hugging Face folder in PyTorch eager FP32 (``compactbert.nn.io.load_model``,
  which also rebuilds compressed layers from ``compression.json``).
* ``torch-bf16``: the same model cast to bf16 (weights and activations; logits read back as
  float32). On a CPU without native bf16 (no AVX512-BF16 / AMX) oneDNN converts to and from fp32
  around each product: it is measured anyway, and the row's ``note`` says so.
* ``torch-int8``: the same, with ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear``
  (int8 weights, dynamic per-tensor activations, fbgemm/x86 kernels).
* ``ov-fp32``, ``ov-default``, ``ov-int8``: an OpenVINO IR (``model.xml``) or ONNX file on
  OpenVINO's CPU plugin, latency hint (one stream, ``threads`` threads); ``ov-fp32`` forces f32
  inference precision, the others keep OpenVINO's default for this CPU (bf16 on AMX, f32 here
  without it); the kernels line says the precision it chose and how many int8 layers run.
* ``ort-fp32``, ``ort-int8``, ``ort-int8-fused`` ...: any ``.onnx`` file through ONNX Runtime's CPU
  execution provider; the kernels are read from ORT's own optimized graph.
* ``packed``: a compactbert packed directory through :func:`compactbert.runtime.load`;
  ``packed-onnxruntime``, ``packed-openvino``, ``packed-auto``: the same directory on that backend
  (``load(DIR, backend=...)``: an ONNX graph of the decoded weights, see :mod:`compactbert.runtime.engines`).

Runners are built inside the benchmark's child process, so the imports here are local: an ONNX
Runtime child never imports torch (its memory is ORT's alone).
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Runner", "build_runner", "RUNNER_KINDS", "quiet_load"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Runner:
    """A model ready to run: ``runner(feed) -> logits``.

    Attributes:
        fn: the function doing the work, given only the inputs the model takes.
        kernels: which kernels / libraries compute the model (one line).
        input_names: the inputs ``fn`` takes; others in the feed are dropped.
    """

    fn: Callable[[dict[str, np.ndarray]], np.ndarray]
    kernels: str
    input_names: tuple[str, ...] = _MODEL_INPUTS
    info: dict = field(default_factory=dict)

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.fn({k: feed[k] for k in self.input_names if k in feed})


def _set_torch_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))


def quiet_load(path: str):
    """``(model, tokenizer)`` from a model folder (:func:`compactbert.nn.io.load_model`) without
    transformers' load warnings and progress bars; the model in eval mode."""
    from ..loading import quiet_transformers
    from ..nn.io import load_model

    with quiet_transformers():
        model, tok = load_model(path)
    return model.eval(), tok


def _torch_runner(path: str, threads: int | None, int8: bool = False, bf16: bool = False) -> Runner:
    import torch

    _set_torch_threads(threads)
    model, _ = quiet_load(path)
    model = model.float()  # a checkpoint saved in bf16/fp16 still runs as the FP32 reference
    attn = getattr(model.config, "_attn_implementation", None)
    info: dict = {}
    if bf16:
        from ..runtime.kernels import cpu_has_native_bf16

        model = model.to(torch.bfloat16)
        native = cpu_has_native_bf16()
        kernels = f"PyTorch {torch.__version__} eager bf16 (weights and activations): aten::linear (oneDNN), attention={attn}"
        if not native:
            info["note"] = "no native bf16 on this CPU (no AVX512-BF16/AMX): bf16 emulated through fp32"
    elif int8:
        import warnings

        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        engine = torch.backends.quantized.engine
        kernels = f"PyTorch {torch.__version__} eager: quantized::linear_dynamic int8 ({engine}), attention={attn}"
    else:
        blas = "MKL sgemm" if torch.backends.mkl.is_available() else "sgemm"
        kernels = f"PyTorch {torch.__version__} eager FP32: aten::linear ({blas}), attention={attn}"
    params = inspect.signature(model.forward).parameters
    names = tuple(n for n in _MODEL_INPUTS if n in params)
    if "token_type_ids" in names and (getattr(model.config, "type_vocab_size", 2) or 0) < 2:
        names = tuple(n for n in names if n != "token_type_ids")

    def fn(feed: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
        return out.logits.float().numpy()

    return Runner(fn, kernels, names, info)


def _ov_kernels(compiled, ov_version: str) -> str:
    """One line: OpenVINO's version, the precision it runs at and how many products run in int8."""
    products = {"FullyConnected", "MatMul", "Convolution"}
    try:
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
    except Exception:  # noqa: BLE001 - the description is best effort
        precision = "?"
    counts = {"int8": 0, "float": 0}
    try:
        for op in compiled.get_runtime_model().get_ops():
            rt = op.get_rt_info()
            if "layerType" in rt and rt["layerType"].astype(str) in products:
                counts["int8" if rt["runtimePrecision"].astype(str) in ("i8", "u8") else "float"] += 1
    except Exception:  # noqa: BLE001
        pass
    return (f"OpenVINO {ov_version.split('-')[0]} CPU plugin, latency hint, inference precision {precision}; "
            f"products: {counts['int8']} int8, {counts['float']} {precision}")


def _ov_runner(path: str, threads: int | None, precision: str | None = None) -> Runner:
    """An OpenVINO IR / ONNX model on OpenVINO's CPU plugin (``precision``: None keeps OpenVINO's
    default for this CPU, ``"f32"`` forces FP32)."""
    import openvino as ov

    core = ov.Core()
    config: dict = {"PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    names = tuple(p.get_any_name() for p in compiled.inputs)

    def fn(feed: dict[str, np.ndarray]) -> np.ndarray:
        out = request.infer(feed)
        return np.asarray(out[compiled.outputs[0]], dtype=np.float32)

    return Runner(fn, _ov_kernels(compiled, ov.__version__), names)


# ONNX op types that do the arithmetic (the rest reshape, cast and gather).
_COMPUTE_OPS = ("MatMul", "Gemm", "Attention", "Quantize", "LayerNorm", "Gelu", "Softmax", "Conv")


def _ort_kernels(optimized: Path, version: str) -> str:
    from ..export.onnx import onnx_op_counts

    try:
        counts = onnx_op_counts(optimized)
    except Exception:  # noqa: BLE001 - the description is best effort
        return f"ONNX Runtime {version} CPU EP"
    compute = [(op, n) for op, n in counts.items() if any(k in op for k in _COMPUTE_OPS)]
    ops = ", ".join(f"{op} x{n}" for op, n in compute[:6])
    return f"ONNX Runtime {version} CPU EP (MLAS): {ops}"


def _ort_runner(path: str, threads: int | None) -> Runner:
    import onnxruntime as ort

    from ..export.onnx import ort_options

    opts = ort_options(threads)
    with tempfile.TemporaryDirectory(prefix="cb-ort-") as tmp:
        # ORT writes the graph it will really run (after its fusions): that says which kernels run.
        optimized = Path(tmp) / "optimized.onnx"
        opts.optimized_model_filepath = str(optimized)
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        kernels = _ort_kernels(optimized, ort.__version__)
    names = tuple(i.name for i in sess.get_inputs())
    out_name = sess.get_outputs()[0].name

    def fn(feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(sess.run([out_name], feed)[0], dtype=np.float32)

    return Runner(fn, kernels, names)


def _describe_packed(model) -> str:
    """One line on how a :class:`compactbert.runtime.PackedModel` computes."""
    for attr in ("kernels", "describe"):  # a runtime that describes itself knows best
        value = getattr(model, attr, None)
        value = value() if callable(value) else value
        if isinstance(value, str) and value:
            return value
    dtype, backend = getattr(model, "dtype", "?"), getattr(model, "backend", "?")
    if backend == "mkldnn":
        how = "oneDNN mkldnn._linear_pointwise (bias/GELU/residual fused; AMX / AVX512-BF16)"
    else:
        how = "torch F.linear"
    parts = [f"compactbert runtime: {dtype} weights, {how}"]
    if getattr(model, "act_quant", False):
        parts.append("activation quantizers emulated")
    cfg = getattr(model, "config", None) or {}
    heads, ffn = cfg.get("heads_per_layer"), cfg.get("ffn_per_layer")

    def per_layer(values) -> str:
        values = list(values or [])
        return str(values[0]) if values and len(set(values)) == 1 else str(values)

    if heads is not None:
        parts.append(f"{len(heads)} layers, heads {per_layer(heads)}, ffn {per_layer(ffn)}")
    return "; ".join(parts)


def _packed_runner(path: str, threads: int | None, backend: str = "compactbert") -> Runner:
    """The compressed model from a packed directory, via :func:`compactbert.runtime.load` on
    ``backend`` (``compactbert``, ``onnxruntime``, ``openvino``, ``auto``)."""
    import torch

    from ..runtime import load

    _set_torch_threads(threads)
    model = load(path, threads=threads, backend=backend)

    def fn(feed: dict[str, np.ndarray]) -> np.ndarray:
        types = feed.get("token_type_ids")
        with torch.inference_mode():
            out = model(
                torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]),
                None if types is None else torch.from_numpy(types),
            )
        out = getattr(out, "logits", out)
        if isinstance(out, torch.Tensor):
            return out.float().numpy()
        return np.asarray(out, dtype=np.float32)

    return Runner(fn, _describe_packed(model), _MODEL_INPUTS)


RUNNER_KINDS: dict[str, Callable[[str, int | None], Runner]] = {
    "torch-fp32": lambda path, threads: _torch_runner(path, threads),
    "torch-bf16": lambda path, threads: _torch_runner(path, threads, bf16=True),
    "torch-int8": lambda path, threads: _torch_runner(path, threads, int8=True),
    "ort": _ort_runner,
    "ov-fp32": lambda path, threads: _ov_runner(path, threads, "f32"),
    "ov-default": lambda path, threads: _ov_runner(path, threads),
    "ov-int8": lambda path, threads: _ov_runner(path, threads),
    "packed": _packed_runner,
    "packed-onnxruntime": lambda path, threads: _packed_runner(path, threads, "onnxruntime"),
    "packed-openvino": lambda path, threads: _packed_runner(path, threads, "openvino"),
    "packed-auto": lambda path, threads: _packed_runner(path, threads, "auto"),
}


def build_runner(kind: str, path: str | os.PathLike, threads: int | None) -> Runner:
    """Build the runner of ``kind`` for the model at ``path``.

    Args:
        kind: ``torch-fp32``, ``torch-bf16``, ``torch-int8``, ``packed``, ``ov-fp32``,
            ``ov-default``, ``ov-int8`` (``path``: an OpenVINO ``.xml`` or ``.onnx``), or any kind
            starting with ``ort`` (``ort-fp32``, ``ort-int8``, ...), for which ``path`` is an ``.onnx`` file.
        path: the model folder / packed folder / ONNX file.
        threads: intra-op threads (torch.set_num_threads, ORT intra_op_num_threads); None: default.
    """
    key = "ort" if kind.startswith("ort") else kind
    if key not in RUNNER_KINDS:
        raise ValueError(f"unknown runner kind {kind!r}; valid: {', '.join(RUNNER_KINDS)} (ort-*)")
    return RUNNER_KINDS[key](str(path), threads)
