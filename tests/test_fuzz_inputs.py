"""Generated bad input through the CLI's own entry point (issue 9).

A fixed seed generates a few hundred inputs: mutated recipes (for ``recipe check``), hostile
``--set`` values, out-of-range ``finetune`` options, and mutated TSV/CSV/JSONL data files, plus the
cases issue 9 names. Whatever the input, the command must end with status 0 (the input was valid)
or 2 with exactly one line on stderr, never a traceback or another status, and must write nothing
into its output folder. ``finetune`` runs dry: the model loading that follows input validation is
replaced by a stand-in that stops the run, so no case trains.
"""

from __future__ import annotations

import json
import random

import pytest

import compactbert.workflows.finetune as finetune_workflow
from compactbert.cli import main
from toy import make_tiny_model

SEED = 20261130
MAX_LINE = 2100  # UserError messages are cut at 2000 characters; "error: " and a click prefix on top

BASE_RECIPES = [
    """\
description: "W8A8 quantization-aware training"
seed: 42
max_seq_length: 128
stages:
  - name: int8-qat
    epochs: 3
    lr: 2.0e-5
    batch_size: 32
    methods:
      - type: int8
""",
    """\
description: "XTC layer reduction then W1A8"
stages:
  - name: layer-reduction-kd
    epochs: 2
    warmup_ratio: 0.056
    methods:
      - type: layer_reduction
        keep: [1, 3, 5]
      - type: distillation
        alpha: 0.0
        weights: {logits: 1.0, hidden: 1.0, attention: 1.0}
  - name: binary-kd
    steps: 100
    methods:
      - type: binary
      - type: distillation
        alpha: 0.0
""",
    """\
description: "KD (+ synonym augmentation) + magnitude pruning + int8 QAT"
seed: 7
stages:
  - name: kd-mp
    epochs: 3
    lr: 5.0e-5
    augment: {n_aug: 4, p: 0.3, seed: 0}
    methods:
      - type: magnitude_pruning
        sparsity: 0.6
        schedule: linear
        start: 0.1
        end: 0.8
        frequency: 50
      - type: distillation
        temperature: 2.0
        alpha: 0.5
        weights: {logits: 1.0}
  - name: kd-qat-locked
    epochs: 1
    keep: best
    methods:
      - type: magnitude_pruning
        lock_mask: true
      - type: int8
      - type: distillation
""",
]

# Scalars that YAML reads oddly, or not at all, or that are out of any range.
HOSTILE_VALUES = [
    "-1", "0", "4294967296", ".inf", "-.inf", ".nan", "1e999", "1" * 5000, "0x" + "f" * 80, "[", "]", "{", "}",
    "'", '"', "*a", "&a 1", "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!binary aGk=",
    "!!set {a, b}", "!!timestamp 2001-12-14", "2001-12-14", "null", "~", "[]", "{}", "[1, [2, [3]]]",
    "{type: quantize}", "yes", '"\\u2028"', '"\\x00"', "@", "`", "%", "|", ">", "? a", "- a", "quantize", "-0.0",
    "1_000", "0o17", "1:30", "' '", '"a\\nb"', "[" * 40 + "]" * 40, "!foo bar", "<<: *a", "=", "a: b: c",
]
HOSTILE_LINES = [
    "  - *a", "<<: *a", "%YAML 1.1", "---", "...", "\t- x", "key: [unterminated", "stages: &s []", "- {type: [a]}",
    "methods: !!python/name:os.system", "bogus_key: 1", "  methods: 3", "    - {type: {x: 1}}", "stages: 5",
    "a: " + "[" * 600 + "]" * 600, "\x00", "\u2028", "description: &d x", "seed: *d",
]
RANGE_KEYS = ["seed", "max_seq_length", "bf16", "description", "stages", "stages.0.epochs", "stages.0.steps",
              "stages.0.lr", "stages.0.batch_size", "stages.0.warmup_ratio", "stages.0.keep", "stages.0.methods",
              "stages.0.methods.0", "stages.0.methods.0.type", "stages.0.augment", "stages.1.name", "stages.9.lr",
              "stages.0.methods.0.bogus", "stages..lr", "", ".", "stages.x.lr", "stages.0.name.x"]


def mutate_recipe(rng: random.Random, text: str) -> bytes:
    """One to three random edits of a recipe: values, lines, indentation, bytes, truncation."""
    for _ in range(rng.randint(1, 3)):
        lines = text.split("\n")
        i = rng.randrange(len(lines))
        op = rng.randrange(9)
        if op == 0 and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(HOSTILE_VALUES)}"
        elif op == 1:
            del lines[i]
        elif op == 2:
            lines.insert(i, lines[i])
        elif op == 3:
            lines[i] = ("  " + lines[i]) if rng.random() < 0.5 else lines[i][2:]
        elif op == 4:
            lines.insert(i, rng.choice(HOSTILE_LINES))
        elif op == 5:
            text = text[: rng.randrange(len(text) + 1)]
            continue
        elif op == 6:
            pos = rng.randrange(len(text) + 1)
            raw = text.encode("utf-8", "surrogatepass")
            raw = raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1 :]
            return raw if rng.random() < 0.5 else raw.replace(b"\n", b"\r\n")
        elif op == 7:
            lines[i] = lines[i].replace("-", "", 1) if "-" in lines[i] else "- " + lines[i]
        else:
            text = rng.choice(["[", "- ", "a: &x\n", "\ufeff", "%TAG ! tag:x,2000:\n---\n"]) + text
            continue
        text = "\n".join(lines)
    return text.encode("utf-8", "surrogatepass")


def mutate_data(rng: random.Random, kind: str) -> str:
    """A small data file for sst2 (sentence, label) with one or two malformed parts."""
    rows = [("a fine film", "1"), ("dull and long", "0"), ("great, \"really\"", "positive"), ("bad", "negative")]
    bad_labels = ["7", "-1", "1.5", "nan", "inf", "", "None", "1" * 5000, "1" * 4000, "true", "[1]", "pos"]
    bad_texts = ["", "\u2028", "a\u0085b", "\x00", "\"unclosed", "x" * 20000, "tab\there", "semi;colon", "é" * 10]
    rows = [(rng.choice(bad_texts) if rng.random() < 0.3 else t, rng.choice(bad_labels) if rng.random() < 0.3 else y)
            for t, y in rows]
    if kind == "jsonl":
        out = []
        for t, y in rows:
            label = y if rng.random() < 0.5 else (int(y) if y.isdigit() and len(y) < 20 else y)
            obj = {"sentence": t, "label": label}
            line = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
            op = rng.randrange(6)
            if op == 0:
                line = line[: rng.randrange(len(line) + 1)]
            elif op == 1:
                line = '{"sentence": ' + "[" * rng.choice([10, 900, 20000]) + "]" * 5 + "}"
            elif op == 2:
                line = json.dumps([t, y])
            elif op == 3:
                line = '{"sentence": "x", "label": ' + "9" * rng.choice([30, 4000, 5000]) + "}"
            out.append(line)
        return "\n".join(out) + rng.choice(["\n", "", "\n\n\r\n"])
    sep = "\t" if kind == "tsv" else ","
    header = rng.choice([f"sentence{sep}label", f"label{sep}sentence", f"text{sep}label", "sentence", f"sentence{sep}"])
    body = []
    for t, y in rows:
        fields = [t, y] if header.startswith(("sentence", "text")) else [y, t]
        op = rng.randrange(5)
        if op == 0:
            fields = fields[:1]
        elif op == 1:
            fields = fields + ["extra"]
        elif op == 2 and kind == "csv":
            fields[0] = '"' + fields[0]
        body.append(sep.join(fields))
    return header + "\n" + "\n".join(body) + "\n"


def build_cases() -> list[tuple[str, object]]:
    rng = random.Random(SEED)
    cases: list[tuple[str, object]] = [("recipe", base.encode()) for base in BASE_RECIPES]
    cases += [("recipe", mutate_recipe(rng, rng.choice(BASE_RECIPES))) for _ in range(125)]
    cases += [  # issue 9's named recipes
        ("recipe", ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n" + BASE_RECIPES[0]).encode()),
        ("recipe", BASE_RECIPES[0].encode() + b"description: caf\xe9\n"),
        ("recipe", b"stages:\n  - methods:\n      - {type: [int8]}\n"),
        ("recipe", b"stages:\n  - methods:\n      - {type: {int8: 1}}\n"),
        ("recipe", b"stages:\n  - methods: int8\n"),
        ("recipe", b"stages:\n" + b"".join(b"  " * d + b"- \n" for d in range(1, 700))),
        ("recipe", b"seed: " + b"3" * 4301 + b"\n" + BASE_RECIPES[0].encode()),
        ("recipe", BASE_RECIPES[0].encode() + b"\x00"),
        ("recipe", BASE_RECIPES[0].replace("epochs: 3", "epochs: .inf").encode()),
        ("recipe", ("seed: -1\n" + BASE_RECIPES[0].replace("seed: 42\n", "")).encode()),
    ]
    for _ in range(55):
        key = rng.choice(RANGE_KEYS)
        value = rng.choice(HOSTILE_VALUES + ["1", "0.5", "best", "[1, 2]", "{type: int8}", "3"])
        cases.append(("set", f"{key}={value}" if rng.random() < 0.95 else key))
    cases += [("set", f"stages.0.lr={v}") for v in ("[", "@", "'", "*a", "!!python/object/apply:os.system ['true']")]
    options = [("--seed", ["-1", str(2**32), "0", str(2**32 - 1), "1e3", "abc"]),
               ("--epochs", ["inf", "nan", "-1", "0", "1e308", "0.5", "-inf"]),
               ("--lr", ["inf", "nan", "0", "-1e-5", "1e-4"]),
               ("--batch-size", ["0", "-1", "1.5", "8"]),
               ("--warmup-ratio", ["nan", "-0.1", "2", "0"]),
               ("--max-steps", ["0", str(10**15), "x"]),
               ("--max-train-samples", ["0", "-3", "4"]),
               ("--eval-every", ["0", "-2"]),
               ("--max-seq-length", ["1", "-5"]),
               ("--data", ["x" * 5000, "~no-such-user-9/x.tsv", "hub:", "glue/xx", "\x00", "a\nb"]),
               ("--model", ["x" * 5000, "~no-such-user-9/m", "a b", "org/..", "é/x", "owner/"])]
    cases += [("option", (opt, value)) for opt, values in options for value in values]
    for _ in range(75):
        kind = rng.choice(["tsv", "csv", "jsonl"])
        cases.append(("data", (kind, mutate_data(rng, kind))))
    cases += [  # issue 9's named data files
        ("data", ("jsonl", '{"sentence": "a\u2028b", "label": 1}\n{"sentence": "c", "label": 0}\n')),
        ("data", ("jsonl", '{"sentence": ' + "[" * 100000 + "]" * 100000 + ', "label": 1}\n')),
        ("data", ("jsonl", '{"sentence": "x", "label": ' + "1" * 5000 + "}\n")),
        ("data", ("csv", 'sentence,label\n"good film,1\nbad film,0\n')),
        ("data", ("tsv", "sentence\tlabel\ngood film\t1\nbad film\n")),
    ]
    return cases


CASES = build_cases()


class DryRun(Exception):
    """Raised in place of loading the model: every input before it was accepted."""


@pytest.fixture(autouse=True, scope="module")
def command_built_once():
    """Typer turns the app into a click command on every call (most of a call's time); build it once
    for the whole module. The command is the same object each call would build: only the rebuilding
    is skipped."""
    import typer.main

    build = typer.main.get_command
    built: dict[int, object] = {}

    def get_command(app):
        if id(app) not in built:
            built[id(app)] = build(app)
        return built[id(app)]

    typer.main.get_command = get_command
    yield
    typer.main.get_command = build


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("fuzz") / "bert", "bert")


def check_outcome(code, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err[:3000]
        assert len(lines[0]) <= MAX_LINE


def dry_finetune(capsys, monkeypatch, model, out, data, *extra):
    def stop(*args, **kwargs):
        raise DryRun

    monkeypatch.setattr(finetune_workflow, "load_for_task", stop)
    argv = ["finetune", "--model", str(model), "--task", "sst2", "--out", str(out), "--no-bf16", "--no-progress",
            "--data", str(data), *extra]
    capsys.readouterr()  # what fixtures printed
    try:
        code = main(argv)
    except DryRun:
        code = 0
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind, payload", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_generated_input(kind, payload, tmp_path, capsys, monkeypatch, request):
    if kind in ("recipe", "set"):
        recipe = tmp_path / "recipe.yaml"
        recipe.write_bytes(payload if kind == "recipe" else BASE_RECIPES[2].encode())
        argv = ["recipe", "check", str(recipe)] + (["--set", payload] if kind == "set" else [])
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        check_outcome(code, captured.err)
        if code == 0:
            assert "recipe OK" in captured.out and captured.err == ""
        assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]
        return
    model = request.getfixturevalue("model")
    out = tmp_path / "run"
    if kind == "option":
        data = tmp_path / "ok.tsv"
        data.write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
        code, err = dry_finetune(capsys, monkeypatch, model, out, data, *payload)
    else:
        ext, text = payload
        data = tmp_path / f"data.{ext}"
        data.write_text(text, encoding="utf-8", errors="surrogatepass")
        code, err = dry_finetune(capsys, monkeypatch, model, out, data)
    check_outcome(code, err)
    assert not out.exists()


def test_the_generator_covers_both_outcomes(tmp_path, capsys, monkeypatch, model):
    """Among the first generated recipes and data files some are valid and some refused (the
    mutations do not all fail on something trivial), and the unmutated recipes pass."""
    outcomes: dict[str, list[int]] = {"recipe": [], "data": []}
    for i, (kind, payload) in enumerate(CASES):
        if kind == "recipe" and len(outcomes["recipe"]) < 40:
            path = tmp_path / f"r{i}.yaml"
            path.write_bytes(payload)
            outcomes["recipe"].append(main(["recipe", "check", str(path)]))
        elif kind == "data" and len(outcomes["data"]) < 20:
            ext, text = payload
            data = tmp_path / f"d{i}.{ext}"
            data.write_text(text, encoding="utf-8", errors="surrogatepass")
            outcomes["data"].append(dry_finetune(capsys, monkeypatch, model, tmp_path / f"o{i}", data)[0])
    capsys.readouterr()
    assert outcomes["recipe"][: len(BASE_RECIPES)] == [0] * len(BASE_RECIPES)
    assert set(outcomes["recipe"][len(BASE_RECIPES):]) == {0, 2}
    assert set(outcomes["data"]) == {0, 2}
    assert len(CASES) >= 300
