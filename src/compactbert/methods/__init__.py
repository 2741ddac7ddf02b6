"""Compression methods. Importing this package registers the built-in ones."""

from .base import Method, TrainState

__all__ = ["Method", "TrainState"]
