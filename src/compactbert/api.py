"""The verbs of the command line as Python functions. The CLI only parses arguments and calls these.

Example:
    >>> import compactbert
    >>> run = compactbert.finetune("minilm-l6", task="rt", out="runs/teacher", epochs=1)  # doctest: +SKIP
    >>> compactbert.evaluate(run)["metrics"]                                               # doctest: +SKIP
    {'accuracy': 0.78}

This module only re-exports: each verb's workflow is a module of :mod:`compactbert.workflows`
(``finetune``, ``compress``, ``evaluate``, ``size``, ``export``, ``bench``, ``sweep``), ``report`` is
:mod:`compactbert.report.core`, what a path is is :mod:`compactbert.runs`, and model loading is
:mod:`compactbert.loading`. Importing it stays cheap: the heavy libraries load inside the verbs.
"""

from __future__ import annotations

from .defaults import PACKED_FLOAT_BITS, SUBSET_SEED
from .loading import load_for_task, load_saved, quiet_transformers
from .report.core import report
from .runs import CONFIG_FILE, EVAL_FILE, RUN_FILE, is_run_dir, model_source, open_path, read_run
from .workflows.bench import bench
from .workflows.compress import compress, find_recipe, recipe_check
from .workflows.evaluate import evaluate, packed_logits
from .workflows.export import export, load
from .workflows.finetune import finetune
from .workflows.rundir import RUN_ARTIFACTS, check_output_dir, init_run_dir, start_run
from .workflows.size import packed_extras, packed_size_report, size
from .workflows.sweep import sweep

__all__ = [
    "finetune", "compress", "evaluate", "size", "export", "load", "bench", "report", "sweep", "recipe_check", "find_recipe",
    "packed_logits", "packed_size_report", "packed_extras", "load_for_task", "load_saved", "quiet_transformers",
    "open_path", "is_run_dir", "read_run", "model_source", "check_output_dir", "init_run_dir", "start_run",
    "RUN_FILE", "CONFIG_FILE", "EVAL_FILE", "RUN_ARTIFACTS", "SUBSET_SEED", "PACKED_FLOAT_BITS",
]
