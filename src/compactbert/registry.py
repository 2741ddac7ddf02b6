"""A registry of compression methods: ``@register_method("ternary")`` on a Method subclass.

The recipe schema is built from this registry, so a new method needs no other wiring. The registry
knows nothing of the methods themselves: :func:`compactbert.methods.method_types` imports the
built-in ones (which register here) and returns them with any others registered so far.
"""

from __future__ import annotations

from typing import Callable, TypeVar

_METHODS: dict[str, type] = {}
M = TypeVar("M", bound=type)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator registering a Method under ``name`` (the recipe's ``type:``)."""

    def deco(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method type {name!r} is already registered by {_METHODS[name].__qualname__}")
        _METHODS[name] = cls
        cls._registry_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def registered_methods() -> dict[str, type]:
    """The methods registered so far, by name (see :func:`compactbert.methods.method_types`)."""
    return dict(_METHODS)
