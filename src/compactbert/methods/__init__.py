"""Compression methods. Importing this package registers the built-in ones."""

from .base import Method, TrainState
from . import quantize  # noqa: F401  (registers quantize, binary, ternary, int8)
from . import prune, layer_reduction, distill  # noqa: F401,E402  (pruning, layer reduction, distillation)
from . import mixed_precision  # noqa: F401,E402  (mixed_precision_search, hessian_allocation)

from ..registry import registered_methods


def method_types() -> dict[str, type[Method]]:
    """All registered methods by name: the built-ins (registered by importing this package) and any
    registered since with :func:`compactbert.registry.register_method`."""
    return registered_methods()


__all__ = ["Method", "TrainState", "method_types"]
