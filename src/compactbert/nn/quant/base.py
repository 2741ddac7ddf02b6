"""What every quantizer kind is, and the registry that finds a kind by name.

A kind is a subclass of :class:`WeightQuantizer` (weights) or :class:`ActivationQuantizer`
(a layer's input) decorated with :func:`register_quantizer`; one file per kind in this package.
Everything outside the quantizer -- size accounting, the packer, the reader, the runtime, the
recipe validator -- asks the quantizer (its :meth:`~Quantizer.spec`, :meth:`~WeightQuantizer.encode`,
:meth:`~WeightQuantizer.decode`, :meth:`~WeightQuantizer.row_bits`, ...) instead of switching on its
kind, so a new kind is one file and a registration::

    @register_quantizer
    class MyQuantizer(WeightQuantizer):
        kind = "mine"
        ...

    quantizer_from_spec({"kind": "mine", ...})     # builds one; a packed model stores the spec
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ...errors import UserError, did_you_mean
from .codes import Codes, ScaleLayout
from .ops import rows_cols

__all__ = [
    "Quantizer",
    "WeightQuantizer",
    "ActivationQuantizer",
    "IntRange",
    "spec_of",
    "register_quantizer",
    "quantizer_class",
    "quantizer_kinds",
    "quantizer_from_spec",
]


class Quantizer(nn.Module, metaclass=abc.ABCMeta):
    """Base class: a fake quantizer with a straight-through gradient.

    Subclasses set ``kind`` (the ``spec()["kind"]`` and registry name), ``bits`` and implement
    ``forward``, ``quantize_ints``, ``dequantize`` and ``spec``.

    Attributes:
        bits: Bits per stored code (the widest, for a kind with several widths).
        represents_zero: Whether 0.0 is one of the levels (False for binary). A pruned tensor whose
            quantizer cannot represent zero must be stored with its mask.
        row_local: True when each row's quantized value depends only on that row (per-row/group
            scales, no per-row parameters). Lets an embedding quantize only the looked-up rows.
        is_activation: True for activation quantizers (nothing of theirs is stored but a range).
    """

    kind: ClassVar[str] = ""
    represents_zero: ClassVar[bool] = True
    is_activation: ClassVar[bool] = False
    bits: int
    #: Run the fake quantization through ``torch.compile`` (binary and ternary weights; same
    #: values bitwise, faster; worth it for long runs: compiling takes seconds per weight shape).
    #: Set by the ``quantize`` method (its ``compile`` key); not part of :meth:`spec`.
    compiled: bool = False

    # -- description -----------------------------------------------------------------------
    @abc.abstractmethod
    def spec(self) -> dict[str, Any]:
        """A JSON-able description; ``quantizer_from_spec(q.spec())`` builds an equal quantizer."""

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Quantizer":
        """Build one from :meth:`spec` output (its ``kind`` removed): keyword arguments of ``__init__``.

        Raises:
            UserError: keys that ``__init__`` does not take.
        """
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        extra = sorted(set(spec) - set(params))
        if extra:
            raise UserError(
                f"quantizer spec for kind {cls.kind!r} has unknown key(s) {', '.join(extra)}; "
                f"valid: {', '.join(params) or '(none)'}"
            )
        return cls(**spec)

    @property
    def row_local(self) -> bool:
        return False

    def code_range(self) -> tuple[int, int]:
        """(lowest, highest) integer code returned by :meth:`quantize_ints`."""
        return 0, 2**self.bits - 1

    @abc.abstractmethod
    def num_scales(self, shape: torch.Size | tuple[int, ...]) -> int:
        """How many scales a tensor of ``shape`` needs."""

    def scale_bits(self, shape: torch.Size | tuple[int, ...]) -> int:
        """Bits for the fp16 scales (and zero points) of a tensor of ``shape``."""
        return 16 * self.num_scales(shape)

    def storage_bits(self, shape: torch.Size | tuple[int, ...]) -> int:
        """Bits to store a tensor of ``shape`` packed: codes + fp16 parameters."""
        rows, cols = rows_cols(shape)
        return rows * cols * self.bits + self.scale_bits(shape)

    def check_shape(self, shape: torch.Size | tuple[int, ...], where: str = "") -> None:
        """Raise :class:`UserError` if this quantizer cannot quantize a tensor of ``shape``."""

    # -- lifecycle -------------------------------------------------------------------------
    def initialize(self, w: torch.Tensor) -> None:
        """Called when attached to a layer, with its (masked) weight: set up learned parameters."""

    def freeze(self) -> None:
        """Stop learning/calibrating: the quantizer's parameters stay fixed from now on."""

    # -- integers --------------------------------------------------------------------------
    @abc.abstractmethod
    def quantize_ints(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Integer codes of ``w`` (same shape), float32 scales, float32 zero points or None."""

    @abc.abstractmethod
    def dequantize(
        self,
        ints: torch.Tensor,
        scales: torch.Tensor,
        zero_points: torch.Tensor | None,
        shape: torch.Size | tuple[int, ...],
    ) -> torch.Tensor:
        """Float32 values of ``shape`` from :meth:`quantize_ints` output; equals ``forward(w)`` bitwise."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "kind")


class WeightQuantizer(Quantizer):
    """A weight quantizer: what it stores (:meth:`encode`) and how that reads back (:meth:`decode`).

    The packing contract: for a 2-D weight ``w``, ``self.decode(self.encode(w))`` is bitwise
    ``self(w)``; ``storage_bits`` counts what :meth:`encode` produces (codes at their rows' widths,
    16 bits per stored parameter). Kinds with one width and ``scales`` (+ ``zero_points``) from
    :meth:`quantize_ints` get :meth:`encode` for free (``quantize_ints``' scales and third result
    are stored under :attr:`param_names`) and implement :meth:`decode_values`.
    """

    #: Names of the parameters :meth:`encode` returns, in storage order.
    param_names: tuple[str, ...] = ("scales",)
    #: Keys of the ``quantize`` recipe method this kind takes besides ``bits`` (fields of that
    #: method; see :meth:`from_recipe`).
    recipe_keys: ClassVar[tuple[str, ...]] = ()
    #: (lowest, highest, default) of the recipe's ``bits``; a kind of one width has lowest == highest.
    recipe_bits: ClassVar[tuple[int, int, int]] = (8, 8, 8)

    # -- the ``quantize`` recipe method -------------------------------------------------------
    @classmethod
    def check_recipe(cls, options: dict[str, Any], given: set[str]) -> None:
        """Raise ``ValueError`` for recipe keys this kind refuses together (``options``: its
        :attr:`recipe_keys` with their values; ``given``: the keys the recipe set)."""

    @classmethod
    def from_recipe(cls, bits: int, options: dict[str, Any], shape: tuple[int, ...]) -> "WeightQuantizer":
        """A quantizer for one weight of ``shape`` from the ``quantize`` method's keys."""
        lo, hi, _ = cls.recipe_bits
        return cls(**options) if lo == hi else cls(bits=bits, **options)

    @classmethod
    def describe_recipe(cls, bits: int, options: dict[str, Any]) -> str:
        """A few words for ``compactbert recipe check``."""
        return f"{cls.kind} weights ({bits} bit, per-row scale)"

    def scale_layout(self, shape: torch.Size | tuple[int, ...]) -> ScaleLayout:
        """Where the parameters of a weight of ``shape`` are (default: one per row)."""
        return ScaleLayout("row")

    def row_bits(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """(rows,) int64 bit width of each row of a weight of ``shape`` (default: ``bits`` everywhere)."""
        return torch.full((rows_cols(shape)[0],), int(self.bits), dtype=torch.int64)

    def num_scales(self, shape) -> int:
        rows, cols = rows_cols(shape)
        layout = self.scale_layout(shape)
        stored_rows = int((self.row_bits(shape) > 0).sum())
        groups = cols // layout.group_size if layout.kind == "group" else 1
        return layout.count(stored_rows, groups)

    def scale_bits(self, shape) -> int:
        return 16 * len(self.param_names) * self.num_scales(shape)

    def storage_bits(self, shape) -> int:
        return int(self.row_bits(shape).sum()) * rows_cols(shape)[1] + self.scale_bits(shape)

    def encode(self, w: torch.Tensor) -> Codes:
        """The codes a packer stores for the 2-D weight ``w`` (from :meth:`quantize_ints`)."""
        codes, scales, zp = self.quantize_ints(w)
        rows, cols = int(w.shape[0]), int(w.shape[1])
        layout = self.scale_layout(tuple(w.shape))
        shape = layout.shape(rows, cols)
        given = [t for t in (scales, zp) if t is not None]  # the second one: zero points, minimums, ...
        params = {n: t.detach().float().cpu().reshape(shape) for n, t in zip(self.param_names, given)}
        stored = codes.detach().cpu().to(torch.int64) - self.code_range()[0]
        return Codes(stored=stored.reshape(rows, cols), row_bits=self.row_bits(tuple(w.shape)), params=params,
                     layout=layout)

    def decode(self, codes: Codes) -> torch.Tensor:
        """Float32 values ``(rows, cols)`` of ``codes``; rows of 0 bits are zeros."""
        params = {n: codes.expand(n) for n in codes.params}
        out = self.decode_values(codes.stored.to(torch.float32), params)
        zero_rows = codes.row_bits == 0
        if bool(zero_rows.any()):
            out = out.masked_fill(zero_rows[:, None], 0.0)
        return out

    @abc.abstractmethod
    def decode_values(self, stored: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float32 values of stored codes (as float32, exact integers) with their parameters
        expanded to one per element; bitwise what ``forward`` computes."""

    def int_levels(self, codes: Codes) -> torch.Tensor | None:
        """Signed integer levels ``L`` (int64, codes' shape) with ``value == L * scales[:, None]``
        when the values are that (one scale per row, nothing else); else None. Lets the runtime
        multiply integers exactly (its int8 products)."""
        return None


class ActivationQuantizer(Quantizer):
    """An activation quantizer: nothing of the activations is stored, only what
    :meth:`packed_params` returns; :meth:`from_packed` rebuilds a frozen one for the runtime."""

    is_activation = True

    def packed_params(self) -> dict[str, torch.Tensor]:
        """Tensors a packed model stores for this quantizer (fp16 values; none by default)."""
        return {}

    @classmethod
    def from_packed(cls, spec: dict[str, Any], params: dict[str, torch.Tensor]) -> "ActivationQuantizer":
        """A frozen quantizer that quantizes as the one that was packed (``spec`` without ``kind``)."""
        return cls.from_spec(spec)

    def runtime_key(self) -> tuple:
        """Equal keys quantize equal inputs equally (the runtime shares one quantized input)."""
        return (self.kind, tuple(sorted(self.spec().items())))

    @property
    def int8_exact(self) -> bool:
        """Whether :meth:`int8_codes` gives this quantization exactly (symmetric, at most 8 bits)."""
        return False

    def int8_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 codes, scale) with ``self(x) == codes * scale`` (scale per token ``(tokens, 1)`` or a
        scalar), for a quantizer that is :attr:`int8_exact`."""
        raise NotImplementedError(f"{self.kind} activations have no exact int8 codes")


class IntRange:
    """Integer code range of a ``bits``-bit quantizer: symmetric (restricted, +-(2^(b-1)-1)) or
    asymmetric (0 .. 2^b-1)."""

    bits: int
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def code_range(self) -> tuple[int, int]:
        return self.qmin, self.qmax


def spec_of(q: Quantizer, *keys: str) -> dict[str, Any]:
    """``{"kind": q.kind, key: q.<key>, ...}``: a :meth:`Quantizer.spec` made of constructor arguments."""
    return {"kind": q.kind, **{k: getattr(q, k) for k in keys}}


# ----------------------------------------------------------------------------- registry
_KINDS: dict[str, type[Quantizer]] = {}
Q = TypeVar("Q", bound=type)


def register_quantizer(cls: Q) -> Q:
    """Class decorator: make ``cls`` buildable from specs under its ``kind``."""
    kind = getattr(cls, "kind", "")
    if not kind or not isinstance(kind, str):
        raise ValueError(f"{cls.__qualname__} needs a class attribute kind = '<name>' to be registered")
    old = _KINDS.get(kind)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"quantizer kind {kind!r} is already registered by {old.__qualname__}")
    _KINDS[kind] = cls
    return cls


def quantizer_kinds() -> tuple[str, ...]:
    """Names of every registered kind."""
    return tuple(_KINDS)


def quantizer_class(kind: Any, where: str = "quantizer kind") -> type[Quantizer]:
    """The class registered under ``kind``.

    Raises:
        UserError: an unknown kind (naming the valid ones).
    """
    if kind not in _KINDS:
        raise UserError(
            f"{where} {kind!r} is not known{did_you_mean(str(kind), list(_KINDS))}; valid: {', '.join(_KINDS)}"
        )
    return _KINDS[kind]


def quantizer_from_spec(spec: dict[str, Any] | None) -> Quantizer | None:
    """Build a quantizer from :meth:`Quantizer.spec` output (``None`` gives ``None``).

    Raises:
        UserError: unknown ``kind`` or keys that the kind does not take.
    """
    if spec is None:
        return None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise UserError(f"quantizer spec {spec!r} needs a 'kind' (one of {', '.join(_KINDS)})")
    kw = dict(spec)
    return quantizer_class(kw.pop("kind")).from_spec(kw)
