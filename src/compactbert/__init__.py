"""compactbert: make pre-trained transformer encoders small and fast for a task.

The verbs of the command line are also Python functions (imported lazily so that
``import compactbert`` stays cheap)::

    import compactbert
    run = compactbert.finetune("minilm-l6", task="rt", out="runs/teacher")
    print(compactbert.evaluate("runs/teacher", task="rt")["metrics"])
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = ("finetune", "evaluate", "compress", "export", "load", "bench", "report", "size", "sweep")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'compactbert' has no attribute {name!r}")


__all__ = list(_API) + ["__version__"]
