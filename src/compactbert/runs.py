"""What a path given to compactbert is. Every verb opens its paths here, so the question is decided once.

:func:`open_path` looks at a path and returns a :class:`Target` whose ``kind`` is one of:

* ``run``: a run directory of ``finetune`` or ``compress`` (``run.json``); its model is ``model/``;
* ``packed``: a packed directory written by ``compactbert export`` (``manifest.json``; or a
  packed ``config.json`` without it: a packed directory whose manifest is missing);
* ``onnx``: an ONNX export: a folder holding ``model.onnx``, or a ``.onnx`` file;
* ``model``: a Hugging Face model folder (``config.json``);
* ``name``: nothing on disk: a hub id or the alias ``minilm-l6`` (or a path that does not exist,
  which :func:`compactbert.models.resolve_model` then refuses);
* ``other``: something on disk that is none of the above (a file, a folder without those files).

The markers are checked in that order (a packed directory also has a ``config.json``, an ONNX
export too). Example::

    >>> open_path("runs/teacher").kind       # doctest: +SKIP
    'run'
    >>> open_path("runs/teacher").model_dir()  # doctest: +SKIP
    PosixPath('runs/teacher/model')
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .fileio import path_exists, read_user_json, user_path

# What a run directory holds (see compactbert.workflows.finetune and .compress).
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
RECIPE_FILE = "recipe.yaml"
EVAL_FILE = "eval.json"
SIZE_FILE = "size.json"
MODEL_DIR = "model"
# The files that tell the other kinds apart.
MANIFEST_FILE = "manifest.json"  # a packed directory (compactbert.export.pack)
ONNX_FILE = "model.onnx"  # an ONNX export (compactbert.export.onnx)
MODEL_CONFIG_FILE = "config.json"  # a Hugging Face model folder
PACKED_FORMAT = "compactbert-packed"  # a packed directory's config.json "format" (compactbert.export.format)

RUN, PACKED, ONNX, MODEL, NAME, OTHER = "run", "packed", "onnx", "model", "name", "other"
KINDS = (RUN, PACKED, ONNX, MODEL, NAME, OTHER)
_WHAT = {
    RUN: "a run directory", PACKED: "a packed directory (compactbert export)", ONNX: "an ONNX folder or file",
    MODEL: "a model folder", NAME: "a hub id or the alias minilm-l6",
}


@dataclass(frozen=True)
class Target:
    """A path as given on the command line, and what it is.

    Attributes:
        given: the path (or name) as the user wrote it; used in messages and to resolve names.
        path: ``given`` with ``~`` expanded.
        kind: one of :data:`KINDS`.
    """

    given: str
    path: Path
    kind: str

    def model_dir(self) -> Path:
        """The folder holding the model: a run's ``model/``, else the folder (or ``.onnx`` file) itself.

        Raises:
            UserError: a run without a model yet, or a name (nothing on disk).
        """
        if self.kind == RUN:
            model = self.path / MODEL_DIR
            if not (model / MODEL_CONFIG_FILE).is_file():
                raise UserError(
                    f"run {self.given!r} has no model/ yet (it has not finished an evaluation); resume or rerun it"
                )
            return model
        if self.kind == NAME:
            raise UserError(f"{self.given!r} does not exist; expected a local folder")
        return self.path

    def model_source(self) -> str:
        """What :func:`compactbert.models.resolve_model` should load: a run's ``model/``, else ``given``."""
        return str(self.model_dir()) if self.kind == RUN else self.given

    def run_info(self) -> dict[str, Any]:
        """``run.json`` and ``config.yaml`` of a run (:func:`read_run`); ``{"config": {}}`` otherwise."""
        return read_run(self.path) if self.kind == RUN else {"config": {}}

    def require(self, *kinds: str, what: str = "path") -> "Target":
        """This target if its kind is one of ``kinds``; else a UserError naming what was expected."""
        if self.kind in kinds:
            return self
        expected = ", ".join(_WHAT[k] for k in kinds if k in _WHAT)
        if self.kind == NAME:
            raise UserError(f"{what} {self.given!r} does not exist; expected {expected}")
        raise UserError(f"{what} {self.given!r} is not {expected.replace(', ', ' or ')}")


def kind_of(path: Path) -> str:
    """The kind of an existing or missing ``path`` (see the module docstring)."""
    if not path_exists(path):  # also a name the OS refuses (too long): not a local path
        return NAME
    if path.is_file():
        return ONNX if path.suffix == ".onnx" else OTHER
    if not path.is_dir():
        return NAME
    for marker, kind in ((RUN_FILE, RUN), (MANIFEST_FILE, PACKED), (ONNX_FILE, ONNX), (MODEL_CONFIG_FILE, MODEL)):
        if (path / marker).is_file():
            return PACKED if kind == MODEL and packed_config(path / marker) else kind
    return OTHER


def packed_config(config_file: Path) -> bool:
    """Whether ``config_file`` is a packed directory's ``config.json`` (its ``format`` says so): a
    folder holding one but no ``manifest.json`` is a packed directory whose manifest is missing,
    not a Hugging Face model folder."""
    try:
        if config_file.stat().st_size > 1024 * 1024:
            return False
        cfg = json.loads(config_file.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(cfg, dict) and cfg.get("format") == PACKED_FORMAT


def open_path(path: str | os.PathLike) -> Target:
    """Look at ``path`` and say what it is (reads nothing but the directory's marker files)."""
    given = str(path)
    p = user_path(given)
    return Target(given, p, kind_of(p))


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a compactbert run directory (it has ``run.json``)."""
    return open_path(path).kind == RUN


def model_source(model: str | os.PathLike) -> str:
    """A model folder, hub id or alias for ``model``; a run directory stands for its ``model/``."""
    return open_path(model).model_source()


MAX_RUN_JSON_BYTES = 16 * 1024 * 1024  # ours are a few kB


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` and ``config.yaml`` of a run directory as one dict (``{"config": {...}, ...}``).

    ``config.yaml`` is read as plain YAML (no aliases or tags: :func:`compactbert.recipe.load_plain_yaml`).
    """
    from .recipe import load_plain_yaml

    path = Path(path)
    info = read_user_json(path / RUN_FILE, "run file", MAX_RUN_JSON_BYTES)
    if not isinstance(info, dict):
        raise UserError(f"{path / RUN_FILE} is not a JSON object; is {str(path)!r} a compactbert run?")
    cfg_path = path / CONFIG_FILE
    if cfg_path.is_file():
        try:
            text = cfg_path.read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {cfg_path}: {e}") from None
        cfg = load_plain_yaml(text, str(cfg_path))[0] or {}
        if not isinstance(cfg, dict):
            raise UserError(f"{cfg_path} is not a mapping of settings")
        info["config"] = cfg
    info.setdefault("config", {})
    return info


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor (absolute)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p
