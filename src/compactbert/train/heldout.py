"""A held-out share of a stage's training examples, for methods that learn something on data the
weights are not trained on (the contract is in :mod:`compactbert.methods.base`).

:func:`split_heldout` cuts the examples in two with the run's seed; :class:`HeldoutBatches` is the
endless, resumable iterator methods read as ``state.heldout_batches``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import numpy as np
import torch

from ..errors import UserError

# Folded into the split's seed so that the split does not reuse the batch order's random stream.
_SPLIT_STREAM = 0x68656C64  # "held"

Batch = dict[str, torch.Tensor]


def heldout_fraction(methods: Sequence) -> float | None:
    """The share to hold out for ``methods``: the largest any of them asks for, or None.

    Raises:
        UserError: a method asks for a fraction outside (0, 1).
    """
    asked = []
    for m in methods:
        f = m.heldout_fraction()
        if f is None:
            continue
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f < 1.0:
            raise UserError(f"{getattr(m, 'type', type(m).__name__)}: held-out fraction {f!r} must be in (0, 1)")
        asked.append(float(f))
    return max(asked) if asked else None


def split_heldout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (training indices, held-out indices), both sorted.

    ``round(fraction * n)`` indices are held out, at least one and at most ``n - 1``; which ones is
    a pure function of ``(n, fraction, seed)``.

    Raises:
        UserError: fewer than two examples (nothing to split).
    """
    if n < 2:
        raise UserError(f"a held-out split needs at least 2 training examples, got {n}")
    k = min(max(1, round(fraction * n)), n - 1)
    perm = np.random.default_rng([int(seed) % 2**64, _SPLIT_STREAM]).permutation(n)
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())


class HeldoutBatches:
    """Endless iterator over batches of held-out examples: pass after pass, each shuffled with the seed.

    Args:
        lengths: token count of each held-out example.
        batch_size: examples per batch.
        seed: the run's seed; pass ``p`` is ``batch_order(lengths, batch_size, seed, p)``.
        group_by_length: as the training batches.
        make_batch: turns a list of held-out indices into a batch (collated, on the device).
        start: how many batches were drawn before (a resumed run continues from there).
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool,
        make_batch: Callable[[list[int]], Batch], start: int = 0,
    ):
        self.lengths, self.batch_size, self.seed, self.group_by_length = list(lengths), batch_size, seed, group_by_length
        self.make_batch = make_batch
        self.drawn = start
        self._pass, self._order = 0, self._batches(0)

    def _batches(self, p: int) -> list[list[int]]:
        from ..data.batching import batch_order

        return batch_order(self.lengths, self.batch_size, self.seed, p, shuffle=True, group_by_length=self.group_by_length)

    def __iter__(self) -> "HeldoutBatches":
        return self

    def __next__(self) -> Batch:
        p, i = divmod(self.drawn, len(self._order))  # every pass has the same number of batches
        if p != self._pass:
            self._pass, self._order = p, self._batches(p)
        self.drawn += 1
        return self.make_batch(self._order[i])
