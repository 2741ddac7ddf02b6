"""The default of every setting that more than one module (or the CLI and the API) offers.

Each is defined here once and imported where it is used: the command line's option defaults, the
API's keyword defaults, the training config and the recipe schema all read these, so they cannot
drift apart. (This module imports nothing, so anything may import it.)
"""

from __future__ import annotations

# ---- models and data
MODEL = "minilm-l6"  # the embedded all-MiniLM-L6-v2 (offline)
TASK = "rt"  # the embedded Rotten Tomatoes corpus (offline)
MAX_SEQ_LENGTH = 128  # tokenizer truncation: training, evaluation, recipes, runtime helpers
# Examples kept by --max-train-samples / --max-eval-samples: one fixed subset whatever the seed, so
# runs with different seeds (and later compression runs) see the same data.
SUBSET_SEED = 0

# ---- fine-tuning (finetune's options and TrainConfig)
EPOCHS = 3.0
LR = 5e-5
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64
WEIGHT_DECAY = 0.01
WARMUP_RATIO = 0.1
MAX_GRAD_NORM = 1.0
SEED = 42

# ---- packed size and export
PACKED_FLOAT_BITS = 16  # tensors without a quantizer: fp16 in the packed format (and in `size`)

# ---- bench
THREADS = 2  # intra-op threads of every benchmarked runtime
BENCH_SEQ_LEN = MAX_SEQ_LENGTH  # tokens per timing row
BENCH_BATCH_SIZE = 32  # rows of the throughput batch
BENCH_ROUNDS = 3  # interleaved rounds: every model once per round, median and min-max reported
N_WARMUP = 3
N_LATENCY = 50
N_THROUGHPUT = 10

# ---- sweep
SWEEP_MAX_POINTS = 64  # --max-points: the largest grid a sweep runs without being told
