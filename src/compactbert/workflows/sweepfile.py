"""Sweep files: which recipes, and which grid of ``--set`` overrides, a ``compactbert sweep`` runs.

A sweep file is plain YAML (the same rules as a recipe: no anchors, tags or huge numbers)::

    description: "int8 QAT, and magnitude pruning at three sparsities"
    set:                                  # overrides of every point (optional)
      stages.0.epochs: 1
    recipes:
      - recipe: int8-qat                  # a ready recipe, a recipe file (relative to this file),
        name: qat                         #   or an inline recipe mapping (then 'name' is needed)
      - recipe: magnitude-pruning
        name: mp
        set: {stages.0.methods.1.alpha: 1.0}       # overrides of this entry's points
        grid:                                      # every combination of these values
          stages.0.methods.0.sparsity: [0.5, 0.7, 0.9]

Each entry gives one point per combination of its grid values (one point without a grid). A
point's overrides are, in order, the sweep's ``set``, the entry's ``set`` and its grid values; they
are ``--set KEY=VALUE`` strings, so ``compactbert compress RECIPE --set ...`` reproduces a point.
Points are named ``ENTRY-LABELVALUE-...`` (``mp-sparsity0.5``), where a label is the last part of
the grid key (the whole key when two keys of the entry end alike): the same file always gives the
same names in the same order.

:func:`load_sweep` reads the file, expands the grid (refusing one larger than ``max_points``
before expanding it) and validates every point's recipe with its overrides through the code
``compactbert recipe check`` uses: any bad point fails the whole sweep with one line.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import defaults as D
from ..errors import UserError, did_you_mean, short_repr
from ..fileio import read_user_text

__all__ = ["Point", "SweepEntry", "SweepFile", "SweepPlan", "expand", "format_set", "load_sweep", "MAX_POINTS"]

MAX_POINTS = D.SWEEP_MAX_POINTS  # the default --max-points guard
MAX_SWEEP_BYTES = 256 * 1024
MAX_NAME_CHARS = 100
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepEntry(BaseModel):
    """One recipe of a sweep, with its own overrides and its grid."""

    model_config = ConfigDict(extra="forbid")
    recipe: str | dict[str, Any] = Field(description="a ready recipe name, a recipe file or an inline recipe")
    name: str | None = Field(None, min_length=1, max_length=60, pattern=NAME_RE.pattern)
    set: dict[str, Any] = Field(default_factory=dict, description="KEY: VALUE overrides of this entry's points")
    grid: dict[str, list[Any]] | None = Field(None, description="KEY: [values]; one point per combination")


class SweepFile(BaseModel):
    """A whole sweep file."""

    model_config = ConfigDict(extra="forbid")
    description: str | None = None
    set: dict[str, Any] = Field(default_factory=dict, description="KEY: VALUE overrides of every point")
    recipes: list[SweepEntry] = Field(description="the recipes to sweep over")


@dataclass(frozen=True)
class Point:
    """One point of a sweep: a recipe and its ``--set`` overrides, to run as one ``compress``.

    Attributes:
        name: unique within the sweep; the folder of its run (``points/NAME``).
        entry: the index of its entry in ``recipes:``.
        entry_name: that entry's name (what the names of its points start with).
        recipe_ref: the recipe as the sweep file names it (a ready name or path), or ``"inline"``.
        overrides: the ``KEY=VALUE`` strings, in the order they are applied.
        grid: this point's grid values (``{key: value}``), in the grid's key order.
        recipe: the validated :class:`compactbert.recipe.Recipe` with the overrides applied.
    """

    name: str
    entry: int
    entry_name: str
    recipe_ref: str
    overrides: tuple[str, ...]
    grid: dict[str, Any] = field(default_factory=dict)
    recipe: Any = None


@dataclass
class SweepPlan:
    """A loaded sweep file: its points in order, validated."""

    source: Path
    description: str | None
    points: list[Point]


def format_set(key: str, value: Any) -> str:
    """``KEY=VALUE`` with ``value`` written as flow YAML, which ``--set`` reads back as the same value.

    Example:
        >>> format_set("stages.0.methods.0.keep", [1, 3, 5])
        'stages.0.methods.0.keep=[1, 3, 5]'
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    if text.endswith("\n..."):  # a scalar document's end marker
        text = text[: -len("\n...")].strip()
    return f"{key}={text}"


def _value_label(value: Any) -> str:
    """A grid value as a name fragment: ``0.5``, ``1_3_5``, ``true``."""
    text = format_set("k", value).split("=", 1)[1]
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def _key_labels(keys: list[str]) -> dict[str, str]:
    """The last part of each grid key, or the whole key where two keys end alike."""
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    counts: dict[str, int] = {}
    for v in last.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (last[k] if counts[last[k]] == 1 else k) for k in keys}


def _point_name(prefix: str, labels: dict[str, str], values: dict[str, Any], overrides: tuple[str, ...]) -> str:
    name = "-".join([prefix, *(f"{labels[k]}{_value_label(v)}" for k, v in values.items())])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if len(name) > MAX_NAME_CHARS:  # still unique: a hash of what makes the point
        digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME_CHARS - 9]}-{digest}"
    return name


def _entry_name(entry: SweepEntry, i: int, where: str) -> str:
    if entry.name is not None:
        return entry.name
    if isinstance(entry.recipe, dict):
        raise UserError(f"{where}: recipes.{i}: an inline recipe needs a 'name' (letters, digits, '.', '_', '-')")
    stem = Path(entry.recipe).name.removesuffix(".yaml").removesuffix(".yml")
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")
    return stem[:60] or f"entry{i}"


def grid_size(sweep: SweepFile) -> int:
    """How many points the sweep expands to (computed without expanding it)."""
    return sum(math.prod(len(v) for v in (e.grid or {}).values()) for e in sweep.recipes)


def expand(sweep: SweepFile, where: str = "<sweep>") -> list[Point]:
    """The points of ``sweep`` in file order (entries, then grid combinations, the last key fastest),
    without recipes (see :func:`load_sweep`)."""
    common = tuple(format_set(k, v) for k, v in sweep.set.items())
    points: list[Point] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(sweep.recipes):
        prefix = _entry_name(entry, i, where)
        fixed = common + tuple(format_set(k, v) for k, v in entry.set.items())
        keys = list((entry.grid or {}).keys())
        labels = _key_labels(keys)
        ref = "inline" if isinstance(entry.recipe, dict) else entry.recipe
        for combo in itertools.product(*((entry.grid or {})[k] for k in keys)):
            values = dict(zip(keys, combo))
            overrides = fixed + tuple(format_set(k, v) for k, v in values.items())
            name = _point_name(prefix, labels, values, overrides)
            if name in seen:
                raise UserError(
                    f"{where}: two points are named {name!r} (recipes.{seen[name]} and recipes.{i}); "
                    "give the entries different 'name:' values"
                )
            seen[name] = i
            points.append(Point(name, i, prefix, ref, overrides, values))
    return points


def _validation_error(e: ValidationError, where: str) -> UserError:
    """One line from the first pydantic error of a sweep file."""
    err = e.errors()[0]
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        owner = SweepEntry if len(loc) >= 3 and loc[0] == "recipes" else SweepFile
        valid = sorted(owner.model_fields)
        return UserError(f"{where}: {path}: unknown key{did_you_mean(str(loc[-1]), valid)}; valid keys: {', '.join(valid)}")
    got = f" (got {short_repr(err.get('input'))})" if err["type"] != "missing" else ""
    return UserError(f"{where}: {path}: {err['msg']}{got}")


def parse_sweep(text: str, where: str) -> SweepFile:
    """Validate the text of a sweep file (see the module docstring)."""
    from ..recipe import load_plain_yaml

    raw, _ = load_plain_yaml(text, where)
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a sweep file is a mapping with a 'recipes:' list, got {short_repr(raw)}")
    try:
        sweep = SweepFile.model_validate(raw)
    except ValidationError as e:
        raise _validation_error(e, where) from None
    if not sweep.recipes:
        raise UserError(f"{where}: recipes: the list is empty; name at least one recipe to sweep over")
    for i, entry in enumerate(sweep.recipes):
        if entry.grid is not None and not entry.grid:
            raise UserError(f"{where}: recipes.{i}.grid is empty; give KEY: [values], or leave 'grid' out for one point")
        for key, values in (entry.grid or {}).items():
            if not values:
                raise UserError(f"{where}: recipes.{i}.grid.{key}: the list of values is empty; give at least one value")
    return sweep


def recipe_for(entry: SweepEntry, i: int, overrides: list[str], sweep_dir: Path, where: str):
    """The validated recipe of one point: ``recipe_check`` for a name or file (a relative path is
    looked up beside the sweep file first), the same parsing for an inline recipe."""
    from ..recipe import Recipe
    from .compress import recipe_check

    if isinstance(entry.recipe, dict):
        text = yaml.safe_dump(entry.recipe, sort_keys=False)
        return Recipe.from_yaml(text, source=f"{where}: recipes.{i}.recipe", overrides=overrides)
    beside = sweep_dir / entry.recipe
    return recipe_check(beside if beside.is_file() else entry.recipe, overrides=overrides)


def load_sweep(path: str | Path, max_points: int = MAX_POINTS) -> SweepPlan:
    """Read, expand and validate a sweep file.

    Raises:
        UserError: an unreadable or malformed file, an empty grid, more points than
            ``max_points``, two points of the same name, an unknown recipe, or a point whose
            recipe is invalid with its overrides (an override key the recipe does not have, a
            value out of range): one line naming the file, the point and the key.
    """
    from dataclasses import replace

    source = Path(path).expanduser()
    where = str(path)
    sweep = parse_sweep(
        read_user_text(source, "sweep file", MAX_SWEEP_BYTES, "give a YAML file (e.g. sweeps/combining-compressions.yaml)"),
        where,
    )
    n = grid_size(sweep)
    if n > max_points:
        raise UserError(
            f"{where}: the sweep has {n} points, more than --max-points {max_points}; "
            "shrink the grid or raise --max-points"
        )
    points = expand(sweep, where)
    checked = []
    for pt in points:
        entry = sweep.recipes[pt.entry]
        try:
            rec = recipe_for(entry, pt.entry, list(pt.overrides), source.parent, where)
        except UserError as e:
            raise UserError(f"{where}: point {pt.name!r} (recipes.{pt.entry}): {e}") from None
        checked.append(replace(pt, recipe=rec))
    return SweepPlan(source, sweep.description, checked)
