"""A registry of compression methods: ``@register_method("ternary")`` on a Method subclass.

The recipe schema is built from this registry, so a new method needs no other wiring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, TypeVar

if TYPE_CHECKING:
    from .methods.base import Method

_METHODS: dict[str, type["Method"]] = {}
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


def method_types() -> dict[str, type["Method"]]:
    """All registered methods by name (importing the built-in method modules first)."""
    from . import methods  # noqa: F401  (registers the built-ins)

    return dict(_METHODS)
