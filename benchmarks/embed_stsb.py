"""STS-B by cosine similarity of sentence embeddings (``compactbert eval --task stsb-embed``), no training.

Scores all-MiniLM-L6-v2 (the embedded ``minilm-l6``) on the full STS-B dev and test sets
(``../shared/data/glue/STS-B``; this copy's test file has gold scores) through each path
``eval --task stsb-embed`` takes: the Hugging Face model in float32, and the model packed by
``compactbert export minilm-l6`` (a headless embedding model with fp16 weights) in the runtime's
fp32 and bf16 paths. Spearman x 100 is the number sentence-transformers reports (its
``EmbeddingSimilarityEvaluator``); 82.03 (test) and 86.72 (dev) are the numbers to reproduce.

The result replaces the ``embed_stsb`` section of ``benchmarks/RESULTS.md`` (other sections kept).

Usage (from the repository root)::

    .venv/bin/python benchmarks/embed_stsb.py                      # ~15 min on 2 busy cores
    .venv/bin/python benchmarks/embed_stsb.py --max-eval-samples 64 --results ''   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from finetune_sst2 import cpu_name, publish  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "embed_stsb"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GLUE root or STS-B folder (default: %(default)s)")
    p.add_argument("--max-eval-samples", type=int, default=None, help="score a subset (smoke run)")
    p.add_argument("--results", default=str(RESULTS), help="markdown file to update ('' for none)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from compactbert.embedding.evaluate import evaluate_embedding
    from compactbert.workflows.export import export

    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        packed = export("minilm-l6", Path(tmp) / "packed")
        size = sum(f.stat().st_size for f in packed.rglob("*") if f.is_file())
        paths = [("Hugging Face model, float32", "minilm-l6", None)]
        paths += [(f"packed (fp16 weights), runtime {dt}", str(packed), dt) for dt in ("fp32", "bf16")]
        for label, path, dtype in paths:
            scores = {}
            for split in ("test", "dev"):
                t0 = time.perf_counter()
                r = evaluate_embedding(path, "stsb-embed", args.data, split, args.max_eval_samples,
                                       dtype=dtype or "auto")
                m = r["metrics"]
                scores[split] = (m["spearman_cosine"], r["n"], time.perf_counter() - t0, m["retrieval_mrr@10"])
                print(f"{label}: {split} spearman {scores[split][0]:.2f} (n={r['n']}, {scores[split][2]:.0f}s)",
                      flush=True)
            rows.append((label, scores))
    body = [
        "## Sentence embeddings: STS-B by cosine similarity (`benchmarks/embed_stsb.py`)",
        "",
        f"{date.today().isoformat()}, {cpu_name()}, 2 threads. all-MiniLM-L6-v2 (`minilm-l6`), mean pooling "
        "over the attention mask, L2-normalised (its sentence-transformers config), no training. Spearman x 100 "
        "of the cosine similarities with the gold scores; the numbers to reproduce are 82.03 (test) and 86.72 (dev).",
        f"The packed model is `compactbert export minilm-l6` ({size:,} bytes on disk). Retrieval: each pair with "
        "a gold score >= 4 is a query (sentence 1) whose answer is its sentence 2 among all the split's distinct "
        "second sentences (MRR@10 x 100; no other retrieval set is available offline).",
        "",
        "| model | STS-B test | STS-B dev | retrieval MRR@10 test | retrieval MRR@10 dev |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, s in rows:
        body.append(f"| {label} | {s['test'][0]:.2f} | {s['dev'][0]:.2f} | {s['test'][3]:.2f} | {s['dev'][3]:.2f} |")
    body += ["", "Reproduce one number: `compactbert eval minilm-l6 --task stsb-embed --data ../shared/data/glue "
             "--split test` (and `compactbert eval PACKED_DIR --task stsb-embed ...`)."]
    if args.max_eval_samples:
        body.insert(2, f"SMOKE RUN: {args.max_eval_samples} pairs per split.")
    publish("\n".join(body), args.results or None, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
