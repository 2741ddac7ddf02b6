"""The training loop on a tiny random BERT: metrics, best checkpoint, determinism, resume, method hooks, bf16,
LR rewinding, evaluations on request and the held-out split."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compactbert.data.batching import encode
from compactbert.data.sources import load_examples
from compactbert.data.tasks import get_task
from compactbert.errors import UserError
from compactbert.methods.base import Method, TrainState
from compactbert.methods.prune import MagnitudePruning
from compactbert.nn.io import load_model
from compactbert.train.loop import (
    TrainConfig,
    evaluate_model,
    linear_warmup_decay,
    read_metrics,
    task_loss_sum,
    train,
)
from compactbert.train.heldout import split_heldout
from compactbert.train.lr import LRSchedule
from toy import make_tiny_model, write_toy_glue

SST2 = get_task("sst2")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    data = write_toy_glue(root / "glue", "sst2", n_train=128, n_dev=32)
    model_dir = make_tiny_model(root / "bert", "bert", hidden_size=64, num_heads=4, dropout=0.1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train_f = encode(load_examples(SST2, "train", data), tok, 64)
    eval_f = encode(load_examples(SST2, "dev", data), tok, 64)
    return model_dir, tok, train_f, eval_f


def fresh_model(model_dir):
    return AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=4, lr=3e-3, batch_size=8, bf16=False, seed=0, progress=False, warmup_ratio=0.1)
    return TrainConfig(**{**base, **kw})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_metrics_jsonl_best_checkpoint_and_learning(toy, tmp_path):
    model_dir, tok, train_f, eval_f = toy
    result = train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, cfg(eval_every=12), tmp_path)
    records = read_metrics(tmp_path)
    # 128 examples / batch 8 = 16 steps per epoch, 4 epochs: an evaluation every 12 steps and at the end.
    assert [r["step"] for r in records] == [12, 24, 36, 48, 60, 64]
    assert [r["epoch"] for r in records] == [0.75, 1.5, 2.25, 3.0, 3.75, 4.0]
    assert all(set(r) >= {"step", "epoch", "loss", "metrics", "elapsed", "lr"} for r in records)
    accs = [r["metrics"]["accuracy"] for r in records]
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # the first step that reached the max
    assert result.best_step == records[best]["step"] and result.best_metric == accs[best]
    assert accs[best] >= 0.9  # the toy task is learnable: a random model is at ~0.5
    assert records[-1]["loss"] < records[0]["loss"]
    # model/ holds the best step's weights: reloaded, it scores exactly what was logged.
    saved, saved_tok = load_model(tmp_path / "model")
    assert evaluate_model(saved, "sst2", eval_f, 16, False, saved_tok.pad_token_id) == records[best]["metrics"]
    # The last checkpoint is the final state.
    state = json.loads((tmp_path / "checkpoint" / "train_state.json").read_text())
    assert state["step"] == 64 and state["done"] is True


def test_same_seed_same_weights_other_seed_differs(toy, tmp_path):
    model_dir, tok, train_f, eval_f = toy
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        res = train(fresh_model(model_dir), tok, "sst2", train_f, None, cfg(max_steps=6, seed=seed), tmp_path / str(i))
        runs.append(weights(res.model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


class Crash(Method):
    """Raises at a given step, like a process killed part-way."""

    type: Literal["crash"] = "crash"
    at: int = -1

    def _on_step(self, state: TrainState) -> None:
        if state.step == self.at:
            raise KeyboardInterrupt


def test_resume_after_interruption_matches_uninterrupted_run(toy, tmp_path):
    model_dir, tok, train_f, eval_f = toy
    c = cfg(epochs=1, eval_every=5, save_every=3, keep="best")  # 16 steps; dropout is on
    whole = train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / "a", methods=[Crash()])

    with pytest.raises(KeyboardInterrupt):  # dies in step 11 (0-based 10), mid-epoch, after a checkpoint at 9
        train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / "b", methods=[Crash(at=10)])
    assert json.loads((tmp_path / "b/checkpoint/train_state.json").read_text())["step"] == 9
    resumed = train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / "b", methods=[Crash()], resume=True)

    assert resumed.steps == whole.steps == 16
    wa, wb = weights(whole.model), weights(resumed.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    best_a, best_b = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed"} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))


class Recorder(Method):
    """Records the hook calls and checks what the loop hands to methods."""

    type: Literal["recorder"] = "recorder"

    def model_post_init(self, _ctx) -> None:
        self._calls: list[tuple[str, int]] = []
        self._autocast: list[bool] = []

    def forward_kwargs(self):
        return {"output_hidden_states": True}

    def _attach(self, state: TrainState) -> None:
        self._calls.append(("attach", state.step))
        assert state.teacher is not None and not state.teacher.training
        assert not any(p.requires_grad for p in state.teacher.parameters())
        # A parameter added here must be trained: the optimizer is built after attach.
        state.model.register_parameter("probe", torch.nn.Parameter(torch.zeros(())))

    def _on_step(self, state: TrainState) -> None:
        self._calls.append(("on_step", state.step))

    def _loss(self, state: TrainState):
        self._calls.append(("loss", state.step))
        assert state.outputs.hidden_states is not None  # forward_kwargs reached the forward
        assert state.outputs.loss is not None and state.outputs.loss.ndim == 0  # the task loss
        assert set(state.batch) >= {"input_ids", "attention_mask", "labels"}
        self._autocast.append(torch.is_autocast_enabled("cpu"))
        state.extras["probe"] = float(state.model.probe.detach())
        return (state.model.probe - 3.0) ** 2

    def _after_step(self, state: TrainState) -> None:
        self._calls.append(("after_step", state.step))

    def _finalize(self, state: TrainState) -> None:
        self._calls.append(("finalize", state.step))


@pytest.mark.parametrize("bf16", [False, True])
def test_method_hooks_order_extra_params_and_autocast(toy, tmp_path, bf16):
    model_dir, tok, train_f, eval_f = toy
    model, teacher = fresh_model(model_dir), fresh_model(model_dir)
    dtypes = []
    model.classifier.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    rec = Recorder()
    c = cfg(max_steps=5, lr=0.1, warmup_ratio=0.0, bf16=bf16, eval_every=5, weight_decay=0.0)
    result = train(model, tok, "sst2", train_f, eval_f, c, tmp_path, methods=[rec], teacher=teacher)
    steps = [("on_step", s) for s in range(5)]
    expected = [("attach", 0)]
    for s in range(5):
        expected += [("on_step", s), ("loss", s), ("after_step", s)]
    expected += [("finalize", 5)]
    assert rec._calls == expected and steps
    assert rec._autocast == [bf16] * 5
    # The training forwards ran in bf16 under autocast (evaluation forwards too).
    assert set(dtypes) == {torch.bfloat16 if bf16 else torch.float32}
    # The method's loss pulled the added parameter from 0 towards 3.
    assert 0.1 < float(result.model.probe.detach()) <= 3.0
    assert read_metrics(tmp_path)[-1]["extras"]["probe"] == pytest.approx(float(result.model.probe.detach()), abs=0.6)
    # With a method present the final (finalized) model is kept, not the best one.
    assert result.best_step == 5


def test_linear_warmup_then_decay_values():
    f = linear_warmup_decay(2, 6)
    assert [f(s) for s in range(6)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    g = linear_warmup_decay(0, 4)
    assert [g(s) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_task_loss_sum_matches_torch_means():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert task_loss_sum(logits, labels, SST2) == pytest.approx(5 * F.cross_entropy(logits, labels).item(), rel=1e-6)
    pred, target = torch.randn(5, 1), torch.rand(5) * 5
    stsb = get_task("stsb")
    assert task_loss_sum(pred, target, stsb) == pytest.approx(5 * F.mse_loss(pred.squeeze(-1), target).item(), rel=1e-6)


def test_keep_freed_memory_sets_glibc_thresholds_once_and_can_be_turned_off(monkeypatch):
    import compactbert.train.malloc as malloc

    monkeypatch.setattr(malloc, "_done", None)
    monkeypatch.setenv("COMPACTBERT_MALLOC_TUNING", "0")
    assert malloc.keep_freed_memory() is False
    assert malloc.keep_freed_memory() is False  # decided once per process
    monkeypatch.setattr(malloc, "_done", None)
    monkeypatch.delenv("COMPACTBERT_MALLOC_TUNING")
    assert malloc.keep_freed_memory() is True  # Linux + glibc here


# ------------------------------------------------------------------ hooks: LR schedule, evaluation on request, held-out


def test_lr_schedule_rewinds_once_and_only_before_training():
    s = LRSchedule(warmup_ratio=0.25, total_steps=16)
    assert [s.multiplier(t) for t in (0, 3, 4, 8, 15)] == pytest.approx([0.25, 1.0, 1.0, 8 / 12, 1 / 12])
    s.rewind_at(0)  # step 0 rewinds nothing
    assert s.rewind_step is None
    s.rewind_at(8)
    s.rewind_at(12)  # the first request counts
    assert s.rewind_step == 8
    # [0, 8): warm-up over int(0.25 * 8) = 2 steps, decay over 6; [8, 16) the same again.
    assert [s.multiplier(t) for t in (0, 1, 7, 8, 9, 15)] == pytest.approx([0.5, 1.0, 1 / 6, 0.5, 1.0, 1 / 6])
    s.bind(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    with pytest.raises(RuntimeError, match="after training started"):
        s.rewind_at(4)


def test_lr_rewind_on_the_real_loop_restarts_the_learning_rate_where_pruning_ends(toy, tmp_path):
    model_dir, tok, train_f, eval_f = toy
    c = cfg(epochs=1, eval_every=1, warmup_ratio=0.25, keep="last")  # 16 steps, the LR of every step logged
    lrs = {}
    for rewind in (True, False):
        prune = MagnitudePruning(sparsity=0.5, start=0, end=0.5, frequency=2, lr_rewind=rewind)
        train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / str(rewind), methods=[prune])
        assert prune.lr_rewind_step == (8 if rewind else None)
        # A record after step s carries the LR step s (0-based s - 1) ran with.
        lrs[rewind] = [r["lr"] / c.lr for r in read_metrics(tmp_path / str(rewind))]
    assert len(lrs[True]) == 16
    # Rewound: warm-up (2 steps) and decay over [0, 8), then the same again from step 8, where pruning ends.
    first = linear_warmup_decay(2, 8)
    assert lrs[True] == pytest.approx([first(t) for t in range(8)] + [first(t) for t in range(8)], rel=1e-12)
    assert lrs[True][8] == pytest.approx(0.5) and lrs[True][7] == pytest.approx(1 / 6)
    # Not rewound: one warm-up (4 steps) and one decay over the 16 steps.
    whole = linear_warmup_decay(4, 16)
    assert lrs[False] == pytest.approx([whole(t) for t in range(16)], rel=1e-12)


class AsksForEvaluations(Method):
    """Requests an evaluation at given steps and records what ``state.metrics`` says afterwards."""

    type: Literal["asks_for_evaluations"] = "asks_for_evaluations"
    at: list[int] = []

    def model_post_init(self, _ctx) -> None:
        self._seen: list[tuple[int, dict | None]] = []

    def _on_step(self, state: TrainState) -> None:
        self._seen.append((state.step, state.metrics))
        if state.step in self.at:
            state.request_evaluation()


def test_a_method_can_ask_for_an_evaluation(toy, tmp_path):
    model_dir, tok, train_f, eval_f = toy
    asker = AsksForEvaluations(at=[2, 5])
    c = cfg(epochs=1, keep="best")  # 16 steps, evaluated at the end of the epoch only
    result = train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / "a", methods=[asker])
    records = read_metrics(tmp_path / "a")
    assert [r["step"] for r in records] == [3, 6, 16]  # asked in steps 3 and 6 (0-based 2 and 5)
    seen = dict(asker._seen)
    assert seen[2] is None and seen[3] == records[0]["metrics"] and seen[6] == records[1]["metrics"]
    assert result.best_step in (3, 6, 16)  # requested evaluations count for the best model
    # Without a dev set the requests are ignored.
    asker = AsksForEvaluations(at=[2])
    train(fresh_model(model_dir), tok, "sst2", train_f, None, cfg(max_steps=4), tmp_path / "b", methods=[asker])
    assert read_metrics(tmp_path / "b") == [] and all(m is None for _, m in asker._seen)


def test_heldout_split_sizes_disjointness_and_determinism():
    train_idx, held_idx = split_heldout(100, 0.2, seed=7)
    assert len(held_idx) == 20 and len(train_idx) == 80
    assert not set(train_idx) & set(held_idx) and sorted(train_idx + held_idx) == list(range(100))
    assert split_heldout(100, 0.2, seed=7) == (train_idx, held_idx)
    assert split_heldout(100, 0.2, seed=8)[1] != held_idx
    assert [len(h) for _, h in (split_heldout(10, 0.01, 0), split_heldout(10, 0.99, 0), split_heldout(2, 0.5, 0))] == [1, 9, 1]
    with pytest.raises(UserError, match="at least 2"):
        split_heldout(1, 0.5, 0)


class UsesHeldout(Method):
    """Asks for a held-out share; each step draws one held-out batch and pulls a probe parameter
    towards its mean label (so the weights depend on which held-out batches were drawn)."""

    type: Literal["uses_heldout"] = "uses_heldout"
    fraction: float = 0.25

    def model_post_init(self, _ctx) -> None:
        self._train_rows: set[tuple[int, ...]] = set()
        self._heldout_rows: list[tuple[int, ...]] = []

    def heldout_fraction(self) -> float | None:
        return self.fraction

    def _attach(self, state: TrainState) -> None:
        state.model.register_parameter("probe", torch.nn.Parameter(torch.zeros(())))

    def _on_step(self, state: TrainState) -> None:
        self._train_rows |= rows(state.batch)

    def _loss(self, state: TrainState):
        held = next(state.heldout_batches)
        assert held.keys() == state.batch.keys() and held["input_ids"].device == state.batch["input_ids"].device
        self._heldout_rows += sorted(rows(held))
        return (state.model.probe - held["labels"].float().mean()) ** 2


def rows(batch) -> set[tuple[int, ...]]:
    """The examples of a batch as token tuples (padding removed)."""
    return {tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["input_ids"], batch["attention_mask"])}


def test_heldout_examples_are_set_aside_and_served_as_batches(toy, tmp_path):
    model_dir, tok, train_f, eval_f = toy
    unique = list({tuple(f["input_ids"]): f for f in train_f}.values())  # each example recognisable by its tokens
    n = len(unique)
    keep_idx, held_idx = split_heldout(n, 0.25, seed=0)
    user = UsesHeldout()
    c = cfg(epochs=2, batch_size=8, keep="last")
    result = train(fresh_model(model_dir), tok, "sst2", unique, None, c, tmp_path, methods=[user])
    assert result.steps == 2 * -(-len(keep_idx) // 8)  # the epochs are over the training share only
    as_rows = lambda idx: {tuple(unique[i]["input_ids"]) for i in idx}  # noqa: E731
    assert user._train_rows == as_rows(keep_idx)  # every training example, and no held-out one, was trained on
    assert set(user._heldout_rows) == as_rows(held_idx)  # the held-out batches cycle through the held-out share
    assert len(user._heldout_rows) == result.steps * 8  # full batches of batch_size, endlessly
    state = json.loads((tmp_path / "checkpoint" / "train_state.json").read_text())
    assert state["extra"]["heldout_batches_drawn"] == result.steps


def test_resume_with_a_heldout_split_matches_uninterrupted_run(toy, tmp_path):
    model_dir, tok, train_f, eval_f = toy
    c = cfg(epochs=1, eval_every=5, save_every=3, keep="best")  # 12 steps on 96 examples; dropout is on
    whole = train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / "a", methods=[UsesHeldout(), Crash()])

    with pytest.raises(KeyboardInterrupt):  # dies in step 8 (0-based 7), after a checkpoint at 6
        train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / "b", methods=[UsesHeldout(), Crash(at=7)])
    assert json.loads((tmp_path / "b/checkpoint/train_state.json").read_text())["extra"]["heldout_batches_drawn"] == 6
    user = UsesHeldout()
    resumed = train(fresh_model(model_dir), tok, "sst2", train_f, eval_f, c, tmp_path / "b", methods=[user, Crash()], resume=True)

    assert resumed.steps == whole.steps == 12
    wa, wb = weights(whole.model), weights(resumed.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed"} for r in rs]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))
