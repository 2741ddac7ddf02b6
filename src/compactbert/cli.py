"""The `compactbert` command line. It only parses arguments and calls :mod:`compactbert.api`.

User errors (:class:`compactbert.errors.UserError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import defaults as D
from .errors import UserError

app = typer.Typer(
    name="compactbert",
    help="Make pre-trained transformer encoders small and fast for a task.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --------------------------------------------------------------------------------------------------
# finetune / eval

_TASKS_HELP = "Task: a GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) or rt (embedded Rotten Tomatoes)."
_DATA_HELP = (
    "Where the examples are: a GLUE-format folder (the task folder or the GLUE root), a CSV/TSV/JSONL file "
    "with named columns, or a hub dataset (glue/sst2, rotten_tomatoes, hub:owner/name[:config]). "
    "Default: the embedded corpus for rt, nyu-mll/glue on the hub otherwise."
)

# options several commands share
_RunOut = Annotated[Path, typer.Option("--out", "-o", help="Run directory to create (or resume).", show_default=False)]
_Task = Annotated[str, typer.Option("--task", "-t", help=_TASKS_HELP)]
_Data = Annotated[Optional[str], typer.Option("--data", "-d", help=_DATA_HELP, show_default=False)]
_MaxTrain = Annotated[
    Optional[int], typer.Option(help="Train on a fixed random subset of this many examples.", show_default=False)]
_MaxEval = Annotated[
    Optional[int], typer.Option(help="Evaluate on a fixed random subset of this many examples.", show_default=False)]
_Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start again in --out, deleting a previous run's files there.")]


@app.command(no_args_is_help=True)
def finetune(
    out: _RunOut,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model folder, hub id, run directory, or the alias minilm-l6 (embedded).")
    ] = D.MODEL,
    task: _Task = D.TASK,
    data: _Data = None,
    epochs: Annotated[float, typer.Option(help="Passes over the training data (fractions allowed).")] = D.EPOCHS,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW; linear warm-up, then linear decay).")] = D.LR,
    batch_size: Annotated[int, typer.Option(help="Global batch size (all processes together).")] = D.BATCH_SIZE,
    max_seq_length: Annotated[int, typer.Option(help="Longest tokenized input; longer ones are truncated.")] = D.MAX_SEQ_LENGTH,
    max_train_samples: _MaxTrain = None,
    max_eval_samples: _MaxEval = None,
    seed: Annotated[int, typer.Option(help="Seed of the new head, the batch order and dropout.")] = D.SEED,
    bf16: Annotated[
        Optional[bool],
        typer.Option("--bf16/--no-bf16", help="bf16 autocast. Default: on where the hardware has native bf16 (AMX, recent GPUs).", show_default=False),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    overwrite: _Overwrite = False,
    eval_every: Annotated[
        Optional[int], typer.Option(help="Evaluate every N steps (default: once per epoch).", show_default=False)
    ] = None,
    save_every: Annotated[
        Optional[int], typer.Option(help="Write a checkpoint every N steps (default: at each evaluation).", show_default=False)
    ] = None,
    max_steps: Annotated[
        Optional[int], typer.Option(help="Stop after N optimizer steps (overrides --epochs).", show_default=False)
    ] = None,
    warmup_ratio: Annotated[float, typer.Option(help="Share of the steps used for LR warm-up.")] = D.WARMUP_RATIO,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = D.WEIGHT_DECAY,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also write TensorBoard logs to OUT/tensorboard.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Fine-tune a model on a task: leaves OUT/model (best checkpoint), metrics.jsonl and eval.json.

    Example: compactbert finetune --model minilm-l6 --task sst2 --data ../shared/data/glue --out runs/sst2
    """
    from . import api

    run = api.finetune(
        model=model, task=task, data=data, out=out, epochs=epochs, lr=lr, batch_size=batch_size,
        max_seq_length=max_seq_length, max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
        seed=seed, bf16=bf16, resume=resume, overwrite=overwrite, eval_every=eval_every, save_every=save_every,
        max_steps=max_steps, warmup_ratio=warmup_ratio, weight_decay=weight_decay, tensorboard=tensorboard,
        progress=progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # only the main process of a multi-process run reports
        _print_eval(json.loads((run / api.EVAL_FILE).read_text()), f"{run}/model")
        print(f"run directory: {run}")


@app.command("eval", no_args_is_help=True)
def eval_(
    path: Annotated[str, typer.Argument(help="A run directory (its model/ is evaluated), a model folder, a hub id, or minilm-l6.", show_default=False)],
    task: Annotated[Optional[str], typer.Option("--task", "-t", help=_TASKS_HELP + " Or stsb-embed: STS-B by the cosine similarity of sentence embeddings, no head (Spearman x 100). Default for a run: its task.", show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help=_DATA_HELP + " Default for a run: its data.", show_default=False)] = None,
    split: Annotated[Optional[str], typer.Option(help="Split to evaluate (default: dev; MNLI: dev_matched).", show_default=False)] = None,
    max_eval_samples: _MaxEval = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write the result to this JSON file (default: PATH/eval.json for a run).", show_default=False)
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Evaluation batch size (default: the run's, else 64).", show_default=False)] = None,
    bf16: Annotated[
        Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: the run's setting).", show_default=False)
    ] = None,
    max_seq_length: Annotated[Optional[int], typer.Option(help="Tokenizer truncation (default: the run's, else 128).", show_default=False)] = None,
) -> None:
    """Evaluate a run or a model on a task; prints a table and writes eval.json.

    Example: compactbert eval runs/sst2 --split dev
    """
    from . import api
    from .workflows.evaluate import result_file

    result = api.evaluate(
        path, task=task, data=data, split=split, max_eval_samples=max_eval_samples, out=out,
        batch_size=batch_size, bf16=bf16, max_seq_length=max_seq_length,
    )
    _print_eval(result, path)
    written = result_file(path, task, out)
    if written is not None:
        print(f"wrote {written}")


def _print_eval(result: dict, what: str) -> None:
    """A small table: one row per metric."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{what}: {result['task']} {result['split']} (n={result['n']})", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    Console(soft_wrap=True).print(table)


# --------------------------------------------------------------------------------------------------
# compress / size / recipe


@app.command(no_args_is_help=True)
def compress(
    recipe: Annotated[str, typer.Argument(help="Recipe YAML file, or the name of a ready recipe (xtc-binary, int8-qat, ...).", show_default=False)],
    out: _RunOut,
    teacher: Annotated[Optional[str], typer.Option("--teacher", help="Teacher: a fine-tuned finetune run directory or model folder (the student starts as its copy unless --model is given). For --task corpus: the dense model to distil from (default: --model itself).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Where the student starts, when not a copy of --teacher: a model folder, minilm-l6, or a run directory such as an upstream run (its masks and quantizers are kept, with a new task head).", show_default=False)] = None,
    task: Annotated[str, typer.Option("--task", "-t", help=_TASKS_HELP + " Or corpus: label-free upstream compression on the sentences of --data (general-en, embedded, or a .txt/.jsonl file) by distillation from the dense model.")] = D.TASK,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help=_DATA_HELP + " For --task corpus: general-en (default) or a .txt / .jsonl file.", show_default=False)] = None,
    eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="--task corpus: STS-B data (e.g. ../shared/data/glue) to score the sentence embeddings on (Spearman of cosines); without it, only the held-out corpus cosine to the teacher.", show_default=False)] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a recipe key, KEY=VALUE (e.g. stages.0.epochs=1); repeatable.", show_default=False),
    ] = None,
    max_train_samples: _MaxTrain = None,
    max_eval_samples: _MaxEval = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out where it stopped.")] = False,
    overwrite: _Overwrite = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Compress a fine-tuned teacher with a recipe: leaves OUT/model, eval.json and size.json.

    Example: compactbert compress recipes/xtc-binary.yaml --teacher runs/sst2 --task sst2 --data ../shared/data/glue --out runs/sst2-w1a8 --set stages.0.epochs=1

    Upstream (label-free, on a corpus), then a task with the mask locked:
    compactbert compress pofa-upstream --model minilm-l6 --task corpus --eval-data ../shared/data/glue --out runs/up;
    compactbert compress pofa-downstream --model runs/up --teacher runs/sst2 --task sst2 --data ../shared/data/glue --out runs/sst2-pofa
    """
    from . import api

    run = api.compress(
        recipe, teacher, task, out, data=data, overrides=set_ or [], max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples, resume=resume, overwrite=overwrite, progress=progress, model=model,
        eval_data=eval_data,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        _print_eval(json.loads((run / api.EVAL_FILE).read_text()), f"{run}/model")
        report = json.loads((run / "size.json").read_text())
        print(
            f"size: {report['compressed_bytes']:,} bytes packed vs {report['dense_fp32_bytes']:,} dense fp32 "
            f"({report['ratio']:.1f}x smaller)"
        )
        print(f"run directory: {run}")


@app.command(no_args_is_help=True)
def size(
    path: Annotated[str, typer.Argument(help="A run directory or a model folder.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write size.json here (default: PATH/size.json for a run).", show_default=False)] = None,
    all_tensors: Annotated[bool, typer.Option("--all/--compressed-only", help="List every tensor, or only the compressed ones.")] = True,
) -> None:
    """Bytes the model takes stored packed, tensor by tensor (embeddings included); writes size.json.

    Example: compactbert size runs/sst2-w1a8
    """
    from . import api
    from .fileio import check_output_file
    from .size import format_size_table

    if out is not None:
        check_output_file(out)
    report = api.size(path, out=out)
    print(format_size_table(report, only_compressed=not all_tensors))


recipe_app = typer.Typer(help="Work with recipes.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


@recipe_app.command("check", no_args_is_help=True)
def recipe_check(
    file: Annotated[str, typer.Argument(help="Recipe YAML file or ready-recipe name.", show_default=False)],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override KEY=VALUE; repeatable.", show_default=False)] = None,
) -> None:
    """Validate a recipe and print what it will do, stage by stage.

    Example: compactbert recipe check recipes/xtc-layer-reduction-binary.yaml
    """
    from . import api

    rec = api.recipe_check(file, overrides=set_ or [])
    print(rec.describe())
    print("recipe OK")


# --------------------------------------------------------------------------------------------------
# export / bench / report


@app.command(no_args_is_help=True)
def export(
    path: Annotated[str, typer.Argument(help="A finetune/compress run directory or a model folder.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write.", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="packed (bit-packed, pruned structure removed), onnx (FP32 ONNX) or sentence-transformers (a folder SentenceTransformer(DIR) loads: dense FP32 safetensors, pooling config, FP32/FP16/int8 ONNX; not small).")] = "packed",
    prune_vocab: Annotated[bool, typer.Option("--prune-vocab", help="Keep only embedding rows of tokens in the task data (+ special tokens).")] = False,
    task: Annotated[Optional[str], typer.Option("--task", "-t", help="Task for --prune-vocab (default: the run's).", show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Data for --prune-vocab (default: the run's).", show_default=False)] = None,
    vocab_from: Annotated[str, typer.Option("--vocab-from", help="With --prune-vocab: the splits whose tokens are kept: all (train + dev) or train (then the dev metric measures the pruning on unseen tokens).")] = "all",
    unseen_tokens: Annotated[str, typer.Option("--unseen-tokens", help="With --prune-vocab: what a token not kept reads as: unk or nearest (the kept token with the closest embedding).")] = "unk",
    max_positions: Annotated[Optional[int], typer.Option(help="Keep only the first N position embeddings (longer inputs are refused).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out as a whole even if it holds other files (never the model being exported).")] = False,
) -> None:
    """Export a model: a packed directory (small on disk, fast with compactbert.load) or ONNX.

    --out must be new, empty or an earlier export of the same format (it is replaced); anything
    else needs --overwrite.

    Example: compactbert export runs/sst2-w1a8 --out packed/sst2-w1a8
    """
    from . import api

    target = api.export(path, out, format=format, prune_vocab=prune_vocab, task=task, data=data, max_positions=max_positions,
                        overwrite=overwrite, vocab_from=vocab_from, unseen_tokens=unseen_tokens)
    total = sum(f.stat().st_size for f in Path(target).rglob("*") if f.is_file())
    print(f"wrote {target} ({total:,} bytes on disk)")


@app.command(no_args_is_help=True)
def bench(
    paths: Annotated[list[str], typer.Argument(help="Packed directories (or ONNX / model folders) to measure.", show_default=False)],
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="The FP32 teacher (run directory or model folder): measured in PyTorch FP32/bf16, ONNX Runtime int8, OpenVINO (pip install 'compactbert[bench]') and compactbert's runtime.", show_default=False)] = None,
    task: Annotated[Optional[str], typer.Option("--task", "-t", help="Also measure accuracy on this task's dev set.", show_default=False)] = None,
    data: _Data = None,
    threads: Annotated[int, typer.Option("--threads", help="Threads for every runtime.")] = D.THREADS,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="bench.json path (default: FIRST_PATH/bench.json).", show_default=False)] = None,
    n_latency: Annotated[int, typer.Option(help="Timed batch-1 runs per model.")] = D.N_LATENCY,
    n_throughput: Annotated[int, typer.Option(help="Timed batch-32 runs per model.")] = D.N_THROUGHPUT,
    max_eval_samples: Annotated[Optional[int], typer.Option(help="Accuracy on a fixed subset of this many dev examples.", show_default=False)] = None,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds: every model once per round; medians and min-max reported.")] = D.BENCH_ROUNDS,
    clock: Annotated[str, typer.Option(help="wall, or cpu (process CPU time, all threads).")] = "wall",
    baselines: Annotated[Optional[str], typer.Option(help="Comma-separated teacher variants (default: torch-fp32,torch-bf16,ort-int8,ort-int8-fused,ov-fp32,ov-default,ov-int8,runtime; 'none' for none).", show_default=False)] = None,
    backends: Annotated[str, typer.Option(help="Run each packed model on these backends: compactbert, onnxruntime, openvino, auto (comma-separated).")] = "compactbert",
) -> None:
    """Latency (batch 1, p50/p90), throughput (batch 32, seq 128), peak memory, bytes on disk and accuracy, side by side, in interleaved rounds.

    Example: compactbert bench packed/sst2-w1a8 --baseline runs/sst2 --task sst2 --data ../shared/data/glue --threads 2
    """
    from . import api

    extra = {}
    if baselines is not None:
        extra["baselines"] = [] if baselines.strip() == "none" else [b.strip() for b in baselines.split(",") if b.strip()]
    api.bench(
        paths, baseline, task=task, data=data, threads=threads, out=out, n_latency=n_latency,
        n_throughput=n_throughput, max_eval_samples=max_eval_samples, rounds=rounds, clock=clock,
        backends=[b.strip() for b in backends.split(",") if b.strip()], **extra,
    )


@app.command(no_args_is_help=True)
def report(
    paths: Annotated[list[str], typer.Argument(help="Run directories, packed directories and bench.json files.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (index.html, PNG plots, report.md).")] = Path("report"),
    title: Annotated[str, typer.Option(help="Title of the report.")] = "compactbert report",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out as a whole even if it holds other files.")] = False,
) -> None:
    """Accuracy x size x latency: a table and plots (PNG + HTML).

    --out must be new, empty or an earlier report (it is replaced); anything else needs --overwrite.

    Example: compactbert report runs/sst2 runs/sst2-w1a8 packed/sst2-w1a8/bench.json --out report
    """
    from . import api

    api.report(paths, out, title=title, overwrite=overwrite)


@app.command(no_args_is_help=True)
def sweep(
    sweep_file: Annotated[str, typer.Argument(help="Sweep YAML: recipes and a grid of --set overrides (see sweeps/).", show_default=False)],
    teacher: Annotated[str, typer.Option("--teacher", help="Fine-tuned teacher: a finetune run directory or a model folder.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep directory to create (or continue with --resume).", show_default=False)],
    task: _Task = D.TASK,
    data: _Data = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep in --out: finished points are skipped, an interrupted one resumes.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check every point, list them with the time estimate, write nothing.")] = False,
    max_points: Annotated[int, typer.Option(min=1, help="Refuse a grid with more points than this.")] = D.SWEEP_MAX_POINTS,
    max_train_samples: _MaxTrain = None,
    max_eval_samples: _MaxEval = None,
    no_bench: Annotated[bool, typer.Option("--no-bench", help="Skip the latency benchmark (size and accuracy only).")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
) -> None:
    """Compress with every point of a grid, export and benchmark each, and report the Pareto front and what to pick.

    Example: compactbert sweep sweeps/combining-compressions.yaml --teacher runs/sst2-teacher --task sst2 --data ../shared/data/glue --out runs/sweep-cc
    """
    from . import api

    result = api.sweep(
        sweep_file, teacher, task, out, data=data, resume=resume, dry_run=dry_run, max_points=max_points,
        max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, bench=not no_bench, progress=progress,
    )
    if dry_run:
        steps = result["estimate"]["steps_per_point"]
        for p in result["points"]:
            print(f"  {p['name']}: {p['recipe']} {' '.join('--set ' + s for s in p['set'])} ({steps[p['name']]:,} steps)")
        print(f"dry run: {len(result['points'])} points checked, nothing written")
        return
    print(f"wrote {Path(out) / 'sweep.json'} and {result['report']['html']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. Returns the exit status."""
    try:
        status = app(args=argv, standalone_mode=False)
        if isinstance(status, int) and not isinstance(status, bool) and status:  # typer >= 0.2x: Ctrl-C returns 130
            if status == 130:
                print("interrupted", file=sys.stderr)
            return status
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:  # click's own usage errors already printed their message
        return e.code if isinstance(e.code, int) else 2
    except Exception as e:  # click usage errors (bad option, missing argument)
        code = _usage_error(e)
        if code is None:
            raise
        return code
    return 0


def _usage_error(e: Exception) -> int | None:
    """Exit status of a click/typer usage error (bad option or value, missing argument), after
    printing it as one line; None for any other exception. Typer >= 0.20 ships its own copy of
    click, whose exceptions are not click's."""
    from .errors import one_line

    aborts: tuple[type, ...] = (typer.Abort,)
    usage: tuple[type, ...] = (typer.TyperException,) if hasattr(typer, "TyperException") else ()
    try:
        import click

        aborts, usage = aborts + (click.exceptions.Abort,), usage + (click.exceptions.ClickException,)
    except ImportError:  # typer >= 0.20 does not need click
        pass
    if isinstance(e, aborts):
        return 1
    if not isinstance(e, usage):
        return None
    if type(e).__name__ == "NoArgsIsHelpError":  # the help has been printed already
        return 2
    names, ctx = [], getattr(e, "ctx", None)
    while ctx is not None and ctx.parent is not None:  # the subcommand's path, without the program name
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    where = f"{' '.join(names)}: " if names else ""
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    print(f"error: {where}{one_line(message)} (see --help)", file=sys.stderr)
    code = getattr(e, "exit_code", 2)
    return code if isinstance(code, int) and code else 2


def _entry() -> None:  # pragma: no cover - thin wrapper for `python -m compactbert`
    sys.exit(main())
