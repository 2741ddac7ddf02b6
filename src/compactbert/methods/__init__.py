"""Compression methods. Importing this package registers the built-in ones."""

from .base import Method, TrainState
from . import quantize  # noqa: F401  (registers quantize, binary, ternary, int8)
from . import prune, layer_reduction, distill  # noqa: F401,E402  (pruning, layer reduction, distillation)

__all__ = ["Method", "TrainState"]
