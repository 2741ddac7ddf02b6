"""Quantizer kinds as plugins: one file per kind, registered by name (see :mod:`.base`).

====================  ============  ======================================  ========================
kind (file)           bits          levels                                  parameters (fp16)
====================  ============  ======================================  ========================
binary (binary.py)    1             {-a, +a}, sign(0) = +1                  a = mean|w| per row
ternary (ternary.py)  2             {-a, 0, +a}, 0 where |w| <= 0.7 mean|w| a per row
int (integer.py)      2..8          symmetric +-(2^(b-1)-1), or asymmetric  scale (+ zero point) per
                                    0..2^b-1 with a zero point              tensor, row or group
groupbits             0..8 per      per-row asymmetric 0..2^b-1             scale + minimum per row
(groupbits.py)        row group                                             of a nonzero group
dynamic_act           2..8          per-token symmetric, on the fly         none stored
static_act            2..8          one calibrated range                    scale (+ zero point)
====================  ============  ======================================  ========================

"Row" is the first dimension of a weight: an output feature of ``nn.Linear`` (``(out, in)``), a
token of ``nn.Embedding``. A weight quantizer's :meth:`~.base.WeightQuantizer.encode` gives the
:class:`~.codes.Codes` a packer stores and :meth:`~.base.WeightQuantizer.decode` turns them back
into bitwise the values its forward computes; sizes, the packed format, the runtime and the recipe
validator only use these methods. A new kind: subclass, set ``kind``, decorate with
:func:`~.base.register_quantizer`.
"""

# registration order is the order kinds are listed in (binary, ternary, int, groupbits, activations)
from .base import (  # noqa: I001
    ActivationQuantizer,
    IntRange,
    Quantizer,
    WeightQuantizer,
    quantizer_class,
    quantizer_from_spec,
    quantizer_kinds,
    register_quantizer,
)
from .binary import BinaryQuantizer
from .ternary import TernaryQuantizer
from .integer import GRANULARITIES, IntQuantizer
from .groupbits import GroupBitsQuantizer, asym_fake_quant
from .dynamic import DynamicActQuantizer, dynamic_act_codes
from .static import StaticActQuantizer, calibration
from .codes import Codes, ScaleLayout
from .ops import run_compiled

__all__ = [
    "Quantizer",
    "WeightQuantizer",
    "ActivationQuantizer",
    "IntRange",
    "BinaryQuantizer",
    "TernaryQuantizer",
    "IntQuantizer",
    "GroupBitsQuantizer",
    "DynamicActQuantizer",
    "StaticActQuantizer",
    "Codes",
    "ScaleLayout",
    "asym_fake_quant",
    "quantizer_from_spec",
    "quantizer_class",
    "quantizer_kinds",
    "register_quantizer",
    "calibration",
    "dynamic_act_codes",
    "run_compiled",
    "GRANULARITIES",
]
