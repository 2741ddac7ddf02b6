"""Quantization-aware training (XTC, Q8BERT/Combining Compressions): fake-quantized weights and
activations with straight-through gradients, on the layers chosen by name patterns.

Recipe forms::

    # the general method
    - {type: quantize, weight: int, bits: 4, granularity: group, group_size: 32, activations: dynamic8}
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

from ..nn.quantizers import (
    BinaryQuantizer,
    DynamicActQuantizer,
    IntQuantizer,
    Quantizer,
    StaticActQuantizer,
    TernaryQuantizer,
)
from ..nn.surgery import compress_embeddings, compress_modules, encoder_linear_patterns, match_modules
from ..registry import register_method
from .base import Method, TrainState

__all__ = ["Quantize", "BinaryQAT", "TernaryQAT", "Int8QAT"]

_INT_ONLY = ("symmetric", "granularity", "group_size", "learned_step")
_STATIC_ONLY = ("calibration_steps", "observer", "activation_symmetric")


COMPILE_MIN_STEPS = 500  # compiling (~10 s for MiniLM's 3 shapes) pays back after ~400 steps


@register_method("quantize")
class Quantize(Method):
    """Quantization-aware training of weights (binary | ternary | int-k) and activations.

    Attributes:
        weight: ``binary`` (1 bit, sign x mean|w| per row), ``ternary`` (2 bits, TWN threshold
            0.7 mean|w|, per-row scale), ``int`` (``bits`` 2..8), or null to leave weights float.
        bits: For ``int``: 2..8 (default 8). Binary is 1 and ternary 2 (may be given, must agree).
        symmetric: ``int`` only: symmetric (restricted range) or asymmetric with a zero point.
        granularity: ``int`` only: one scale per ``tensor``, ``row`` or ``group``.
        group_size: ``int`` with ``granularity: group``: elements per group (divides the rows).
        learned_step: ``int`` only: LSQ learnable step size.
        activations: null, ``dynamic8`` (per-token 8-bit, XTC) or ``static8`` (calibrated range).
        activation_symmetric, observer, calibration_steps: ``static8`` only (see StaticActQuantizer).
        targets: Module-name patterns (glob, or ``re:`` regex); default: all Linear layers of the
            encoder layers. A pattern that matches nothing is an error.
        embeddings: Also quantize the word embeddings with the weight quantizer (XTC does).
        compile: Run binary/ternary weight and dynamic activation quantization through
            ``torch.compile`` (bitwise the same values; 2-3x faster on CPU, but compiling takes a
            few seconds per weight shape).
            ``auto`` (default): on for runs of at least ``COMPILE_MIN_STEPS`` steps.
    """

    type: Literal["quantize"] = "quantize"
    weight: Literal["binary", "ternary", "int"] | None = "int"
    bits: int | None = None
    symmetric: bool = True
    granularity: Literal["tensor", "row", "group"] = "row"
    group_size: int | None = Field(None, ge=1)
    learned_step: bool = False
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

    @field_validator("bits")
    @classmethod
    def _bits_ok(cls, v: int | None, info: ValidationInfo) -> int | None:
        w = info.data.get("weight")
        fixed = {"binary": 1, "ternary": 2}
        if v is None:
            return v
        if w in fixed and v != fixed[w]:
            raise ValueError(f"bits={v} does not fit weight {w!r} ({fixed[w]} bit(s)); leave bits out")
        if w == "int" and not 2 <= v <= 8:
            raise ValueError(f"bits={v} is out of range for weight 'int'; valid: 2..8")
        if w is None:
            raise ValueError("bits needs a weight quantizer; set weight: binary, ternary or int")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Quantize":
        w, given = self.weight, self.model_fields_set
        fixed = {"binary": 1, "ternary": 2}
        if w in fixed:
            wrong = [k for k in _INT_ONLY if k in given and getattr(self, k) != type(self).model_fields[k].default]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for weight 'int', not {w!r}")
        elif w == "int":
            if self.granularity == "group" and self.group_size is None:
                raise ValueError("granularity 'group' needs group_size (e.g. 64 or 128)")
            if self.granularity != "group" and self.group_size is not None:
                raise ValueError(f"group_size is only used with granularity 'group' (granularity is {self.granularity!r})")
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

    # -- description ---------------------------------------------------------------------------
    def weight_bits(self) -> int | None:
        """Bits per weight (1 binary, 2 ternary, ``bits`` for int), None when weights stay float."""
        if self.weight is None:
            return None
        return {"binary": 1, "ternary": 2}.get(self.weight, self.bits or 8)

    def describe(self) -> str:
        parts = []
        if self.weight == "int":
            how = f"{'symmetric' if self.symmetric else 'asymmetric'} per {self.granularity}"
            if self.granularity == "group":
                how += f" of {self.group_size}"
            parts.append(f"int{self.weight_bits()} weights ({how}{', learned step' if self.learned_step else ''})")
        elif self.weight is not None:
            parts.append(f"{self.weight} weights ({self.weight_bits()} bit, per-row scale)")
        if self.activations == "dynamic8":
            parts.append("8-bit dynamic per-token activations")
        elif self.activations == "static8":
            parts.append(f"8-bit static activations ({self.observer}, calibrated on {self.calibration_steps} steps)")
        where = ", ".join(self.targets) if self.targets else "all Linear layers of the encoder layers"
        emb = " + word embeddings" if self.embeddings else ""
        return f"{self.type}: quantization-aware training, {'; '.join(parts)} on {where}{emb}"

    # -- building quantizers ---------------------------------------------------------------------
    def make_weight_quantizer(self) -> Quantizer | None:
        """A fresh weight quantizer for one layer (None when weights stay float)."""
        if self.weight == "binary":
            return BinaryQuantizer()
        if self.weight == "ternary":
            return TernaryQuantizer()
        if self.weight == "int":
            return IntQuantizer(self.weight_bits() or 8, self.symmetric, self.granularity, self.group_size,
                                self.learned_step)
        return None

    def make_input_quantizer(self) -> Quantizer | None:
        """A fresh activation quantizer for one layer's input (None without activation quantization)."""
        if self.activations == "dynamic8":
            return DynamicActQuantizer(8)
        if self.activations == "static8":
            return StaticActQuantizer(8, symmetric=self.activation_symmetric, observer=self.observer)
        return None

    # -- hooks ----------------------------------------------------------------------------------
    def _attach(self, state: TrainState) -> None:
        model = state.model
        where = f"{self.type}.targets: "
        targets = self.targets or encoder_linear_patterns(model)
        # check everything before changing the model, so that an error leaves it untouched
        probe = self.make_weight_quantizer()
        found = match_modules(model, targets, where=where)
        if probe is not None:
            for name, mod in found.items():
                probe.check_shape(tuple(mod.weight.shape), where=f"{where}{name}")
            if self.embeddings:
                emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
                if isinstance(emb, nn.Embedding):
                    probe.check_shape(tuple(emb.weight.shape), where=f"{self.type}.embeddings: word embeddings")
        layers: dict[str, Any] = compress_modules(model, targets, where=where)
        compiled = self.compile is True or (self.compile == "auto" and state.total_steps >= COMPILE_MIN_STEPS)
        # set only what this method configures: a quantizer from an earlier stage stays otherwise
        for layer in layers.values():
            if self.weight is not None:
                layer.weight_quantizer = self.make_weight_quantizer()
                layer.weight_quantizer.compiled = compiled  # not embeddings: their row count varies
            if self.activations is not None:
                layer.input_quantizer = self.make_input_quantizer()
                layer.input_quantizer.compiled = compiled
        if self.embeddings:
            embs = compress_embeddings(model, where=f"{self.type}.embeddings: ")
            for emb in embs.values():
                emb.weight_quantizer = self.make_weight_quantizer()
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


@register_method("binary")
class BinaryQAT(Quantize):
    """XTC W1A8: binary weights (sign x mean|w| per row), 8-bit dynamic activations, word
    embeddings binary too. Same keys as ``quantize``; pair it with distillation."""

    type: Literal["binary"] = "binary"  # type: ignore[assignment]
    weight: Literal["binary"] = "binary"  # type: ignore[assignment]
    activations: Literal["dynamic8", "static8"] | None = "dynamic8"
    embeddings: bool = True


@register_method("ternary")
class TernaryQAT(Quantize):
    """XTC W2A8: ternary weights (TWN, per-row scale), 8-bit dynamic activations, word embeddings
    ternary too. Same keys as ``quantize``; pair it with distillation."""

    type: Literal["ternary"] = "ternary"  # type: ignore[assignment]
    weight: Literal["ternary"] = "ternary"  # type: ignore[assignment]
    activations: Literal["dynamic8", "static8"] | None = "dynamic8"
    embeddings: bool = True


@register_method("int8")
class Int8QAT(Quantize):
    """W8A8 (Q8BERT / Combining Compressions' QAT): int8 per-row symmetric weights, 8-bit dynamic
    activations, word embeddings int8 too. Same keys as ``quantize`` (``bits`` is fixed to 8)."""

    type: Literal["int8"] = "int8"  # type: ignore[assignment]
    weight: Literal["int"] = "int"  # type: ignore[assignment]
    bits: Literal[8] = 8  # type: ignore[assignment]
    activations: Literal["dynamic8", "static8"] | None = "dynamic8"
    embeddings: bool = True

