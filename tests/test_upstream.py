"""Upstream (label-free) compression on a corpus, locked-mask transfer to a task, and their bad inputs.

Tiny models (tests/toy.py), a toy corpus of a few hundred sentences, a few training steps each.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compactbert.cli import main
from compactbert.methods.base import TrainState
from compactbert.methods.distill import Distillation
from compactbert.nn.pooling import Pooling
from toy import make_tiny_model, toy_sentence, write_toy_glue

UPSTREAM = """stages:
  - name: prune
    steps: 24
    lr: 1.0e-3
    eval_every: 6
    warmup_ratio: 0.0
    methods:
      - {type: magnitude_pruning, sparsity: 0.5, schedule: one_shot, start: 0}
      - {type: distillation, alpha: 0.0, weights: {logits: 0.0, sentence: 1.0, hidden: 1.0}}
"""
SHORT_DOWNSTREAM = ["--set", "stages.0.steps=4", "--set", "stages.0.epochs=null", "--set", "stages.1.steps=3",
                    "--set", "stages.1.epochs=null"]


def write_corpus(path: Path, n: int = 600, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(toy_sentence(rng, rng.random() < 0.5) + "." for _ in range(n)) + "\n")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    model = make_tiny_model(root / "bert", "bert", dropout=0.0)
    glue = write_toy_glue(root / "glue", "sst2", n_train=32, n_dev=16)
    write_toy_glue(root / "glue", "stsb", n_train=8, n_dev=24)
    corpus = write_corpus(root / "corpus.txt")
    recipe = root / "up.yaml"
    recipe.write_text(UPSTREAM)
    run = root / "up"
    code = main(["compress", str(recipe), "--model", str(model), "--task", "corpus", "--data", str(corpus),
                 "--eval-data", str(glue), "--out", str(run), "--no-progress"])
    assert code == 0
    return {"root": root, "model": model, "glue": glue, "corpus": corpus, "run": run}


def one_error_line(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------------------------------
# The sentence-embedding distillation term


def test_sentence_term_is_one_minus_cosine_of_masked_mean_pooled_normalised_states():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student, teacher = BertModel(cfg).eval(), BertModel(cfg).eval()
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        s_states, t_states = student(**batch).last_hidden_state, teacher(**batch).last_hidden_state

    def mean(h):  # by hand: the real tokens only
        return torch.stack([h[0].mean(0), h[1, :3].mean(0)])

    s, t = torch.nn.functional.normalize(mean(s_states), dim=-1), torch.nn.functional.normalize(mean(t_states), dim=-1)
    for kind, expected in (("cosine", (1 - (s * t).sum(-1)).mean()), ("mse", (s - t).pow(2).mean())):
        m = Distillation(alpha=0.0, weights={"logits": 0.0, "sentence": 1.0}, sentence_loss=kind, teacher_bf16=False)
        state = TrainState(model=student, teacher=teacher, total_steps=1, extras={"pooling": Pooling("mean", True)})
        m.attach(state)
        state.batch = batch
        with torch.no_grad():
            state.outputs = student(**batch, **m.forward_kwargs(), return_dict=True)
            loss = m.loss(state)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5), kind
        assert state.extras["distill/sentence"] == pytest.approx(expected.item(), rel=1e-5)


def test_cls_term_is_one_minus_cosine_of_batch_centred_cls_states():
    """The [CLS] term compares how the [CLS] state varies across the batch (each model's states
    centred on its own batch mean), on bare encoders and on classifiers alike."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0], [2, 8, 8, 3, 0]])
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "attention_mask": mask}
    for cls_model in (BertModel, BertForSequenceClassification):
        student, teacher = cls_model(cfg).eval(), cls_model(cfg).eval()
        with torch.no_grad():
            s = student(**batch, output_hidden_states=True).hidden_states[-1][:, 0]
            t = teacher(**batch, output_hidden_states=True).hidden_states[-1][:, 0]
        sc, tc = s - s.mean(0), t - t.mean(0)
        expected = (1 - (sc * tc).sum(-1) / (sc.norm(dim=-1) * tc.norm(dim=-1))).mean()
        m = Distillation(alpha=0.0, weights={"logits": 0.0, "cls": 1.0}, teacher_bf16=False)
        state = TrainState(model=student, teacher=teacher, total_steps=1)
        m.attach(state)
        state.batch = batch
        with torch.no_grad():
            state.outputs = student(**batch, **m.forward_kwargs(), return_dict=True)
            loss = m.loss(state)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5), cls_model.__name__
        assert state.extras["distill/cls"] == pytest.approx(expected.item(), rel=1e-5)
    # the same model as its own teacher: nothing to learn
    m = Distillation(alpha=0.0, weights={"logits": 0.0, "cls": 1.0}, teacher_bf16=False)
    state = TrainState(model=student, teacher=student.__class__(cfg).eval(), total_steps=1)
    state.teacher.load_state_dict(student.state_dict())
    m.attach(state)
    state.batch = batch
    with torch.no_grad():
        state.outputs = student(**batch, **m.forward_kwargs(), return_dict=True)
        assert m.loss(state).item() == pytest.approx(0.0, abs=1e-6)


def test_logits_term_on_bare_encoders_is_refused_with_its_key():
    from transformers import BertConfig, BertModel

    from compactbert.errors import UserError

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    m = Distillation(alpha=0.0, weights={"logits": 1.0, "sentence": 1.0})
    with pytest.raises(UserError, match=r"distillation.weights.logits: the student and the teacher have no classification head"):
        m.attach(TrainState(model=BertModel(cfg), teacher=BertModel(cfg), total_steps=1))


# --------------------------------------------------------------------------------------------------
# compress --task corpus, end to end


def test_upstream_run_trains_a_headless_sparse_embedding_model_and_its_loss_goes_down(env):
    run = env["run"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "done" and info["task"] == "corpus" and info["teacher"] == str(env["model"])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6, 12, 18, 24]
    losses = [r["loss"] for r in records]  # mean training loss of each 6-step window
    assert losses[-1] < 0.5 * losses[0], losses
    assert records[-1]["metrics"]["teacher_cosine"] > records[0]["metrics"]["teacher_cosine"]
    assert set(records[0]["extras"]) >= {"distill/sentence", "distill/hidden"}

    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"]  # headless: no task head
    spec = json.loads((run / "model" / "compression.json").read_text())["modules"]
    assert spec and all(name.startswith("encoder.layer.") and entry["has_mask"] for name, entry in spec.items())
    weights = load_file(str(run / "model" / "model.safetensors"))
    masks = [v for k, v in weights.items() if k.endswith("weight_mask")]
    assert len(masks) == 12 and all((~m).float().mean().item() == pytest.approx(0.5, abs=0.01) for m in masks)
    modules = json.loads((run / "model" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]

    result = json.loads((run / "eval.json").read_text())
    assert result["task"] == "corpus" and result["main_metric"] == "spearman_cosine"
    assert set(result["metrics"]) == {"teacher_cosine", "spearman_cosine", "pearson_cosine"}
    assert "STS-B dev" in result["evaluated"]["spearman_cosine"] and "24 pairs" in result["evaluated"]["spearman_cosine"]
    assert "held-out sentences of corpus" in result["evaluated"]["teacher_cosine"]
    assert 0.0 < result["metrics"]["teacher_cosine"] <= 1.0


def test_upstream_run_is_an_embedding_model_for_eval_and_export(env, capsys):
    run = env["run"]
    own = json.loads((run / "eval.json").read_text())["metrics"]["spearman_cosine"]
    assert main(["eval", str(run)]) == 0  # an upstream run: stsb-embed on its --eval-data by default
    got = json.loads((run / "eval-stsb-embed.json").read_text())
    assert got["task"] == "stsb-embed" and got["n"] == 24
    assert got["metrics"]["spearman_cosine"] == pytest.approx(own, abs=1e-6)

    out = env["root"] / "packed"
    assert main(["export", str(run), "--out", str(out)]) == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head"] is None and cfg["num_labels"] == 0 and cfg["pooling"]["mode"] == "mean"
    from compactbert.embedding.encoder import open_encoder
    from compactbert.runtime import load

    sentences = ["the movie was great .", "a dull plot and weak actors ."]
    ref = open_encoder(run).encode(sentences)
    packed = load(out, dtype="fp32").encode(sentences)
    assert (packed * ref).sum(-1).min() > 0.999  # fp16-stored floats, same sparse weights


def test_every_method_runs_upstream_structured_pruning_layer_reduction_ternary(env, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""stages:
  - name: reduce-prune
    steps: 4
    methods:
      - {type: layer_reduction, keep: [1]}
      - {type: structured_pruning, heads: 0.5, neurons: 0.5, schedule: one_shot, start: 0}
      - {type: distillation, alpha: 0.0, weights: {logits: 0.0, sentence: 1.0, hidden: 1.0}}
  - name: ternary
    steps: 4
    methods:
      - {type: ternary}
      - {type: distillation, alpha: 0.0, weights: {logits: 0.0, sentence: 1.0, attention: 1.0}, sentence_loss: mse}
""")
    out = tmp_path / "run"
    code = main(["compress", str(recipe), "--model", str(env["model"]), "--task", "corpus", "--data", str(env["corpus"]),
                 "--out", str(out), "--no-progress"])
    assert code == 0
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"] and cfg["num_hidden_layers"] == 1
    spec = json.loads((out / "model" / "compression.json").read_text())["modules"]
    assert spec["encoder.layer.0.attention.self.query"]["weight_quantizer"]["kind"] == "ternary"
    assert spec["embeddings.word_embeddings"]["weight_quantizer"]["kind"] == "ternary"
    result = json.loads((out / "eval.json").read_text())
    assert result["main_metric"] == "teacher_cosine" and "not evaluated" in result["evaluated"]["spearman_cosine"]


# --------------------------------------------------------------------------------------------------
# Locked-mask transfer to a task


def _zero_patterns(weights: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Per masked layer: where its effective weight (weight x mask) is zero."""
    out = {}
    for k, mask in weights.items():
        if k.endswith(".weight_mask"):
            name = k[len(prefix):].removesuffix("_mask")
            out[name.removesuffix(".weight")] = (weights[k.removesuffix("_mask")] * mask) == 0
    return out


def test_locked_mask_transfer_keeps_the_upstream_zero_pattern_exactly(env, capsys):
    run, out = env["run"], env["root"] / "sst2-pofa"
    code = main(["compress", "pofa-downstream", "--model", str(run), "--teacher", str(env["model"]), "--task", "sst2",
                 "--data", str(env["glue"]), "--out", str(out), "--no-progress", *SHORT_DOWNSTREAM])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["model"] == str(run) and "skipped_methods" not in info
    up = _zero_patterns(load_file(str(run / "model" / "model.safetensors")))
    down_w = load_file(str(out / "model" / "model.safetensors"))
    down = _zero_patterns(down_w, prefix="bert.")
    assert set(up) == set(down) and len(up) == 12
    for name in up:
        assert torch.equal(up[name], down[name]), name
        assert up[name].float().mean().item() == pytest.approx(0.5, abs=0.01)
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and "classifier.weight" in down_w
    spec = json.loads((out / "model" / "compression.json").read_text())["modules"]
    assert spec["bert.encoder.layer.0.output.dense"]["weight_quantizer"]["bits"] == 8  # then int8 QAT
    assert spec["bert.encoder.layer.0.output.dense"]["has_mask"]
    assert json.loads((out / "eval.json").read_text())["task"] == "sst2"


def test_transfer_without_a_teacher_skips_distillation_and_says_so(env, capsys):
    out = env["root"] / "sst2-noteacher"
    code = main(["compress", "pofa-downstream", "--model", str(env["run"]), "--task", "sst2", "--data", str(env["glue"]),
                 "--out", str(out), "--no-progress", *SHORT_DOWNSTREAM])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["skipped_methods"] == ["stages.0.methods.1 (distillation)", "stages.1.methods.2 (distillation)"]
    up = _zero_patterns(load_file(str(env["run"] / "model" / "model.safetensors")))
    down = _zero_patterns(load_file(str(out / "model" / "model.safetensors")), prefix="bert.")
    assert all(torch.equal(up[n], down[n]) for n in up)


def test_finetune_from_an_upstream_run_puts_a_new_head_on_the_compressed_encoder(env, capsys):
    out = env["root"] / "ft"
    code = main(["finetune", "--model", str(env["run"]), "--task", "sst2", "--data", str(env["glue"]), "--out", str(out),
                 "--max-steps", "2", "--no-bf16", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    spec = json.loads((out / "model" / "compression.json").read_text())["modules"]
    assert len(spec) == 12 and all(e["has_mask"] for e in spec.values())
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]


# --------------------------------------------------------------------------------------------------
# Ready recipes on real (tiny) models


@pytest.mark.parametrize("name", ["pofa-upstream", "embed-int8", "embed-ternary"])
def test_upstream_recipes_check_and_attach_to_a_bare_encoder(env, name, capsys):
    from compactbert.workflows.compress import dry_run_recipe, recipe_check
    from compactbert.workflows.upstream import check_label_free_recipe, corpus_task, load_encoder

    assert main(["recipe", "check", name]) == 0
    assert "sentence" in capsys.readouterr().out
    rec = recipe_check(name)
    check_label_free_recipe(rec, name)
    net, tok = load_encoder(env["model"], "model")
    dry_run_recipe(rec, net.eval(), tok, corpus_task(False), name, extras={"pooling": Pooling()})


def test_downstream_recipe_checks_and_locks_the_upstream_run(env, capsys):
    from compactbert.data.tasks import get_task
    from compactbert.loading import load_for_task
    from compactbert.workflows.compress import dry_run_recipe, recipe_check

    assert main(["recipe", "check", "pofa-downstream"]) == 0
    rec = recipe_check("pofa-downstream")
    student, tok = load_for_task(env["run"], "sst2")
    dry_run_recipe(rec, None, tok, get_task("sst2"), "pofa-downstream", student=student)


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the value, exit 2, nothing written


def _corpus_args(env, out, data, recipe=None, *extra):
    return ["compress", str(recipe or env["root"] / "up.yaml"), "--model", str(env["model"]), "--task", "corpus",
            "--data", str(data), "--out", str(out), "--no-progress", *extra]


@pytest.mark.parametrize("content, needles", [
    (b"", ("is empty",)),
    (b"\x00\x01binary\x00junk", ("is not a text file",)),
    (b"ok\nfine\nno\n!!!\n", ("yields no sentences",)),
])
def test_bad_corpus_files(env, tmp_path, capsys, content, needles):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    out = tmp_path / "run"
    one_error_line(capsys, main(_corpus_args(env, out, bad)), str(bad), *needles)
    assert not out.exists()


def test_a_corpus_with_no_held_out_sentence_is_refused(env, tmp_path, capsys):
    few = write_corpus(tmp_path / "few.txt", n=20, seed=3)
    out = tmp_path / "run"
    one_error_line(capsys, main(_corpus_args(env, out, few)), "has no sentences in split dev")
    assert not out.exists()


def test_unsupported_pooling_in_the_models_config(env, tmp_path, capsys):
    import shutil

    model = tmp_path / "st-model"
    shutil.copytree(env["model"], model)
    (model / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    out = tmp_path / "run"
    args = _corpus_args(env, out, env["corpus"])
    args[args.index("--model") + 1] = str(model)
    one_error_line(capsys, main(args), "pooling pooling_mode_weightedmean_tokens is not supported")
    assert not out.exists()


def test_stsb_embed_on_something_without_token_embeddings(env, tmp_path, capsys):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00" * 16)
    code = main(["eval", str(weights), "--task", "stsb-embed", "--data", str(env["glue"])])
    one_error_line(capsys, code, str(weights), "it has no token embeddings to pool")


def test_locked_mask_transfer_from_a_model_without_a_mask(env, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "pofa-downstream", "--model", str(env["model"]), "--task", "sst2", "--data", str(env["glue"]),
                 "--out", str(out), "--no-progress"])
    one_error_line(capsys, code, "stages.0.methods.0 (magnitude_pruning)", "lock_mask", "nothing to lock")
    assert not out.exists()


def test_recipe_and_argument_errors_of_upstream_runs(env, tmp_path, capsys):
    out = tmp_path / "run"
    no_kd = tmp_path / "no-kd.yaml"
    no_kd.write_text("stages:\n  - name: q\n    steps: 2\n    methods:\n      - {type: int8}\n")
    one_error_line(capsys, main(_corpus_args(env, out, env["corpus"], no_kd)), "stages.0 (q) has no distillation method")
    logits = tmp_path / "logits.yaml"
    logits.write_text("stages:\n  - name: q\n    steps: 2\n    methods:\n      - {type: distillation, alpha: 0.0}\n")
    one_error_line(capsys, main(_corpus_args(env, out, env["corpus"], logits)), "distillation.weights.logits",
                   "no classification head")
    one_error_line(capsys, main(["compress", "pofa-downstream", "--task", "sst2", "--out", str(out)]),
                   "give --teacher", "or --model")
    one_error_line(capsys, main(["compress", "pofa", "--model", str(env["run"]), "--task", "sst2", "--data",
                                 str(env["glue"]), "--out", str(out)]), "stages.0.methods.1 (distillation) needs a teacher")
    one_error_line(capsys, main(["compress", "pofa", "--teacher", str(env["model"]), "--task", "sst2", "--eval-data",
                                 str(env["glue"]), "--out", str(out)]), "--eval-data is for --task corpus")
    one_error_line(capsys, main(["finetune", "--model", str(env["model"]), "--task", "corpus", "--out", str(out)]),
                   "task 'corpus' has no labels")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# export --format sentence-transformers


def _ort_mean_pooled(onnx_path: Path, tok, sentences: list[str]) -> torch.Tensor:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    enc = tok(sentences, padding=True, return_tensors="np")
    states = sess.run(["last_hidden_state"], {k: v.astype("int64") for k, v in enc.items() if k in names})[0]
    m = torch.tensor(enc["attention_mask"], dtype=torch.float32).unsqueeze(-1)
    return torch.nn.functional.normalize((torch.tensor(states) * m).sum(1) / m.sum(1), dim=-1)


def test_sentence_transformers_export_of_an_upstream_run(env, capsys):
    from transformers import AutoTokenizer

    from compactbert.embedding.encoder import open_encoder

    run, out = env["run"], env["root"] / "st"
    assert main(["export", str(run), "--format", "sentence-transformers", "--out", str(out)]) == 0, capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling", "2_Normalize",
            "config.json", "model.safetensors", "onnx", "compactbert_export.json"} <= names
    assert {"model.onnx", "model_fp16.onnx", "model_qint8_avx512_vnni.onnx"} <= {p.name for p in (out / "onnx").iterdir()}
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                                            "sentence_transformers.models.Normalize"]
    pool_cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool_cfg["pooling_mode_mean_tokens"] is True and pool_cfg["word_embedding_dimension"] == 32
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 128
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    weights = load_file(str(out / "model.safetensors"))
    assert not any(k.endswith("weight_mask") for k in weights) and weights["encoder.layer.0.output.dense.weight"].dtype == torch.float32
    assert (weights["encoder.layer.0.output.dense.weight"] == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)

    sentences = ["the movie was great .", "a dull plot and weak actors .", "fun"]
    ref = open_encoder(run).encode(sentences)
    ours = open_encoder(out)  # our own loader reads the folder back: a model folder with its pooling
    assert ours.pooling.mode == "mean" and ours.pooling.normalize
    assert torch.allclose(ours.encode(sentences), ref, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(out)
    assert torch.allclose(_ort_mean_pooled(out / "onnx" / "model.onnx", tok, sentences), ref, atol=1e-4)
    assert (_ort_mean_pooled(out / "onnx" / "model_fp16.onnx", tok, sentences) * ref).sum(-1).min() > 0.999
    assert (_ort_mean_pooled(out / "onnx" / "model_qint8_avx512_vnni.onnx", tok, sentences) * ref).sum(-1).min() > 0.9

    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is not None:  # optional (a bench dependency): check it too
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(out), device="cpu")
        assert torch.allclose(torch.tensor(st.encode(sentences)), ref, atol=1e-5)
    # an earlier export is replaced without --overwrite; anything else is refused
    assert main(["export", str(run), "--format", "sentence-transformers", "--out", str(out)]) == 0
    other = env["root"] / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    capsys.readouterr()
    code = main(["export", str(run), "--format", "sentence-transformers", "--out", str(other)])
    one_error_line(capsys, code, "--overwrite")
    assert (other / "mine.txt").read_text() == "keep"
