"""Running a benchmark plan: the inputs of each tokenizer, then every model measured in turn.

Each model runs in a fresh child process (:mod:`compactbert.bench.child`) with the same thread
settings, so its peak memory is its own; ``isolate=False`` runs it in this process instead.
:func:`measure_models` measures in interleaved rounds (:mod:`compactbert.bench.rounds`): every
model once per round, on the same inputs, each round rotated by one; the first round also scores
the model on the task. :func:`measure_one` is one (model, round).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .plan import BenchPlan, ModelSpec
from .result import fmt, model_row, score_row

__all__ = ["ModelInputs", "prepare_inputs", "measure_models", "measure_one"]


@dataclass
class ModelInputs:
    """The inputs file of one tokenizer: timing rows and (with a task) the dev set's batches.

    Attributes:
        file: the ``.npz`` a child reads (:func:`compactbert.bench.inputs.save_inputs`).
        order: example index of each scored row, to put the logits back in dev-set order.
        labels: the dev set's labels, in dev-set order.
        scored: whether the file holds the dev set (a task was given).
    """

    file: Path
    order: list
    labels: list
    scored: bool


def _load_tokenizer(folder: Path, kind: str):
    """The model's own tokenizer (a packed folder keeps it, possibly vocab-pruned, under tokenizer/)."""
    from transformers import AutoTokenizer

    from ..loading import quiet_transformers

    with quiet_transformers():
        try:
            if kind.startswith("packed"):
                from ..export.pack import load_packed_tokenizer

                tok = load_packed_tokenizer(folder)
                if tok is None:
                    raise OSError("the packed directory has no tokenizer")
                return tok
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot load the tokenizer of {str(folder)!r}: {str(e).splitlines()[0]}") from None


def prepare_inputs(plan: BenchPlan, work: Path) -> dict[str, ModelInputs]:
    """One inputs file per distinct tokenizer folder, keyed by its resolved path."""
    from .inputs import eval_batches, save_inputs, timing_batch

    s = plan.settings
    texts = [(e.text_a, e.text_b) for e in plan.examples] or None
    files: dict[str, ModelInputs] = {}
    for spec in plan.specs:
        key = str(spec.tokenizer_dir.resolve())
        if key in files:
            continue
        tok = _load_tokenizer(spec.tokenizer_dir, spec.kind)
        timing = timing_batch(tok, texts, max(s.batch_size, 8), s.seq_len, seed=0)
        evals, order, labels = [], [], []
        if plan.examples:
            evals, order, labels = eval_batches(tok, plan.examples, s.max_seq_length, s.batch_size)
        f = work / f"inputs-{len(files)}.npz"
        save_inputs(f, timing, evals)
        files[key] = ModelInputs(f, order, labels, bool(evals))
    return files


def measure_models(plan: BenchPlan, inputs: dict[str, ModelInputs], work: Path, console=None,
                   measure=None) -> list[dict[str, Any]]:
    """Measure every model of the plan in interleaved rounds; one row per model (medians and
    spread over the rounds, scored with a task, agreement added). A model that fails in a round is
    not run again; a skipped one (engine not installed) is never run.

    ``measure(plan, spec, inputs, work, tag, console, scored)`` -> ``(result, logits)`` is
    :func:`measure_one` unless given (tests record the order with it).
    """
    from .result import add_agreement
    from .rounds import combine_rounds, schedule

    measure = measure or measure_one
    specs = plan.specs
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(specs))}
    failed: dict[int, dict[str, Any]] = {}
    preds: dict[str, Any] = {}
    rounds = plan.settings.rounds
    for r, i in schedule(len(specs), rounds):
        spec = specs[i]
        if spec.skip or i in failed:
            continue
        if console:
            console.print(f"[round {r + 1}/{rounds}] [{i + 1}/{len(specs)}] {spec.name} ({spec.kind}) ...")
        inp = inputs[str(spec.tokenizer_dir.resolve())]
        result, logits = measure(plan, spec, inp, work, f"{i + 1}-r{r + 1}", console, r == 0)
        if "error" in result:
            failed[i] = result
            continue
        runs[i].append(result)
        if logits is not None:
            preds[spec.name] = logits
    rows = []
    for i, spec in enumerate(specs):
        measured = combine_rounds(runs[i]) if runs[i] else failed.get(i, {})
        if runs[i] and i in failed:  # failed in a later round: its good rounds are kept, the error said
            measured["error"] = f"after {len(runs[i])} round(s): {failed[i]['error']}"
        row = model_row(spec, measured)
        if spec.name in preds and plan.task is not None and not score_row(row, plan.task, preds[spec.name], _labels(inputs, spec)):
            preds.pop(spec.name)
        rows.append(row)
    add_agreement(rows, preds, plan.task)
    return rows


def _labels(inputs: dict[str, ModelInputs], spec: ModelSpec) -> list:
    return inputs[str(spec.tokenizer_dir.resolve())].labels


def measure_one(plan: BenchPlan, spec: ModelSpec, inp: ModelInputs, work: Path, tag: str, console=None,
                scored: bool = True):
    """Measure ``spec`` once (its job, result and logits files are named by ``tag`` in ``work``):
    the child's result (``{"error": ...}`` when it failed) and, when ``scored`` and a task is
    given, its logits in dev-set order (else None)."""
    import numpy as np

    s = plan.settings
    job = {
        "kind": spec.kind, "path": str(spec.path), "threads": s.threads, "inputs": str(inp.file),
        "batch_size": s.batch_size, "n_warmup": s.n_warmup, "n_latency": s.n_latency,
        "n_throughput": s.n_throughput, "clock": s.clock, "result": str(work / f"result-{tag}.json"),
        "logits": str(work / f"logits-{tag}.npy") if (inp.scored and scored) else None,
    }
    r = run_child(job, s.threads, s.child_timeout) if s.isolate else run_inline(job)
    if "user_error" in r:
        raise UserError(f"{spec.name}: {r['user_error']}")
    if "error" in r:
        if console:
            console.print(f"[red]  failed: {r['error']}[/red]")
        return r, None
    if console:
        others = r.get("others_cores")
        console.print(
            f"[dim]  bs1 p50 {r['latency_ms_bs1_p50']:.2f} ms, {r['throughput_bs32']:.1f} seq/s at batch "
            f"{s.batch_size}, peak RSS {fmt(r.get('peak_rss_mb'), '.0f')} MB"
            + (f", others used {others:.2f} cores" if isinstance(others, (int, float)) else "") + "[/dim]"
        )
    if plan.task is None or not job["logits"] or not Path(job["logits"]).is_file():
        return r, None
    from ..data.batching import restore_order

    return r, restore_order(inp.order, np.load(job["logits"]))  # (n, num_labels)


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the compactbert package
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(job: dict, threads: int, timeout: float | None) -> dict:
    """Run ``job`` in a fresh ``python -m compactbert.bench.child``; its result, or ``{"error": ...}``."""
    job_file = Path(job["result"]).with_suffix(".job.json")
    job_file.write_text(json.dumps(job))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "compactbert.bench.child", str(job_file)],
            env=_child_env(threads), capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    try:
        result = json.loads(Path(job["result"]).read_text())
    except (OSError, json.JSONDecodeError):
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return {"error": f"child exited with status {proc.returncode}: {' | '.join(tail)}"}
    if "error" in result and proc.stderr:
        result["stderr_tail"] = proc.stderr.strip().splitlines()[-5:]
    return result


def run_inline(job: dict) -> dict:
    """Run ``job`` in this process (no peak memory of its own: ``peak_rss_mb`` is None)."""
    from .child import run_job

    try:
        result = run_job(job)
    except UserError as e:
        return {"user_error": str(e)}
    except Exception as e:  # noqa: BLE001 - as a failed child: recorded on the model's row
        return {"error": f"{type(e).__name__}: {e}"}
    result["peak_rss_mb"] = None  # the parent's own peak would be meaningless
    return result
