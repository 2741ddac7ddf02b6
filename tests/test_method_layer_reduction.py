"""Layer reduction: the student keeps exactly the chosen teacher layers and computes what they compute."""

from __future__ import annotations

import copy

import pydantic
import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from compactbert.errors import UserError
from compactbert.methods.base import TrainState
from compactbert.methods.layer_reduction import KEPT_LAYERS_KEY, LayerReduction, encoder_layers, reduce_layers
from compactbert.methods import method_types

ARCHS = ("bert", "distilbert", "roberta", "electra")


def tiny(arch: str, layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=100, max_position_embeddings=64, num_labels=3)
    if arch == "bert":
        cfg = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                         **common)
        return BertForSequenceClassification(cfg).eval()
    if arch == "distilbert":
        cfg = DistilBertConfig(dim=32, n_layers=layers, n_heads=2, hidden_dim=64, **common)
        return DistilBertForSequenceClassification(cfg).eval()
    if arch == "roberta":
        cfg = RobertaConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                            pad_token_id=1, **common)
        return RobertaForSequenceClassification(cfg).eval()
    cfg = ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, **common)
    return ElectraForSequenceClassification(cfg).eval()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def _identity_hook(module, args, kwargs, output):
    """Make a layer pass its input through unchanged (a 'removed' layer), keeping the output format."""
    hidden = args[0] if args else next(iter(kwargs.values()))
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden,) + tuple(output[1:])


@pytest.mark.parametrize("arch", ARCHS)
def test_kept_layers_are_copies_of_the_chosen_teacher_layers(arch):
    teacher = tiny(arch, layers=4)
    student = reduce_layers(copy.deepcopy(teacher), [1, 3])
    t_layers, s_layers = encoder_layers(teacher)[2], encoder_layers(student)[2]
    assert len(s_layers) == 2 and len(t_layers) == 4
    for s_idx, t_idx in enumerate([1, 3]):
        ts, ss = t_layers[t_idx].state_dict(), s_layers[s_idx].state_dict()
        assert ts.keys() == ss.keys()
        for k in ts:
            assert torch.equal(ts[k], ss[k]), (arch, t_idx, k)
    # Not the other layers: layer 0 of the student is not teacher layer 0.
    k0 = next(iter(t_layers[0].state_dict()))
    assert not torch.equal(s_layers[0].state_dict()[k0], t_layers[0].state_dict()[k0])
    # Everything outside the layers is unchanged.
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    outside = [k for k in t_sd if ".layer." not in k]
    assert outside and all(torch.equal(s_sd[k], t_sd[k]) for k in outside)
    assert len(s_sd) == len(outside) + 2 * len(t_layers[0].state_dict())
    assert student.config.num_hidden_layers == 2
    assert getattr(student.config, KEPT_LAYERS_KEY) == [1, 3]
    if arch == "distilbert":
        assert student.config.n_layers == 2


@pytest.mark.parametrize("arch", ARCHS)
def test_student_output_equals_teacher_run_with_only_those_layers(arch):
    teacher = tiny(arch, layers=4)
    student = reduce_layers(copy.deepcopy(teacher), [0, 2])
    b = batch()
    for i in (1, 3):  # the dropped layers become the identity in the teacher
        encoder_layers(teacher)[2][i].register_forward_hook(_identity_hook, with_kwargs=True)
    with torch.no_grad():
        expected = teacher(**b).logits
        got = student(**b).logits
        full = tiny(arch, layers=4)(**b).logits
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - full).abs().max() > 1e-4  # the reduction really changed the function


def test_reduced_model_saves_and_reloads_with_the_new_depth(tmp_path):
    student = reduce_layers(tiny("bert", layers=4), [1, 2, 3])
    student.save_pretrained(tmp_path, safe_serialization=True)
    again = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.config.num_hidden_layers == 3
    assert getattr(again.config, KEPT_LAYERS_KEY) == [1, 2, 3]
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(again(**b).logits, student(**b).logits, rtol=0, atol=0)


def test_second_reduction_records_indices_of_the_original_model():
    m = reduce_layers(tiny("bert", layers=4), [0, 1, 3])
    reduce_layers(m, [0, 2])
    assert getattr(m.config, KEPT_LAYERS_KEY) == [0, 3]
    assert m.config.num_hidden_layers == 2


def test_method_attach_reduces_in_place_and_is_idempotent_on_resume():
    assert method_types()["layer_reduction"] is LayerReduction
    model = tiny("roberta", layers=4)
    layer3 = encoder_layers(model)[2][3]
    m = LayerReduction.model_validate({"type": "layer_reduction", "keep": [1, 3]})
    state = TrainState(model=model)
    m.attach(state)
    assert state.model is model and len(encoder_layers(model)[2]) == 2
    assert encoder_layers(model)[2][1] is layer3
    m.on_step(state)
    assert m.loss(state) is None
    m.finalize(state)
    # A resumed run builds the method again on the already reduced model: nothing changes.
    again = LayerReduction(keep=[1, 3])
    again.attach(TrainState(model=model))
    assert encoder_layers(model)[2][1] is layer3
    assert "keep=[1, 3]" in again.describe()


def test_bad_keep_lists_are_user_errors():
    with pytest.raises(UserError, match=r"layer 4 is out of range for a teacher with 4 layers \(valid: 0..3\)"):
        reduce_layers(tiny("bert", layers=4), [1, 4])
    with pytest.raises(UserError, match="strictly increasing"):
        reduce_layers(tiny("bert", layers=4), [3, 1])
    with pytest.raises(UserError, match="empty"):
        reduce_layers(tiny("bert", layers=4), [])
    with pytest.raises(pydantic.ValidationError, match="strictly increasing"):
        LayerReduction(keep=[1, 1])
    with pytest.raises(pydantic.ValidationError, match="negative"):
        LayerReduction(keep=[-1, 2])
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        LayerReduction(keep=[1], layers=[2])
    m = LayerReduction(keep=[0, 9])
    with pytest.raises(UserError, match="layer 9 is out of range"):
        m.attach(TrainState(model=tiny("distilbert", layers=4)))
