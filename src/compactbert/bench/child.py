"""Entry point of a benchmark child process: ``python -m compactbert.bench.child JOB.json``.

Each model is measured in a fresh process so that its peak memory is its own (imports + load +
inference) and one model's allocator state or thread pools cannot slow the next. The job file says
what to run; the child writes ``job["result"]`` (JSON) and ``job["logits"]`` (``.npy``, when there
are accuracy batches). A user error (say, a tampered packed directory) is written as
``{"user_error": message}`` with exit status 2; anything else as ``{"error": ...}`` with status 1.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def run_job(job: dict) -> dict:
    """Measure the model described by ``job`` (the keys :func:`compactbert.bench.core` writes)."""
    import numpy as np

    from .inputs import load_inputs
    from .measure import measure_runner
    from .runners import build_runner

    timing, evals = load_inputs(job["inputs"])
    if not job.get("logits"):
        evals = []  # a later round: timing only (the first round scored the model)
    result, logits = measure_runner(
        lambda: build_runner(job["kind"], job["path"], job.get("threads")),
        timing,
        evals,
        batch_size=int(job["batch_size"]),
        n_warmup=int(job["n_warmup"]),
        n_latency=int(job["n_latency"]),
        n_throughput=int(job["n_throughput"]),
        clock=job.get("clock", "wall"),
    )
    if logits is not None and job.get("logits"):
        np.save(job["logits"], logits)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    out = Path(job["result"])
    try:
        result = run_job(job)
        status = 0
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
        from ..errors import UserError

        if isinstance(e, UserError):
            result, status = {"user_error": str(e)}, 2
        else:
            traceback.print_exc()
            result, status = {"error": f"{type(e).__name__}: {e}"}, 1
    out.write_text(json.dumps(result))
    return status


if __name__ == "__main__":
    sys.exit(main())
