"""The verbs of ``import compactbert`` stay the verbs when their subpackage of the same name has been
imported (``compactbert.bench`` is the verb and the package :mod:`compactbert.bench`)."""

from __future__ import annotations

import importlib

import pytest

import compactbert
from compactbert import api

# each verb, and a submodule of the same name whose import puts a module at compactbert.<verb>
SHADOWED = {"bench": "compactbert.bench.plan", "export": "compactbert.export.pack",
            "report": "compactbert.report.core", "size": "compactbert.size"}


@pytest.mark.parametrize("verb", sorted(SHADOWED))
def test_verb_is_callable_after_its_subpackage_is_imported(verb, monkeypatch):
    importlib.import_module(SHADOWED[verb])
    seen = []
    monkeypatch.setattr(api, verb, lambda *a, **k: seen.append((a, k)) or "ran")
    assert getattr(compactbert, verb)("x", out="y") == "ran"
    assert seen == [(("x",), {"out": "y"})]


def test_size_verb_through_the_module_gives_the_verbs_own_error(tmp_path):
    importlib.import_module("compactbert.size")
    from compactbert.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        compactbert.size(str(tmp_path / "missing"))
