"""Distillation: zero for an identical student, positive otherwise, teacher untouched, layer maps."""

from __future__ import annotations

import copy
import math

import pydantic
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from compactbert.errors import UserError
from compactbert.methods.base import TrainState
from compactbert.methods.distill import PROJ_NAME, Distillation, uniform_layer_map
from compactbert.methods.layer_reduction import reduce_layers
from compactbert.methods import method_types

ALL_TERMS = {"logits": 1.0, "hidden": 1.0, "attention": 1.0, "embedding": 1.0}


def tiny(arch: str = "bert", layers: int = 4, hidden: int = 32, num_labels: int = 3) -> torch.nn.Module:
    common = dict(vocab_size=100, max_position_embeddings=64, num_labels=num_labels)
    if arch == "bert":
        cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=2 * hidden, **common)
        return BertForSequenceClassification(cfg)
    if arch == "distilbert":
        cfg = DistilBertConfig(dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden, **common)
        return DistilBertForSequenceClassification(cfg)
    cfg = RobertaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, pad_token_id=1, **common)
    return RobertaForSequenceClassification(cfg)


def batch(labels: bool = False, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[3, 4:] = 0
    b = {"input_ids": ids, "attention_mask": mask}
    if labels:
        b["labels"] = torch.tensor([0, 2, 1, 0])
    return b


def run_loss(method: Distillation, student, teacher, b, task=None, attach=True):
    """One loop iteration up to the loss: attach, student forward with the method's kwargs, loss."""
    state = TrainState(model=student, teacher=teacher, batch=b, task=task)
    if attach:
        method.attach(state)
    model_inputs = {k: v for k, v in b.items()}
    state.outputs = student(**model_inputs, **method.forward_kwargs())
    return method.loss(state), state


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
@pytest.mark.parametrize("kinds", [("kl", "mse"), ("mse", "kl")])
def test_loss_is_exactly_zero_for_an_identical_student(arch, kinds):
    torch.manual_seed(0)
    teacher = tiny(arch).eval()
    student = copy.deepcopy(teacher).eval()  # eval: no dropout, so the two compute the same thing
    m = Distillation(weights=ALL_TERMS, alpha=0.0, temperature=2.0, logit_loss=kinds[0],
                     attention_loss=kinds[1], teacher_bf16=False)
    loss, state = run_loss(m, student, teacher, batch())
    assert loss.item() == 0.0
    for term in ("logits", "hidden", "attention", "embedding"):
        assert state.extras[f"distill/{term}"] == 0.0
    assert student.config._attn_implementation == "eager" == teacher.config._attn_implementation


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_loss_is_positive_for_a_different_student_and_only_the_student_gets_gradients(arch):
    torch.manual_seed(0)
    teacher = tiny(arch).eval()
    student = copy.deepcopy(teacher).train()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m = Distillation(weights=ALL_TERMS, alpha=0.0)
    loss, state = run_loss(m, student, teacher, batch())
    for term in ("logits", "hidden", "attention", "embedding"):
        assert state.extras[f"distill/{term}"] > 0.0, term
    expected = sum(state.extras[f"distill/{t}"] for t in ("logits", "hidden", "attention", "embedding"))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    word_emb = student.base_model.embeddings.word_embeddings.weight
    assert word_emb.grad is not None and word_emb.grad.abs().sum() > 0
    assert student.classifier.weight.grad is not None if hasattr(student.classifier, "weight") else True


def test_logit_kl_matches_the_temperature_scaled_formula():
    torch.manual_seed(0)
    teacher = tiny().eval()
    student = tiny().eval()
    with torch.no_grad():  # logits of order 1, so the KL is not a float32 rounding residue
        teacher.classifier.weight.mul_(100)
        student.classifier.weight.mul_(100)
    T = 2.0
    m = Distillation(temperature=T, alpha=0.0, teacher_bf16=False)
    b = batch()
    loss, state = run_loss(m, student, teacher, b)
    with torch.no_grad():
        s, t = student(**b).logits, teacher(**b).logits  # (batch, labels)
    pt = F.softmax(t / T, -1)
    manual = (pt * (pt.log() - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert loss.item() > 0


def test_regression_uses_mse_on_the_single_output():
    torch.manual_seed(0)
    teacher, student = tiny(num_labels=1).eval(), tiny(num_labels=1).eval()
    m = Distillation(alpha=0.0, temperature=3.0, teacher_bf16=False)
    b = batch()
    loss, _ = run_loss(m, student, teacher, b)
    with torch.no_grad():
        manual = (student(**b).logits - teacher(**b).logits).pow(2).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_alpha_mixes_task_and_distillation_losses():
    torch.manual_seed(0)
    teacher, student = tiny().eval(), tiny().eval()
    m = Distillation(alpha=0.25, temperature=2.0, teacher_bf16=False)
    loss, state = run_loss(m, student, teacher, batch(labels=True))
    task = state.outputs.loss
    kd = state.extras["distill/logits"]
    assert m.task_loss_weight == 0.25 and loss.item() == pytest.approx(0.75 * kd, rel=1e-6)
    # The loop scales its task loss by task_loss_weight and adds the method's term.
    total = m.task_loss_weight * task + loss
    assert total.item() == pytest.approx(0.25 * task.item() + 0.75 * kd, rel=1e-6)


def test_uniform_layer_map_values():
    assert uniform_layer_map(2, 4) == [1, 3]
    assert uniform_layer_map(4, 12) == [2, 5, 8, 11]
    assert uniform_layer_map(6, 12) == [1, 3, 5, 7, 9, 11]
    assert uniform_layer_map(4, 4) == [0, 1, 2, 3]
    assert uniform_layer_map(1, 6) == [5]
    with pytest.raises(UserError, match="deeper than its teacher"):
        uniform_layer_map(5, 4)


def test_two_layer_student_of_a_four_layer_teacher_uses_layers_1_and_3():
    torch.manual_seed(0)
    teacher, student = tiny(layers=4).eval(), tiny(layers=2).eval()
    m = Distillation(weights={"logits": 0.0, "hidden": 1.0, "attention": 1.0}, alpha=0.0, teacher_bf16=False)
    b = batch()
    loss, state = run_loss(m, student, teacher, b)
    assert state.extras["distill/layer_map"] == [1, 3]
    with torch.no_grad():
        so = student(**b, output_hidden_states=True, output_attentions=True)
        to = teacher(**b, output_hidden_states=True, output_attentions=True)
    keep = b["attention_mask"].bool()  # (batch, seq)
    hid = [((so.hidden_states[j + 1] - to.hidden_states[i + 1])[keep]).pow(2).mean() for j, i in enumerate([1, 3])]
    att = [((so.attentions[j] - to.attentions[i]).pow(2).mean(-1).permute(0, 2, 1)[keep]).mean()
           for j, i in enumerate([1, 3])]
    assert state.extras["distill/hidden"] == pytest.approx(torch.stack(hid).mean().item(), rel=1e-5)
    assert state.extras["distill/attention"] == pytest.approx(torch.stack(att).mean().item(), rel=1e-5)
    # The wrong map gives a different number.
    wrong = [((so.hidden_states[j + 1] - to.hidden_states[i + 1])[keep]).pow(2).mean() for j, i in enumerate([0, 1])]
    assert abs(torch.stack(wrong).mean().item() - state.extras["distill/hidden"]) > 1e-4


def test_layer_map_follows_layer_reduction_and_explicit_map_wins():
    torch.manual_seed(0)
    teacher = tiny(layers=4).eval()
    student = reduce_layers(copy.deepcopy(teacher), [0, 2])
    m = Distillation(weights={"hidden": 1.0}, alpha=0.0)
    _, state = run_loss(m, student, teacher, batch())
    assert state.extras["distill/layer_map"] == [0, 2]
    # Listed before the layer reduction (attached first): the map follows the depth at the first loss.
    from compactbert.methods.layer_reduction import LayerReduction

    student2 = copy.deepcopy(teacher)
    first, reduce = Distillation(weights={"hidden": 1.0}, alpha=0.0), LayerReduction(keep=[1, 3])
    state1 = TrainState(model=student2, teacher=teacher, batch=batch())
    first.attach(state1)
    reduce.attach(state1)
    state1.outputs = student2(**state1.batch, **first.forward_kwargs())
    first.loss(state1)
    assert state1.extras["distill/layer_map"] == [1, 3]
    m2 = Distillation(weights={"hidden": 1.0}, alpha=0.0, layer_map=[3, 3])
    _, state2 = run_loss(m2, copy.deepcopy(student), teacher, batch())
    assert state2.extras["distill/layer_map"] == [3, 3]


def test_projection_is_trained_by_the_loop_optimizer_and_removed_at_the_end():
    torch.manual_seed(0)
    teacher = tiny(layers=4, hidden=32).eval()
    student = tiny(layers=2, hidden=16).train()
    m = Distillation(weights={"logits": 1.0, "hidden": 1.0, "embedding": 1.0}, alpha=0.0, teacher_bf16=False)
    state = TrainState(model=student, teacher=teacher)
    m.attach(state)
    proj = getattr(student, PROJ_NAME)
    assert proj["hidden"].weight.shape == (32, 16) and proj["embedding"].weight.shape == (32, 16)
    ids = {id(p) for p in student.parameters()}
    assert all(id(p) in ids for p in proj.parameters())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2)  # built after attach, as the loop does
    before = proj["hidden"].weight.detach().clone()
    losses = []
    for step in range(25):
        state.step, state.batch = step, batch(seed=step % 3)
        m.on_step(state)
        state.outputs = student(**state.batch, **m.forward_kwargs())
        loss = m.loss(state)
        loss.backward()
        opt.step()
        opt.zero_grad()
        m.after_step(state)
        losses.append(loss.item())
    assert not torch.equal(before, proj["hidden"].weight)
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])  # the student (and projection) learn
    assert all(p.grad is None for p in teacher.parameters())
    m.finalize(state)
    assert not hasattr(student, PROJ_NAME)
    assert not any(k.startswith(PROJ_NAME) for k in student.state_dict())


def test_bf16_teacher_runs_without_gradients_and_is_close():
    torch.manual_seed(0)
    teacher = tiny().eval()
    student = copy.deepcopy(teacher).eval()
    m = Distillation(weights={"logits": 1.0, "hidden": 1.0}, alpha=0.0, logit_loss="mse", teacher_bf16=True)
    state = TrainState(model=student, teacher=teacher, batch=batch())
    m.attach(state)
    state.outputs = student(**state.batch, **m.forward_kwargs())
    loss = m.loss(state)
    assert math.isfinite(loss.item()) and 0.0 < loss.item() < 1e-2  # bf16 rounding only
    assert loss.requires_grad


def test_configuration_errors():
    assert method_types()["distillation"] is Distillation
    assert Distillation.needs_teacher is True
    with pytest.raises(pydantic.ValidationError, match="all distillation weights are 0"):
        Distillation(weights={"logits": 0.0})
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        Distillation(weights={"logit": 1.0})
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        Distillation(temprature=2.0)
    with pytest.raises(pydantic.ValidationError):
        Distillation(temperature=0.0)
    with pytest.raises(pydantic.ValidationError):
        Distillation(alpha=1.5)
    with pytest.raises(UserError, match="needs a teacher"):
        Distillation().attach(TrainState(model=tiny()))
    with pytest.raises(UserError, match=r"layer_map \[0\]: needs 2 entries"):
        Distillation(weights={"hidden": 1.0}, layer_map=[0]).attach(
            TrainState(model=tiny(layers=2), teacher=tiny(layers=4)))
    with pytest.raises(UserError, match=r"each a teacher layer in 0..3"):
        Distillation(weights={"hidden": 1.0}, layer_map=[0, 4]).attach(
            TrainState(model=tiny(layers=2), teacher=tiny(layers=4)))
    student = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                       intermediate_size=64, vocab_size=100, num_labels=3))
    with pytest.raises(UserError, match="4 attention heads and the teacher 2"):
        Distillation(weights={"attention": 1.0}).attach(TrainState(model=student, teacher=tiny(layers=4)))
    m = Distillation()
    with pytest.raises(RuntimeError, match="called while the method is 'new'"):
        m.loss(TrainState(model=tiny()))


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_bf16_run_gives_the_teacher_bf16_linears_with_identical_outputs_and_restores_them(arch):
    torch.manual_seed(0)
    teacher = tiny(arch).eval()
    student = copy.deepcopy(teacher).eval()
    b = batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = teacher(**b, output_hidden_states=True)
    fp32 = {n: p for n, p in teacher.named_parameters()}
    m = Distillation(weights={"logits": 1.0, "hidden": 1.0}, alpha=0.0)
    state = TrainState(model=student, teacher=teacher, batch=b, extras={"bf16": True})
    m.attach(state)
    linears = [mod for mod in teacher.modules() if isinstance(mod, torch.nn.Linear)]
    assert linears and all(mod.weight.dtype == torch.bfloat16 for mod in linears)
    assert teacher.get_input_embeddings().weight.dtype == torch.float32  # only Linear layers change
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m._teacher_outputs(state)
    assert torch.equal(got.logits, want.logits)  # the cast autocast did at every call, done once
    assert all(torch.equal(g, w) for g, w in zip(got.hidden_states, want.hidden_states))
    m.finalize(state)
    assert all(p is fp32[n] for n, p in teacher.named_parameters())  # the same fp32 tensors back


def test_fp32_run_leaves_the_teacher_weights_alone():
    teacher = tiny().eval()
    before = {n: p for n, p in teacher.named_parameters()}
    m = Distillation(weights={"logits": 1.0}, alpha=0.0)
    m.attach(TrainState(model=copy.deepcopy(teacher), teacher=teacher, batch=batch(), extras={"bf16": False}))
    assert all(p is before[n] for n, p in teacher.named_parameters())
