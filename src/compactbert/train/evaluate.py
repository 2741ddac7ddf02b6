"""Evaluation: logits of encoded features in length-grouped batches, and the task's metrics on them.

The training loop evaluates through :class:`Evaluator` (sharded over processes, gathered); everything
else calls :func:`evaluate_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from .. import defaults as D
from ..data.batching import forward_names, pad_id_of
from ..data.tasks import TaskSpec, compute_metrics, get_task


def eval_batches(features: Sequence[dict], batch_size: int) -> list[list[int]]:
    """Evaluation batches: indices sorted by length (longest first), no shuffling."""
    from ..data.batching import batch_order

    lengths = [len(f["input_ids"]) for f in features]
    return batch_order(lengths, batch_size, seed=0, epoch=0, shuffle=False, group_by_length=True)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    features: Sequence[dict],
    batch_size: int = D.EVAL_BATCH_SIZE,
    bf16: bool = False,
    pad_token_id: int | None = None,
    process_index: int = 0,
    num_processes: int = 1,
) -> dict[int, np.ndarray]:
    """Logits of ``features``: ``{feature index: (num_labels,) float32 array}``.

    Batches are length-grouped (little padding). With ``num_processes > 1`` only every
    ``num_processes``-th batch, starting at ``process_index``, is run (gather the dicts).
    """
    from ..data.batching import Collator

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = Collator(pad_id_of(model) if pad_token_id is None else pad_token_id)
    accepted = forward_names(model)
    out: dict[int, np.ndarray] = {}
    batches = eval_batches(features, batch_size)[process_index::num_processes]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for idx in batches:
            batch = collate([features[i] for i in idx])
            inputs = {k: v.to(device) for k, v in batch.items() if k in accepted and k != "labels"}
            logits = model(**inputs).logits.float().cpu().numpy()  # (batch, num_labels)
            out.update(zip(idx, logits))
    model.train(was_training)
    return out


def score(spec: TaskSpec, logits: dict[int, np.ndarray], features: Sequence[dict]) -> dict[str, float]:
    """The task's metrics of ``{feature index: logits}`` against the features' labels."""
    order = sorted(logits)
    preds = np.stack([logits[i] for i in order])  # (n, num_labels)
    return compute_metrics(spec, preds, [features[i]["labels"] for i in order])


def evaluate_model(
    model: torch.nn.Module,
    task: str | TaskSpec,
    features: Sequence[dict],
    batch_size: int = D.EVAL_BATCH_SIZE,
    bf16: bool = False,
    pad_token_id: int | None = None,
) -> dict[str, float]:
    """Score ``model`` on encoded ``features`` with the task's metrics.

    Example:
        >>> evaluate_model(model, "sst2", encode(examples, tok, 128))  # doctest: +SKIP
        {'accuracy': 0.91}
    """
    spec = get_task(task)
    return score(spec, predict(model, features, batch_size, bf16, pad_token_id), features)


class Evaluator:
    """The loop's evaluation on the dev features, sharded over the processes and gathered.

    Args:
        spec: the task.
        features: encoded dev examples.
        batch_size, bf16, pad_id: as :func:`predict`.
        rank, world: this process's index and the number of processes.
        gather: gathers a list from every process into one list (accelerate's ``gather_object``).
    """

    def __init__(
        self, spec: TaskSpec, features: Sequence[dict], batch_size: int, bf16: bool, pad_id: int,
        rank: int, world: int, gather: Callable[[list], list],
    ):
        self.spec, self.features, self.batch_size, self.bf16, self.pad_id = spec, features, batch_size, bf16, pad_id
        self.rank, self.world, self.gather = rank, world, gather

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        logits = predict(model, self.features, self.batch_size, self.bf16, self.pad_id, self.rank, self.world)
        pairs = list(logits.items())
        if self.world > 1:
            pairs = self.gather(pairs)
        return score(self.spec, dict(pairs), self.features)
