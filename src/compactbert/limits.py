"""Ranges of user settings shared by the CLI, the training config and recipes.

Values outside them are refused before anything is written: they would crash a run midway
(a seed outside numpy's range, an epoch count whose step count overflows) or never finish.
"""

from __future__ import annotations

MAX_SEED = 2**32 - 1  # numpy's and accelerate's set_seed accept 0 .. 2**32 - 1
MAX_EPOCHS = 1_000_000.0
MAX_STEPS = 10**9
