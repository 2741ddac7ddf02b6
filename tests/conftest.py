"""Shared test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run fastest on one thread, and CI's two cores are shared by two test workers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Teacher-output caches (distillation's ``cache_teacher``) go to a folder of this session, not
    the user's ``~/.cache``."""
    import os

    before = os.environ.get("COMPACTBERT_CACHE")
    os.environ["COMPACTBERT_CACHE"] = str(tmp_path_factory.mktemp("compactbert-cache"))
    yield
    if before is None:
        os.environ.pop("COMPACTBERT_CACHE", None)
    else:
        os.environ["COMPACTBERT_CACHE"] = before
