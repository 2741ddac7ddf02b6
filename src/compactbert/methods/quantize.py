"""Quantization-aware training (XTC, Q8BERT/Combining Compressions): fake-quantized weights and
activations with straight-through gradients, on the layers chosen by name patterns.

Recipe forms::

    # the general method
    - {type: quantize, weight: int, bits: 4, granularity: group, group_size: 32, activations: dynamic8}
    - {type: quantize, weight: groupbits, bits: 2, row_group_size: 64}             # asymmetric per row
    - {type: quantize, weight: ternary, activations: dynamic8, embeddings: true}     # XTC W2A8
    - {type: quantize, weight: int, bits: 8, learned_step: true}                   # LSQ int8
    - {type: quantize, weight: int, bits: 8, activations: static8, calibration_steps: 32}

    # aliases with XTC / Q8BERT defaults (activations dynamic8, word embeddings quantized too)
    - {type: binary}      # W1A8  == quantize weight: binary
    - {type: ternary}     # W2A8  == quantize weight: ternary
    - {type: int8}        # W8A8  == quantize weight: int, bits: 8 (per-row symmetric)

Lifecycle: ``attach`` swaps the targets (default: every Linear inside the encoder layers, see
:func:`~compactbert.nn.surgery.encoder_linear_patterns`) for CompressedLinear and sets their
quantizers; with ``embeddings: true`` the word embeddings become a quantized CompressedEmbedding.
A learned step size is a new Parameter created at ``attach``: build the optimizer after attaching.
With ``activations: static8`` the first ``calibration_steps`` training steps only observe the
activation ranges (inputs pass unquantized), then the ranges are frozen. ``finalize`` freezes
everything (learned steps stop learning; uncalibrated ranges are frozen as observed so far).
Masks set by pruning methods on the same layers are kept: pruning and quantization stack. Only the
slots this method configures are set: ``activations: null`` leaves an input quantizer from an
earlier stage in place, ``weight: null`` leaves an earlier weight quantizer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from torch import nn

from ..nn.quant import (
    DynamicActQuantizer,
    Quantizer,
    StaticActQuantizer,
    WeightQuantizer,
    quantizer_class,
    quantizer_kinds,
)
from ..nn.surgery import compress_embeddings, compress_modules, encoder_linear_patterns, match_modules
from ..registry import register_method
from .base import Method, TrainState

__all__ = ["Quantize", "BinaryQAT", "TernaryQAT", "Int8QAT"]

_STATIC_ONLY = ("calibration_steps", "observer", "activation_symmetric")


COMPILE_MIN_STEPS = 500  # compiling (~10 s for MiniLM's 3 shapes) pays back after ~400 steps


def weight_kinds() -> list[str]:
    """Registered weight quantizer kinds (the values of ``weight:``)."""
    return [k for k in quantizer_kinds() if issubclass(quantizer_class(k), WeightQuantizer)]


def _key_owners() -> dict[str, list[str]]:
    """Recipe key -> the weight kinds that take it (keys some kinds take and others refuse)."""
    owners: dict[str, list[str]] = {}
    for k in weight_kinds():
        for key in quantizer_class(k).recipe_keys:
            owners.setdefault(key, []).append(k)
    return owners


@register_method("quantize")
class Quantize(Method):
    """Quantization-aware training of weights (any registered weight kind) and activations.

    Attributes:
        weight: A weight quantizer kind (:mod:`compactbert.nn.quant`): ``binary`` (1 bit, sign x
            mean|w| per row), ``ternary`` (2 bits, TWN threshold 0.7 mean|w|, per-row scale),
            ``int`` (``bits`` 2..8), ``groupbits`` (``bits`` 1..8 per group of ``row_group_size``
            output rows, asymmetric per row), or null to leave weights float.
        bits: The width for kinds that take one (int: 2..8, default 8; groupbits: 1..8). Binary is
            1 and ternary 2 (may be given, must agree).
        symmetric: ``int`` only: symmetric (restricted range) or asymmetric with a zero point.
        granularity: ``int`` only: one scale per ``tensor``, ``row`` or ``group``.
        group_size: ``int`` with ``granularity: group``: elements per group (divides the rows).
        learned_step: ``int`` only: LSQ learnable step size.
        row_group_size: ``groupbits`` only: output rows per group (divides every target's rows).
        activations: null, ``dynamic8`` (per-token 8-bit, XTC) or ``static8`` (calibrated range).
        activation_symmetric, observer, calibration_steps: ``static8`` only (see StaticActQuantizer).
        targets: Module-name patterns (glob, or ``re:`` regex); default: all Linear layers of the
            encoder layers. A pattern that matches nothing is an error.
        embeddings: Also quantize the word embeddings with the weight quantizer (XTC does).
        compile: Run binary/ternary weight and dynamic activation quantization through
            ``torch.compile`` (bitwise the same values; 2-3x faster on CPU, but compiling takes a
            few seconds per weight shape).
            ``auto`` (default): on for runs of at least ``COMPILE_MIN_STEPS`` steps.

    Which keys a weight kind takes, its bit range and how it is built are the kind's own
    (``recipe_keys``, ``recipe_bits``, ``check_recipe``, ``from_recipe``): a kind registered with
    :func:`~compactbert.nn.quant.register_quantizer` is usable here by its name.
    """

    effects = frozenset({"quantizes_weights", "quantizes_activations"})
    type: Literal["quantize"] = "quantize"
    weight: str | None = "int"
    bits: int | None = None
    symmetric: bool = True
    granularity: Literal["tensor", "row", "group"] = "row"
    group_size: int | None = Field(None, ge=1)
    learned_step: bool = False
    row_group_size: int | None = Field(None, ge=1)
    activations: Literal["dynamic8", "static8"] | None = None
    activation_symmetric: bool = True
    observer: Literal["minmax", "percentile"] = "minmax"
    calibration_steps: int = Field(16, ge=1)
    targets: list[str] | None = None
    embeddings: bool = False
    compile: bool | Literal["auto"] = "auto"

    _layers: dict[str, Any] = PrivateAttr(default_factory=dict)
    _calibrating: bool = PrivateAttr(default=False)

    @field_validator("targets")
    @classmethod
    def _targets_ok(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("targets is empty; give module-name patterns or leave it out for the encoder layers")
            bad = [p for p in v if not p.strip()]
            if bad:
                raise ValueError("targets contains an empty pattern")
        return v

    @field_validator("weight")
    @classmethod
    def _weight_ok(cls, v: str | None) -> str | None:
        if v is not None and v not in weight_kinds():
            kinds = ", ".join(weight_kinds())
            raise ValueError(f"weight {v!r} is not a weight quantizer kind; valid: {kinds}, or null")
        return v

    @field_validator("bits")
    @classmethod
    def _bits_ok(cls, v: int | None, info: ValidationInfo) -> int | None:
        w = info.data.get("weight")
        if v is None:
            return v
        if w is None:
            raise ValueError("bits needs a weight quantizer; set weight: binary, ternary or int")
        lo, hi, _ = quantizer_class(w).recipe_bits
        if lo == hi and v != lo:
            raise ValueError(f"bits={v} does not fit weight {w!r} ({lo} bit(s)); leave bits out")
        if not lo <= v <= hi:
            raise ValueError(f"bits={v} is out of range for weight {w!r}; valid: {lo}..{hi}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Quantize":
        w, given = self.weight, self.model_fields_set
        if w is not None:
            kind = quantizer_class(w)
            owners = _key_owners()
            wrong = [k for k in owners if k not in kind.recipe_keys and k in given
                     and getattr(self, k) != type(self).model_fields[k].default]
            if wrong:
                who = " / ".join(repr(o) for o in owners[wrong[0]])
                raise ValueError(f"{', '.join(wrong)}: only for weight {who}, not {w!r}")
            kind.check_recipe(self._kind_options(), set(given))
        else:
            if self.embeddings:
                raise ValueError("embeddings: true needs a weight quantizer; set weight: binary, ternary or int")
            if self.activations is None:
                raise ValueError("weight and activations are both null: this method would do nothing")
        if self.activations != "static8":
            wrong = [k for k in _STATIC_ONLY if k in given and getattr(self, k) != type(self).model_fields[k].default]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for activations 'static8'")
        return self

    def _kind_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in quantizer_class(self.weight).recipe_keys}

    # -- description ---------------------------------------------------------------------------
    def weight_bits(self) -> int | None:
        """Bits per weight (1 binary, 2 ternary, ``bits`` or the kind's default), None when weights stay float."""
        if self.weight is None:
            return None
        lo, hi, default = quantizer_class(self.weight).recipe_bits
        return lo if lo == hi else (self.bits or default)

    def describe(self) -> str:
        parts = []
        if self.weight is not None:
            parts.append(quantizer_class(self.weight).describe_recipe(self.weight_bits(), self._kind_options()))
        if self.activations == "dynamic8":
            parts.append("8-bit dynamic per-token activations")
        elif self.activations == "static8":
            parts.append(f"8-bit static activations ({self.observer}, calibrated on {self.calibration_steps} steps)")
        where = ", ".join(self.targets) if self.targets else "all Linear layers of the encoder layers"
        emb = " + word embeddings" if self.embeddings else ""
        return f"{self.type}: quantization-aware training, {'; '.join(parts)} on {where}{emb}"

    # -- building quantizers ---------------------------------------------------------------------
    def make_weight_quantizer(self, shape: tuple[int, ...]) -> Quantizer | None:
        """A fresh weight quantizer for one weight of ``shape`` (None when weights stay float)."""
        if self.weight is None:
            return None
        return quantizer_class(self.weight).from_recipe(self.weight_bits(), self._kind_options(), tuple(shape))

    def make_input_quantizer(self) -> Quantizer | None:
        """A fresh activation quantizer for one layer's input (None without activation quantization)."""
        if self.activations == "dynamic8":
            return DynamicActQuantizer(8)
        if self.activations == "static8":
            return StaticActQuantizer(8, symmetric=self.activation_symmetric, observer=self.observer)
        return None

    # -- hooks ----------------------------------------------------------------------------------
    def _weight_quantizers(self, model: nn.Module, found: dict[str, nn.Module]) -> dict[str, Quantizer]:
        """One checked weight quantizer per target (and ``"<embeddings>"``), before anything changes."""
        out: dict[str, Quantizer] = {}
        if self.weight is None:
            return out
        where = f"{self.type}.targets: "
        for name, mod in found.items():
            shape = tuple(mod.weight.shape)
            out[name] = q = self.make_weight_quantizer(shape)
            q.check_shape(shape, where=f"{where}{name}")
        if self.embeddings:
            emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
            if isinstance(emb, nn.Embedding):
                shape = tuple(emb.weight.shape)
                out["<embeddings>"] = q = self.make_weight_quantizer(shape)
                q.check_shape(shape, where=f"{self.type}.embeddings: word embeddings")
        return out

    def _attach(self, state: TrainState) -> None:
        model = state.model
        where = f"{self.type}.targets: "
        targets = self.targets or encoder_linear_patterns(model)
        # check everything before changing the model, so that an error leaves it untouched
        weight_qs = self._weight_quantizers(model, match_modules(model, targets, where=where))
        layers: dict[str, Any] = compress_modules(model, targets, where=where)
        compiled = self.compile is True or (self.compile == "auto" and state.total_steps >= COMPILE_MIN_STEPS)
        # set only what this method configures: a quantizer from an earlier stage stays otherwise
        for name, layer in layers.items():
            if self.weight is not None:
                layer.weight_quantizer = weight_qs[name]
                layer.weight_quantizer.compiled = compiled  # not embeddings: their row count varies
            if self.activations is not None:
                layer.input_quantizer = self.make_input_quantizer()
                layer.input_quantizer.compiled = compiled
        if self.embeddings:
            embs = compress_embeddings(model, where=f"{self.type}.embeddings: ")
            for emb in embs.values():
                emb.weight_quantizer = weight_qs.get("<embeddings>") or self.make_weight_quantizer(tuple(emb.weight.shape))
            layers = {**layers, **embs}
        self._layers = layers
        if self.activations == "static8":
            for layer in layers.values():
                if isinstance(getattr(layer, "input_quantizer", None), StaticActQuantizer):
                    layer.input_quantizer.start_calibration()
            self._calibrating = True

    def _on_step(self, state: TrainState) -> None:
        if self._calibrating and state.step >= self.calibration_steps:
            self._freeze_ranges()
            state.extras["quantize_calibrated_at"] = state.step

    def _freeze_ranges(self) -> None:
        for layer in self._layers.values():
            iq = getattr(layer, "input_quantizer", None)
            if isinstance(iq, StaticActQuantizer):
                iq.freeze()
        self._calibrating = False

    def _finalize(self, state: TrainState) -> None:
        self._freeze_ranges()
        for layer in self._layers.values():
            for q in (layer.weight_quantizer, getattr(layer, "input_quantizer", None)):
                if q is not None:
                    q.freeze()

    @property
    def layers(self) -> dict[str, Any]:
        """The compressed layers this method quantizes (after ``attach``), by module name."""
        return dict(self._layers)


class XtcAlias(Quantize):
    """Defaults shared by the XTC / Q8BERT aliases: 8-bit dynamic activations, word embeddings
    quantized too (not a recipe type itself)."""

    activations: Literal["dynamic8", "static8"] | None = "dynamic8"
    embeddings: bool = True


@register_method("binary")
class BinaryQAT(XtcAlias):
    """XTC W1A8: binary weights (sign x mean|w| per row), 8-bit dynamic activations, word
    embeddings binary too. Same keys as ``quantize``; pair it with distillation."""

    type: Literal["binary"] = "binary"  # type: ignore[assignment]
    weight: Literal["binary"] = "binary"  # type: ignore[assignment]


@register_method("ternary")
class TernaryQAT(XtcAlias):
    """XTC W2A8: ternary weights (TWN, per-row scale), 8-bit dynamic activations, word embeddings
    ternary too. Same keys as ``quantize``; pair it with distillation."""

    type: Literal["ternary"] = "ternary"  # type: ignore[assignment]
    weight: Literal["ternary"] = "ternary"  # type: ignore[assignment]


@register_method("int8")
class Int8QAT(XtcAlias):
    """W8A8 (Q8BERT / Combining Compressions' QAT): int8 per-row symmetric weights, 8-bit dynamic
    activations, word embeddings int8 too. Same keys as ``quantize`` (``bits`` is fixed to 8)."""

    type: Literal["int8"] = "int8"  # type: ignore[assignment]
    weight: Literal["int"] = "int"  # type: ignore[assignment]
    bits: Literal[8] = 8  # type: ignore[assignment]

