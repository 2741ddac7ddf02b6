"""Export: packed, ONNX and sentence-transformers formats (the verb is :func:`compactbert.api.export`)."""

from ..lazy import callable_verb

callable_verb(__name__, "export")  # compactbert.export(...) is the verb even after this is imported
