"""Lazy exports for package ``__init__`` modules, so importing a package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for a package that re-exports names from its modules lazily.

    ``modules`` maps each module, absolute (``"compactbert.nn.pooling"``) or relative to
    ``package`` (``".tasks"``), to the names it exports; ``__getattr__`` imports that module on
    first use of a name. Other names raise AttributeError as usual.
    """
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(where)
