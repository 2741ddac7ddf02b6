"""The packed format's public names, kept here for existing imports; the format lives in
:mod:`compactbert.export.format` (one module per step: layout, weight, remove, vocab, encode,
write, export, read)."""

from .format import *  # noqa: F401,F403
from .format import __all__  # noqa: F401
