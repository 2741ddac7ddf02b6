"""Distillation's teacher cache: the teacher's outputs computed once per example give the live
teacher's loss, are shared by runs with the same teacher and data only, and are never half-built."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from compactbert.data.batching import Collator
from compactbert.errors import UserError
from compactbert.methods import distill as distill_mod
from compactbert.methods.base import TrainState
from compactbert.methods.distill import Distillation
from compactbert.methods.teacher_cache import TeacherCache, estimate_bytes
from compactbert.train.loop import TrainConfig, read_metrics, train

ALL_TERMS = {"logits": 1.0, "hidden": 1.0, "attention": 1.0, "embedding": 1.0}
KEYS = ["attention_mask", "input_ids", "token_type_ids"]
KW = {"output_hidden_states": True, "output_attentions": True}
FIELDS = ["logits", "hidden_states", "attentions"]


def tiny_bert(seed: int = 0, head: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, num_labels=3, attn_implementation="eager")
    return (BertForSequenceClassification(cfg) if head else BertModel(cfg)).eval()


def features(n: int = 11, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        t = 3 + (i * 5) % 13  # 3..15 tokens
        ids = [2] + torch.randint(5, 60, (t - 2,), generator=g).tolist() + [3]
        out.append({"input_ids": ids, "token_type_ids": [0] * t, "labels": i % 3})
    return out


def build(teacher, feats, root, log=None, fields=FIELDS):
    return TeacherCache.open_or_build(teacher, feats, KEYS, Collator(0), KW, fields, False, torch.device("cpu"),
                                      root=root, log=log or (lambda m: None))


def live_batch(feats, index):
    b = Collator(0)([feats[i] for i in index])
    return {k: v for k, v in b.items() if k in KEYS}


def test_cached_outputs_are_the_live_teachers_at_real_tokens_and_zero_at_padding(tmp_path):
    teacher, feats = tiny_bert(), features()
    cache = build(teacher, feats, tmp_path)
    assert len(cache) == len(feats)
    assert cache.nbytes == estimate_bytes(teacher, FIELDS, [len(f["input_ids"]) for f in feats])
    index = [7, 0, 4, 10]  # lengths 15, 3, 8, 9: padded to 15
    b = live_batch(feats, index)
    with torch.no_grad():
        live = teacher(**b, **KW, return_dict=True)
    got = cache.outputs(index, b["attention_mask"], torch.device("cpu"))
    mask = b["attention_mask"].bool()
    torch.testing.assert_close(got.logits, live.logits, rtol=2e-3, atol=2e-3)
    assert len(got.hidden_states) == 3 and len(got.attentions) == 2
    for h, hl in zip(got.hidden_states, live.hidden_states):
        torch.testing.assert_close(h[mask], hl[mask], rtol=2e-3, atol=2e-3)
        assert h[~mask].abs().sum() == 0
    for a, al in zip(got.attentions, live.attentions):
        for j, t in enumerate(b["attention_mask"].sum(1).tolist()):
            torch.testing.assert_close(a[j, :, :t, :t], al[j, :, :t, :t], rtol=2e-3, atol=1e-3)
            assert a[j, :, t:].abs().sum() == 0 and a[j, :, :, t:].abs().sum() == 0
            assert al[j, :, :t, t:].abs().sum() == 0  # the live teacher gives padded keys nothing either


def test_a_batch_that_is_not_the_indexed_examples_is_refused(tmp_path):
    teacher, feats = tiny_bert(), features()
    cache = build(teacher, feats, tmp_path)
    b = live_batch(feats, [7, 0])
    with pytest.raises(RuntimeError, match="do not match"):
        cache.outputs([0, 7], b["attention_mask"], torch.device("cpu"))


def test_the_same_teacher_and_data_reuse_the_cache_and_anything_else_gets_its_own(tmp_path):
    teacher, feats = tiny_bert(), features()
    said: list[str] = []
    a = build(teacher, feats, tmp_path, said.append)
    b = build(copy.deepcopy(teacher), feats, tmp_path, said.append)
    assert a.folder == b.folder and "computing" in said[0] and "come from the cache" in said[-1] and len(said) == 3
    other_teacher = copy.deepcopy(teacher)
    with torch.no_grad():
        other_teacher.classifier.bias.add_(1.0)
    other_data = features()
    other_data[3] = {**other_data[3], "input_ids": other_data[3]["input_ids"][:-2] + [7, 3]}
    folders = {a.folder, build(other_teacher, feats, tmp_path).folder, build(teacher, other_data, tmp_path).folder,
               build(teacher, feats, tmp_path, fields=["logits"]).folder}
    assert len(folders) == 4
    assert len(list((tmp_path / "teacher-outputs").glob("*/meta.json"))) == 4


def test_an_interrupted_build_leaves_nothing_and_the_next_run_builds_it(tmp_path, monkeypatch):
    teacher, feats = tiny_bert(), features()
    calls = {"n": 0}
    forward = teacher.forward

    def dies_on_the_second_batch(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return forward(*a, **kw)

    monkeypatch.setattr(teacher, "forward", dies_on_the_second_batch)
    monkeypatch.setattr("compactbert.methods.teacher_cache.BUILD_BATCH", 4)
    with pytest.raises(KeyboardInterrupt):
        build(teacher, feats, tmp_path)
    left = [p.name for p in (tmp_path / "teacher-outputs").iterdir() if not p.name.endswith(".lock")]
    assert left == []
    monkeypatch.setattr(teacher, "forward", forward)
    cache = build(teacher, feats, tmp_path)
    assert json.loads((cache.folder / "meta.json").read_text())["examples"] == len(feats)


def state_for(student, teacher, feats, epochs: float) -> TrainState:
    return TrainState(model=student, teacher=teacher, features=feats, steps_per_epoch=3,
                      total_steps=round(3 * epochs), extras={"bf16": False})


def loss_and_grads(method, student, teacher, feats, index, epochs=2.0):
    state = state_for(student, teacher, feats, epochs)
    method.attach(state)
    b = Collator(0)([feats[i] for i in index])
    state.batch, state.batch_index = b, index
    inputs = {k: v for k, v in b.items() if k in KEYS}
    state.outputs = student(**inputs, **method.forward_kwargs())
    loss = method.loss(state)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}, method


@pytest.mark.parametrize("attention_loss", ["mse", "kl"])
def test_distillation_with_the_cache_gives_the_live_loss_and_gradients(attention_loss):
    teacher, feats = tiny_bert(0), features()
    student = tiny_bert(1).train()
    student.config.hidden_dropout_prob = 0.0
    for mod in student.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    index = [7, 0, 4, 10, 2]
    runs = {}
    for cache in (False, True):
        m = Distillation(weights=ALL_TERMS, alpha=0.0, attention_loss=attention_loss, cache_teacher=cache)
        s = copy.deepcopy(student)
        runs[cache] = loss_and_grads(m, s, teacher, feats, index)
    assert runs[False][2]._cache is None and runs[True][2]._cache is not None
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=2e-3, atol=1e-5)
    assert runs[True][0] != runs[False][0]  # the cache, not the teacher, gave the first one (float16 rounding)
    for name, g in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], g, rtol=2e-2, atol=1e-4)


def test_auto_caches_on_a_cpu_for_two_epochs_or_more_and_within_the_disk(monkeypatch):
    teacher, feats = tiny_bert(0), features()

    def cache_of(setting, epochs):
        m = Distillation(weights=ALL_TERMS, alpha=0.0, cache_teacher=setting)
        m.attach(state_for(tiny_bert(1), teacher, feats, epochs))
        return m._cache

    assert cache_of("auto", 1.0) is None
    assert cache_of("auto", 2.0) is not None
    assert cache_of(False, 18.0) is None
    assert cache_of(True, 1.0) is not None
    monkeypatch.setattr(distill_mod, "MAX_AUTO_CACHE_BYTES", 1000)
    assert cache_of("auto", 18.0) is None  # too large for auto: the teacher runs live
    assert cache_of(True, 18.0) is not None  # asked for: only the disk limits it

    class Usage:
        free = 1000

    monkeypatch.setattr(distill_mod.shutil, "disk_usage", lambda p: Usage())
    with pytest.raises(UserError, match="cache_teacher.*GiB"):
        cache_of(True, 18.0)


def test_a_bare_encoder_teacher_caches_its_last_states_for_the_sentence_term():
    teacher, feats = tiny_bert(0, head=False), features()
    student = tiny_bert(1, head=False)
    m = Distillation(weights={"logits": 0.0, "sentence": 1.0}, alpha=0.0, cache_teacher=True)
    runs = [loss_and_grads(m, copy.deepcopy(student), teacher, feats, [1, 5, 9])[0]]
    assert m._cache.layout.keys() == {"last_hidden_state"}
    live = Distillation(weights={"logits": 0.0, "sentence": 1.0}, alpha=0.0, cache_teacher=False)
    runs.append(loss_and_grads(live, copy.deepcopy(student), teacher, feats, [1, 5, 9])[0])
    torch.testing.assert_close(runs[0], runs[1], rtol=2e-3, atol=1e-5)


def test_the_training_loop_reads_the_cache_and_trains_like_the_live_teacher(tmp_path):
    from toy import make_tiny_model, write_toy_glue
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from compactbert.data.batching import encode
    from compactbert.data.sources import load_examples
    from compactbert.data.tasks import get_task

    spec = get_task("sst2")
    data = write_toy_glue(tmp_path / "glue", "sst2", n_train=48, n_dev=16)
    model_dir = make_tiny_model(tmp_path / "bert", "bert", hidden_size=32, num_heads=2, dropout=0.0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train_f, eval_f = (encode(load_examples(spec, s, data), tok, 64) for s in ("train", "dev"))
    teacher = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8, seed=0, progress=False, eval_every=6)
    losses = {}
    for setting in (False, "auto"):
        m = Distillation(weights=ALL_TERMS, alpha=0.0, cache_teacher=setting)
        student = AutoModelForSequenceClassification.from_pretrained(model_dir)
        torch.manual_seed(5)
        with torch.no_grad():  # a student that is not the teacher (else both losses are float16 noise)
            for p in student.parameters():
                p.add_(0.2 * torch.randn_like(p))
        train(student, tok, "sst2", train_f, eval_f, cfg, tmp_path / f"run-{setting}", methods=[m], teacher=teacher)
        losses[setting] = [r["loss"] for r in read_metrics(tmp_path / f"run-{setting}")]
    import os
    from pathlib import Path
    assert list((Path(os.environ["COMPACTBERT_CACHE"]) / "teacher-outputs").glob("*/meta.json"))
    assert len(losses["auto"]) == len(losses[False]) == 2
    assert losses["auto"] != losses[False]
    assert losses["auto"] == pytest.approx(losses[False], rel=2e-3)


@pytest.mark.parametrize("damage", ["truncate", "meta"])
def test_a_damaged_cache_is_computed_again_not_read(tmp_path, damage):
    teacher, feats = tiny_bert(), features()
    first = build(teacher, feats, tmp_path)
    b = live_batch(feats, [7, 0])
    expected = first.outputs([7, 0], b["attention_mask"], torch.device("cpu")).logits
    folder = first.folder
    del first
    if damage == "truncate":
        data = folder / "data.f16"
        data.write_bytes(data.read_bytes()[:-10])
    else:
        (folder / "meta.json").write_text("{not json")
    said: list[str] = []
    again = build(teacher, feats, tmp_path, said.append)
    assert "unreadable" in said[0] and "computing" in said[1]
    assert again.folder == folder
    torch.testing.assert_close(again.outputs([7, 0], b["attention_mask"], torch.device("cpu")).logits, expected)
