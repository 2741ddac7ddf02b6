"""Packed models on other engines: ``load(DIR, backend="onnxruntime" | "openvino" | "auto")``.

The packed directory stays the artefact: at load, its weights are decoded as usual
(:func:`compactbert.export.pack.read_packed`) and written into an ONNX graph in memory
(:mod:`compactbert.runtime.graph`: decoded weights, pruned structure absent, the trained activation
quantizers as float ops), which ONNX Runtime or OpenVINO compiles. The result is the same
:class:`~compactbert.runtime.PackedModel` (``__call__``, ``predict``, ``encode``), with an
:class:`EngineEncoder` in place of the lean encoder.

Integer products: on ONNX Runtime, a model trained with symmetric 8-bit activation quantizers runs
each linear whose weight levels the CPU's u8 x s8 product sums exactly (:func:`ort_int8_max_level`:
every int8 level on VNNI / AMX, levels within +-64 on AVX2, so binary and ternary weights always)
as an integer product on the trained codes (``MatMulIntegerToFloat`` in the fused graph ONNX Runtime
gets, :mod:`compactbert.runtime.graph`): the same codes, exact int32 sums, then the scales.

Precision of the rest: FP32 (ONNX Runtime always; OpenVINO with its inference precision forced to f32 when the
model carries activation quantizers, so the codes are the trained ones; otherwise OpenVINO's
default for this CPU, bf16 on CPUs with native bf16 (AMX or AVX512-BF16), f32 elsewhere; ``dtype`` forces one).

``backend="auto"`` builds every available candidate (compactbert's runtime, ONNX Runtime, OpenVINO
when installed), times each on a short probe (:func:`probe_times`: batch 1 and batch 8 of
:data:`PROBE_TOKENS` random tokens: a short single sentence, a batch of long rows; 3 interleaved
rounds, medians), and keeps the fastest at
batch 1 for batches of up to :data:`ROUTE_MAX_ROWS` rows and the fastest per row at batch 8 for
larger ones (one model when they are the same; a :class:`RoutedEncoder` when not: on AVX2 CPUs ONNX
Runtime wins single sentences and compactbert's runtime wins batches for some models). ``describe()``
says what was chosen, each candidate's probe times and its largest logit difference from
compactbert's runtime.
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import UserError

__all__ = ["BACKENDS", "ENGINES", "EngineEncoder", "RoutedEncoder", "available_engines", "engine_model",
           "pick_fastest", "probe_seconds", "probe_times", "check_backend", "ort_int8_max_level"]

BACKENDS = ("compactbert", "onnxruntime", "openvino", "auto")
ENGINES = ("onnxruntime", "openvino")  # the other engines, in the order auto tries them
_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def check_backend(backend: Any) -> str:
    """``backend`` if valid, else a UserError naming the valid ones."""
    if backend not in BACKENDS:
        raise UserError(f"backend={backend!r} is not valid; valid: {', '.join(BACKENDS)}")
    return backend


def available_engines() -> list[str]:
    """The engines of :data:`ENGINES` whose package is installed here."""
    import importlib.util

    return [e for e in ENGINES if importlib.util.find_spec(_PACKAGE[e]) is not None]


def _require(engine: str) -> None:
    if engine not in available_engines():
        hint = "pip install 'compactbert[bench]'" if engine == "openvino" else "pip install onnxruntime"
        raise UserError(f"backend={engine!r} needs the {_PACKAGE[engine]} package, which is not installed ({hint})")


class _Session:
    """One compiled graph: ``run(feed) -> float32 array``."""

    def __init__(self, engine: str, graph, threads: int | None, precision: str | None):
        self.engine, self.graph = engine, graph
        data = graph.model.SerializeToString()
        if engine == "onnxruntime":
            import onnxruntime as ort

            from ..export.onnx import ort_options

            self.sess = ort.InferenceSession(data, sess_options=ort_options(threads), providers=["CPUExecutionProvider"])
            self.version = ort.__version__
            self.precision = "f32"
            self._run = lambda feed: self.sess.run([graph.output], feed)[0]
            return
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        with tempfile.TemporaryDirectory(prefix="cb-ov-") as tmp:  # OpenVINO reads ONNX from a file
            f = Path(tmp) / "model.onnx"
            f.write_bytes(data)
            compiled = core.compile_model(core.read_model(str(f)), "CPU", config)
        request = compiled.create_infer_request()
        self.version = ov.__version__.split("-")[0]
        p = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = p.to_string() if hasattr(p, "to_string") else str(p)
        self._run = lambda feed: request.infer(feed)[compiled.outputs[0]]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._run(feed), dtype=np.float32)


class EngineEncoder(nn.Module):
    """The lean encoder's interface (``forward`` -> logits, ``token_states``, ``head_out``,
    ``hidden``, ``max_positions``) on an ONNX Runtime / OpenVINO session of the packed model's graph."""

    def __init__(self, engine: str, config: dict[str, Any], make_graph: Callable[[str], Any], threads: int | None,
                 precision: str | None):
        super().__init__()
        self.engine, self.config, self.threads, self.precision = engine, config, threads, precision
        self.make_graph = make_graph
        self.hidden = int(config["hidden_size"])
        self.head_out = True if config.get("head") else None  # PackedModel checks for a head
        self.sessions: dict[str, _Session] = {}
        self.dropped: dict[str, list[str]] = {}
        self.int8_linears: list[str] = []  # linears run as exact integer products (MatMulIntegerToFloat)
        self.agreement: str | None = None  # what dropping unsupported quantizers did, when any were
        first = "logits" if self.head_out else "states"
        self.session(first)

    @property
    def max_positions(self) -> int:
        n = int(self.config["max_position_embeddings"])
        return n - (int(self.config["pad_token_id"]) + 1 if self.config.get("position_style") == "roberta" else 0)

    def session(self, output: str) -> _Session:
        if output not in self.sessions:
            graph = self.make_graph(output)
            self.dropped = graph.dropped
            self.int8_linears = list(graph.int8_linears)
            self.sessions[output] = _Session(self.engine, graph, self.threads, self.precision)
        return self.sessions[output]

    def _feed(self, output: str, ids: torch.Tensor, mask: torch.Tensor | None, types: torch.Tensor | None) -> dict:
        names = self.session(output).graph.inputs
        feed = {"input_ids": ids.numpy().astype(np.int64, copy=False),
                "attention_mask": (mask if mask is not None else torch.ones_like(ids)).numpy().astype(np.int64, copy=False)}
        if "token_type_ids" in names:
            feed["token_type_ids"] = (types if types is not None else torch.zeros_like(ids)).numpy().astype(np.int64, copy=False)
        return feed

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return torch.from_numpy(self.session("logits")(self._feed("logits", input_ids, attention_mask, token_type_ids)))

    def token_states(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return torch.from_numpy(self.session("states")(self._feed("states", input_ids, attention_mask, token_type_ids)))

    def describe(self) -> str:
        s = next(iter(self.sessions.values()))
        name = "ONNX Runtime" if self.engine == "onnxruntime" else "OpenVINO"
        line = (f"{name} {s.version} CPU ({'MLAS' if self.engine == 'onnxruntime' else 'CPU plugin, latency hint'}), "
                f"inference precision {s.precision}, graph built from the packed weights (decoded exactly)")
        if self.engine == "onnxruntime":
            line += ("; fused graph (q/k/v stacked, MultiHeadAttention, BiasGelu, SkipLayerNormalization, "
                     "per-token QuantizeLinear)")
        if self.dropped:
            kinds = ", ".join(f"{k} ({len(v)} linears)" for k, v in self.dropped.items())
            line += f"; activation quantizers without an ONNX form dropped: {kinds}"
            if self.agreement:
                line += f" ({self.agreement})"
        elif any(self.config.get("act_quant") or {}) and self.quantized:
            line += "; trained activation quantizers run as float ops (same codes)"
        if self.int8_linears:
            line += (f"; {len(self.int8_linears)} linears as exact int8 products (MatMulIntegerToFloat, uint8 codes x int8 "
                     "levels, int32 sums)")
        return line

    quantized = True  # set False by engine_model when act_quant="off" dropped them on purpose


def _ort_product_exact(limit: int) -> bool:
    """Whether ONNX Runtime's integer product as the fused graph runs it (``MatMulIntegerToFloat``:
    uint8 codes with zero point 128 x int8 levels, scales 1) is exact for full-range codes and
    levels within +-``limit``, the worst cases included (every sum is below 2**24: exact in float32)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from .graph import MS_DOMAIN

    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, (8, 256)).astype(np.int16)
    x[0], x[1] = 127, -127
    w = rng.integers(-limit, limit + 1, (16, 256)).astype(np.int8)
    w[0], w[1] = limit, -limit
    graph = helper.make_graph(
        [helper.make_node("MatMulIntegerToFloat", ["a", "w", "one", "ones", "zp"], ["y"], domain=MS_DOMAIN)], "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 16])],
        [onnx.numpy_helper.from_array(np.ascontiguousarray(w.T), "w"),
         onnx.numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
         onnx.numpy_helper.from_array(np.ones(16, dtype=np.float32), "ones"),
         onnx.numpy_helper.from_array(np.array(128, dtype=np.uint8), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 8
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        y = sess.run(None, {"a": (x + 128).astype(np.uint8)})[0]
    except Exception:  # noqa: BLE001 - an engine without the op is simply not used for it
        return False
    return bool(np.array_equal(y.astype(np.int64), x.astype(np.int64) @ w.astype(np.int64).T))


@functools.lru_cache(maxsize=None)
def ort_int8_max_level() -> int:
    """The largest weight level ONNX Runtime's u8 x s8 integer product multiplies exactly here with
    full-range activation codes: 127 (VNNI / AMX), 64 (AVX2: int16 pair sums, ``2 * 255 * 64 <=
    32767``) or 0 (not used). Binary and ternary weights are within every limit."""
    if "onnxruntime" not in available_engines():
        return 0
    for limit in (127, 64):
        if _ort_product_exact(limit):
            return limit
    return 0


def _precision(engine: str, dtype: str, has_aq: bool) -> str | None:
    if engine == "onnxruntime":
        if dtype == "bf16":
            raise UserError("dtype='bf16' is not available with backend='onnxruntime' (it runs float32); valid: auto, fp32")
        return None
    if dtype == "fp32" or (dtype == "auto" and has_aq):
        return "f32"  # the trained activation codes need float32 arithmetic
    return "bf16" if dtype == "bf16" else None


def engine_model(packed, tokenizer, engine: str, threads: int | None = None, act_quant: str = "auto",
                 dtype: str = "auto"):
    """A :class:`~compactbert.runtime.PackedModel` of ``packed`` (``PackedWeights``) on ``engine``.

    ``act_quant="off"`` builds the graph without the activation quantizers; otherwise they run as
    trained. When a quantizer kind has no ONNX form, it is dropped and the model's ``describe()``
    says how often the engine then predicts the class compactbert's exact runtime predicts (on 64
    random-token rows).
    """
    from . import PackedModel
    from .graph import build_graph

    _require(engine)
    use_aq = act_quant != "off" and bool(packed.act_quant)
    aq = packed.act_quant if use_aq else None
    precision = _precision(engine, dtype, use_aq)
    # ONNX Runtime runs the integer products where they are exact here; OpenVINO keeps float ops
    limit = ort_int8_max_level() if (engine == "onnxruntime" and use_aq) else 0
    codes = packed.row_codes if limit else None
    enc = EngineEncoder(engine, packed.config,
                        lambda out: build_graph(packed.config, packed.tensors, aq, packed.vocab_map, out, codes, limit,
                                                fused=engine == "onnxruntime"),
                        threads, precision)
    enc.quantized = use_aq
    ran = next(iter(enc.sessions.values())).precision
    model = PackedModel(enc, tokenizer, packed.config, packed.manifest, packed.path,
                        {"f32": "fp32", "bf16": "bf16"}.get(ran, ran), engine, use_aq)
    if enc.dropped:
        enc.agreement = _dropped_agreement(model, packed)
    return model


def _random_rows(model, rows: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = int(model.config.get("vocab", {}).get("original_size", model.config["vocab_size"]))
    ids = torch.randint(0, vocab, (rows, seq), generator=g)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def _dropped_agreement(model, packed) -> str:
    """Same-class share and largest logit difference of ``model`` against compactbert's exact float32
    runtime (activation quantizers emulated) on 64 random-token rows."""
    from .encoder import LeanEncoder

    ref_enc = LeanEncoder(packed.config, packed.tensors, dtype=torch.float32, backend="torch",
                          act_quant=packed.act_quant, vocab_map=packed.vocab_map)
    ids, _, types = _random_rows(model, 64, min(64, model.encoder.max_positions))
    with torch.inference_mode():
        if model.encoder.head_out is None:
            ref, got = ref_enc.token_states(ids, None, types), model.encoder.token_states(ids, None, types)
            return f"largest state difference vs the trained arithmetic on 64 random rows: {float((ref - got).abs().max()):.3g}"
        ref, got = ref_enc(ids, None, types), model.encoder(ids, None, types)
    same = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    return (f"vs the trained arithmetic on 64 random rows: same class {same:.1%}, "
            f"largest logit difference {float((ref - got).abs().max()):.3g}")


ROUTE_MAX_ROWS = 2  # with backend="auto", batches of at most this many rows go to the batch-1 winner
# Tokens per probe row: batch 1 as a single short sentence (what single calls mostly carry; measured:
# a batch-1 probe at 128 tokens sent a 3-layer W8A8 embedding model's single sentences to the engine
# that is 2.6x slower on real STS-B sentences), batch 8 as long rows (what throughput is about).
# Capped at the model's positions.
PROBE_TOKENS = {1: 32, 8: 128}


def _probe_batches(model) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [_random_rows(model, n, min(PROBE_TOKENS[n], model.encoder.max_positions), seed=n) for n in (1, 8)]


def _probe_call(model, b) -> float:
    run = model.encoder if model.encoder.head_out is not None else model.encoder.token_states
    t0 = time.perf_counter()
    with torch.inference_mode():
        run(b[0], None, b[2])  # nothing padded
    return time.perf_counter() - t0


def probe_times(models: dict[str, Any], reps: int = 3) -> dict[str, tuple[float, float]]:
    """``{name: (t(batch 1), t(batch 8) / 8)}`` in seconds, each the median of ``reps`` rounds on
    random tokens (:data:`PROBE_TOKENS` per row, capped at the model's positions). Rounds are interleaved (every model once per round, A B
    C A B C ...) so that a burst of load elsewhere hits all candidates alike; one untimed call of
    each batch first."""
    batches = {name: _probe_batches(m) for name, m in models.items()}
    for name, m in models.items():
        for b in batches[name]:
            _probe_call(m, b)
    t1: dict[str, list[float]] = {n: [] for n in models}
    t8: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(reps):
        for name, m in models.items():
            one, eight = batches[name]
            t1[name].append(_probe_call(m, one))
            t8[name].append(_probe_call(m, eight) / 8)
    return {n: (float(statistics.median(t1[n])), float(statistics.median(t8[n]))) for n in models}


def probe_seconds(model, reps: int = 3) -> float:
    """``t(batch 1) + t(batch 8) / 8`` (seconds) of one model, as :func:`probe_times` measures them."""
    one, per_row = probe_times({"model": model}, reps)["model"]
    return one + per_row


class RoutedEncoder(nn.Module):
    """Two loaded models of one packed directory, each kept for the batch sizes where the probe
    measured it fastest: batches of at most ``max_rows`` rows run on ``small``, larger ones on
    ``large``. Both compute the same function (the trained arithmetic); only the engine differs."""

    def __init__(self, small, large, names: tuple[str, str], max_rows: int = ROUTE_MAX_ROWS):
        super().__init__()
        self.small, self.large = small.encoder, large.encoder
        self.models, self.names, self.max_rows = (small, large), names, int(max_rows)
        self.hidden = large.encoder.hidden
        self.head_out = large.encoder.head_out

    @property
    def max_positions(self) -> int:
        return min(self.small.max_positions, self.large.max_positions)

    def route(self, rows: int) -> nn.Module:
        return self.small if rows <= self.max_rows else self.large

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.route(input_ids.shape[0])(input_ids, attention_mask, token_type_ids)

    def token_states(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.route(input_ids.shape[0]).token_states(input_ids, attention_mask, token_type_ids)

    def describe(self) -> str:
        small, large = self.models
        return (f"batches of 1-{self.max_rows} rows on {self.names[0]} [{small.describe()}]; "
                f"larger batches on {self.names[1]} [{large.describe()}]")


def pick_fastest(own, packed, tokenizer, threads: int | None = None, act_quant: str = "auto", dtype: str = "auto"):
    """``backend="auto"``: compactbert's runtime (``own``, already built) and every available engine,
    timed by :func:`probe_times`. The fastest at batch 1 and the fastest per row at batch 8 are kept:
    when they are the same, that model; otherwise a model whose :class:`RoutedEncoder` sends batches
    of up to :data:`ROUTE_MAX_ROWS` rows to the first and larger ones to the second. Its
    ``selection`` says what was measured and chosen."""
    from . import PackedModel

    candidates = {"compactbert": own}
    for engine in available_engines():
        try:
            candidates[engine] = engine_model(packed, tokenizer, engine, threads, act_quant, dtype)
        except UserError:
            continue  # an option this engine cannot honour (dtype='bf16' on ONNX Runtime): not a candidate
    times = probe_times(candidates)
    ref = _probe_outputs(own)
    diffs = {name: float((_probe_outputs(m) - ref).abs().max()) for name, m in candidates.items()}
    best1 = min(times, key=lambda n: times[n][0])
    best8 = min(times, key=lambda n: times[n][1])
    parts = [f"{n} {1e3 * times[n][0]:.2f} / {1e3 * times[n][1]:.2f} ms"
             + (f" (max |dlogit| {diffs[n]:.2g})" if n != "compactbert" else "")
             for n in sorted(times, key=lambda n: sum(times[n]))]
    n1, n8 = (min(PROBE_TOKENS[n], own.encoder.max_positions) for n in (1, 8))
    probe = (f"probe t(bs1, {n1} tokens) / t(bs8, {n8} tokens)/8, median of 3 interleaved "
             "rounds: " + ", ".join(parts))
    if best1 == best8:
        chosen = candidates[best1]
        chosen.selection = f"backend auto chose {best1}: {probe}"
        return chosen
    small, large = candidates[best1], candidates[best8]
    chosen = PackedModel(RoutedEncoder(small, large, (best1, best8)), tokenizer, packed.config, packed.manifest,
                         packed.path, large.dtype, f"{small.backend}|{large.backend}", large.act_quant)
    chosen.selection = (f"backend auto chose {best1} for batches of 1-{ROUTE_MAX_ROWS} rows and {best8} for larger "
                        f"ones: {probe}")
    return chosen


def _probe_outputs(model) -> torch.Tensor:
    ids, _, types = _random_rows(model, 8, min(32, model.encoder.max_positions), seed=7)
    with torch.inference_mode():
        if model.encoder.head_out is None:
            return model.encoder.token_states(ids, None, types).float()
        return model.encoder(ids, None, types).float()
