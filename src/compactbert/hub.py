"""Asking the Hugging Face hub once, quickly, before transformers or datasets ask it their way.

Without a network both libraries retry for half a minute and print a dozen lines of retries before
they fail (or fall back to their cache). :func:`hub_problem` makes one request with a timeout, so a
model or dataset that is neither local nor cached fails at once with one line, and a cached one is
loaded under :func:`offline_mode` instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

HUB_TIMEOUT_S = 10.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or at import."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(f.strip().upper() in _TRUE for f in flags)


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` (now or at import), else https://huggingface.co."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def hub_problem(repo_id: str, repo_type: str = "model") -> str | None:
    """Why the hub cannot serve ``repo_id`` (unreachable, no such repository), or None when it may.

    One request, no retries. Gated or private repositories, rate limits and server errors give None:
    the real download decides (and reports) those.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info(repo_id, timeout=HUB_TIMEOUT_S)
    except RepositoryNotFoundError:
        return f"the hub ({endpoint}) has no {repo_type} of that name (or it is private)"
    except HfHubHTTPError:
        return None
    except Exception as e:  # noqa: BLE001 - network errors come from several libraries
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"the hub ({endpoint}) cannot be reached ({first})"
    return None


@contextmanager
def offline_mode() -> Iterator[None]:
    """Within the block, huggingface_hub and datasets use their caches only (no requests, no retries)."""
    from huggingface_hub import constants

    saved = [(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)]
    try:
        import datasets.config as datasets_config

        saved.append((datasets_config, "HF_HUB_OFFLINE", datasets_config.HF_HUB_OFFLINE))
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    try:
        for module, name, _ in saved:
            setattr(module, name, True)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
