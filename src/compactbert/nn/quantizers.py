"""Where the quantizers used to live: a facade over :mod:`compactbert.nn.quant` (one file per kind).

Kept so that ``from compactbert.nn.quantizers import TernaryQuantizer`` keeps working.
"""

from .quant import *  # noqa: F401,F403
from .quant import __all__  # noqa: F401
