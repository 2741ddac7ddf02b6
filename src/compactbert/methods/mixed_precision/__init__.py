"""Per-group mixed precision under a byte budget (AQ-BERT and its baselines).

* :mod:`.budget` -- budgets (bytes / megabytes / avg_bits), group costs, expected size, band penalty;
* :mod:`.knapsack` -- the exact multiple-choice knapsack (``scipy.optimize.milp``);
* :mod:`.search` -- ``mixed_precision_search``: AQ-BERT's differentiable (DNAS) search;
* :mod:`.hessian` -- ``hessian_allocation``: Hutchinson trace sensitivities + knapsack (HAWQ-style).

Both methods end with a :class:`~compactbert.nn.quant.GroupBitsQuantizer` in every targeted layer;
the uniform baseline is the ``quantize`` method with the same quantizer at one width.
"""

from .budget import Budget, GroupTable
from .common import chosen_widths, widths_from_spec
from .hessian import HessianAllocation
from .search import MixedPrecisionSearch, SearchQuantizer

__all__ = [
    "Budget", "GroupTable", "MixedPrecisionSearch", "SearchQuantizer", "HessianAllocation", "chosen_widths",
    "widths_from_spec",
]
