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


def callable_verb(module_name: str, verb: str) -> None:
    """Make the module ``module_name`` callable as the verb ``compactbert.<verb>``.

    ``compactbert.bench`` is both a verb (:func:`compactbert.api.bench`) and a subpackage; once the
    subpackage is imported, Python puts the module where the verb was. Calling the module runs the
    verb, so ``compactbert.bench(...)`` works whatever was imported before.
    """
    import sys
    import types

    api = module_name.split(".")[0] + ".api"  # where the verbs live, imported only when one is called

    class VerbModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(importlib.import_module(api), verb)(*args, **kwargs)

    sys.modules[module_name].__class__ = VerbModule
