"""Recipes: YAML files describing a compression run as a list of stages, each with methods.

Example::

    # XTC ternary: W2A8 + one-stage distillation
    stages:
      - name: qat
        epochs: 3
        lr: 5.0e-5
        methods:
          - {type: quantize, weight: ternary, activations: dynamic8, embeddings: true}
          - {type: distillation, temperature: 1.0}

The whole recipe is validated before anything runs: unknown keys, wrong types, unknown method types,
impossible orders (layer reduction after quantization) each give one :class:`UserError` naming the
file, the line and the key path, and what would be valid. A recipe round-trips YAML -> object -> YAML.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from . import defaults as D
from .errors import UserError, did_you_mean, short_repr
from .fileio import read_user_text
from .limits import MAX_EPOCHS, MAX_SEED, MAX_STEPS
from .methods.base import Method
from .methods import method_types


class AugmentConfig(BaseModel):
    """Synonym-replacement augmentation of the training set (TinyBERT / Combining Compressions)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    n_aug: int = Field(4, ge=1, le=64, description="augmented copies per training example")
    p: float = Field(0.3, gt=0.0, le=1.0, description="probability of replacing each eligible word")
    seed: int = Field(0, ge=0, le=MAX_SEED)


class Stage(BaseModel):
    """One training stage: its schedule and the methods active during it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str = "stage"
    epochs: float | None = Field(None, gt=0, le=MAX_EPOCHS)
    steps: int | None = Field(None, gt=0, le=MAX_STEPS)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    eval_every: int | None = Field(None, ge=1, description="evaluate every N steps (default: each epoch)")
    keep: Literal["last", "best"] = Field(
        "last", description="which model ends the stage: the last one (schedules finished) or the best eval"
    )
    augment: AugmentConfig | None = None
    methods: list[SerializeAsAny[Method]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_length(self) -> "Stage":
        if self.epochs is None and self.steps is None:
            self.epochs = 1.0
        elif self.epochs is not None and self.steps is not None:
            raise ValueError("give either 'epochs' or 'steps', not both")
        return self


class Recipe(BaseModel):
    """A validated compression recipe."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    description: str | None = None
    seed: int = Field(D.SEED, ge=0, le=MAX_SEED, description="seed of batch order, dropout and new weights")
    max_seq_length: int = Field(D.MAX_SEQ_LENGTH, ge=8, le=4096)
    bf16: bool = True
    stages: list[Stage] = Field(min_length=1)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, raw: Any, source: str = "<recipe>", lines: "_LineIndex | None" = None) -> "Recipe":
        """Validate a plain dict (as loaded from YAML) into a Recipe."""
        lines = lines or _LineIndex(None)
        if not isinstance(raw, dict):
            raise UserError(f"{source}: a recipe must be a mapping with a 'stages:' list, got {type(raw).__name__}")
        raw = dict(raw)
        stages_raw = raw.get("stages")
        if not isinstance(stages_raw, list):
            where = lines.where(("stages",), source)
            raise UserError(
                f"{where}: 'stages' must be a list of stages (each with 'methods:'), got {short_repr(stages_raw)}"
            )
        stages = [_stage_with_methods(st, i, source, lines) for i, st in enumerate(stages_raw)]
        raw["stages"] = stages
        try:
            recipe = cls.model_validate(raw)
        except ValidationError as e:
            raise _user_error(e, (), source, lines) from None
        recipe._check_order(source, lines)
        return recipe

    @classmethod
    def from_yaml(cls, text: str, source: str = "<recipe>", overrides: list[str] | None = None) -> "Recipe":
        """Parse YAML text; ``overrides`` are ``KEY=VALUE`` strings (``stages.0.epochs=1``).

        Only plain YAML is accepted: anchors and aliases, tags other than the standard scalar /
        list / mapping ones, nesting deeper than :data:`MAX_YAML_DEPTH` and integers longer than
        :data:`MAX_NUMBER_CHARS` characters are refused with a :class:`UserError`.
        """
        raw, node = load_plain_yaml(text, source)
        if raw is None:
            raise UserError(f"{source}: the recipe is empty; it needs a 'stages:' list")
        for ov in overrides or []:
            apply_override(raw, ov)
        return cls.from_dict(raw, source, _LineIndex(node))

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "Recipe":
        """Read and validate a recipe file (UTF-8, at most :data:`MAX_RECIPE_BYTES` bytes)."""
        return cls.from_yaml(read_recipe_text(path), source=str(path), overrides=overrides)

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude_none=True)
        for st_out, st in zip(out["stages"], self.stages):
            st_out["methods"] = [_method_dict(m) for m in st.methods]
        return out

    def to_yaml(self) -> str:
        """Plain YAML (never anchors or aliases, which :meth:`from_yaml` refuses)."""
        return yaml.dump(self.to_dict(), Dumper=_PlainDumper, sort_keys=False)

    # ------------------------------------------------------------------ checks
    def _check_order(self, source: str, lines: "_LineIndex") -> None:
        seen_quant: tuple[int, int] | None = None
        has_distill = any("distills" in m.effects for s in self.stages for m in s.methods)
        for i, st in enumerate(self.stages):
            for j, m in enumerate(st.methods):
                if "removes_layers" in m.effects and seen_quant is not None:
                    qi, qj = seen_quant
                    raise UserError(
                        f"{lines.where(('stages', i, 'methods', j), source)}: stages.{i}.methods.{j}: layer "
                        f"reduction after quantization (stages.{qi}.methods.{qj}) is not possible; reduce "
                        f"layers in an earlier stage than the one that quantizes"
                    )
                if m.effects & {"quantizes_weights", "quantizes_activations"}:
                    seen_quant = seen_quant or (i, j)
                    bits = m.weight_bits() if "quantizes_weights" in m.effects else None
                    if bits is not None and bits <= 2 and not has_distill:
                        warnings.warn(
                            f"{source}: stages.{i}.methods.{j} quantizes weights to {bits} bit(s) "
                            "without distillation in any stage; XTC found distillation essential at 1-2 bits",
                            stacklevel=2,
                        )
                try:
                    notes = m.check_in_recipe(self.stages, i)
                except ValueError as e:
                    where = lines.where(("stages", i, "methods", j), source)
                    raise UserError(f"{where}: stages.{i}.methods.{j}: {e}") from None
                for note in notes:
                    warnings.warn(f"{source}: stages.{i}.methods.{j}: {note}", stacklevel=2)

    def describe(self) -> str:
        """Human-readable plan, stage by stage (for ``compactbert recipe check``)."""
        out = []
        if self.description:
            out.append(self.description.strip())
        out.append(f"seed={self.seed} max_seq_length={self.max_seq_length} bf16={self.bf16}")
        for i, st in enumerate(self.stages):
            length = f"{st.epochs:g} epoch(s)" if st.steps is None else f"{st.steps} steps"
            out.append(
                f"stage {i} '{st.name}': {length}, lr {st.lr:g}, batch {st.batch_size}, warm-up {st.warmup_ratio:g}, "
                f"keeps the {st.keep} model"
            )
            if st.augment:
                out.append(f"  - augment training data: {st.augment.n_aug} synonym-replaced copies, p={st.augment.p}")
            for m in st.methods:
                out.append(f"  - {m.describe()}")
            if not st.methods:
                out.append("  - (no compression method: plain fine-tuning)")
        return "\n".join(out)


def _stage_with_methods(st: Any, i: int, source: str, lines: "_LineIndex") -> dict[str, Any]:
    """A raw stage mapping with its ``methods`` validated into :class:`Method` objects."""
    registry = method_types()
    valid = ", ".join(sorted(registry))
    if not isinstance(st, dict):
        raise UserError(f"{lines.where(('stages', i), source)}: stages.{i} must be a mapping, got {type(st).__name__}")
    st = dict(st)
    methods_raw = st.get("methods")
    if methods_raw is None:
        methods_raw = []
    if not isinstance(methods_raw, list):
        raise UserError(
            f"{lines.where(('stages', i, 'methods'), source)}: stages.{i}.methods must be a list of methods "
            f"(each a mapping with 'type:', one of {valid}), got {short_repr(methods_raw)}"
        )
    methods = []
    for j, m in enumerate(methods_raw):
        path = ("stages", i, "methods", j)
        if not isinstance(m, dict) or "type" not in m:
            raise UserError(f"{lines.where(path, source)}: {_dotted(path)} needs a 'type:' (one of {valid})")
        mtype = m["type"]
        if not isinstance(mtype, str):
            raise UserError(
                f"{lines.where(path + ('type',), source)}: {_dotted(path)}.type must be a method name "
                f"(one of {valid}), got {short_repr(mtype)}"
            )
        if mtype not in registry:
            raise UserError(
                f"{lines.where(path + ('type',), source)}: {_dotted(path)}.type: unknown method "
                f"{short_repr(mtype)}{did_you_mean(mtype, list(registry))}; valid: {valid}"
            )
        try:
            methods.append(registry[mtype].model_validate(m))
        except ValidationError as e:
            raise _user_error(e, path, source, lines, registry[mtype]) from None
        except UserError as e:
            raise UserError(f"{lines.where(path, source)}: {_dotted(path)}: {e}") from None
    st["methods"] = methods
    return st


def _method_dict(m: Method) -> dict[str, Any]:
    """A method's keys without ``None`` values, except a ``None`` that is not the key's default
    (``quantize``'s ``weight: null``): dropping it would read back as the default."""
    fields = type(m).model_fields
    kept = m.model_dump(mode="json", exclude_none=True)
    full = m.model_dump(mode="json")
    return {k: kept.get(k) for k in full if k in kept or fields[k].default is not None}


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


# ---------------------------------------------------------------------- plain YAML
# A recipe is a few hundred bytes of plain YAML; these limits refuse what no recipe needs and what
# could exhaust memory or the stack ("billion laughs" aliases, deep nesting, huge numbers).

MAX_RECIPE_BYTES = 256 * 1024
MAX_YAML_DEPTH = 32
MAX_NUMBER_CHARS = 64
_PLAIN_TAGS = {"!"} | {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}


class _PlainLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, refusing integers too long to be any setting (and to convert quickly)."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    if len(node.value) > MAX_NUMBER_CHARS:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of {len(node.value)} characters is too long for any setting", node.start_mark
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_PlainLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _PlainDumper(yaml.SafeDumper):
    """The safe dumper, writing a value that occurs twice in full instead of as an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def read_recipe_text(path: str | Path) -> str:
    """The text of a recipe file; UserError if it is missing, unreadable, too large or not UTF-8."""
    return read_user_text(path, "recipe file", MAX_RECIPE_BYTES, "a recipe is a short YAML file")


def load_plain_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """Parse one YAML document of plain data: ``(value, node)``, the node for line numbers.

    Raises:
        UserError: not valid YAML, or anchors/aliases, unusual tags, nesting deeper than
            :data:`MAX_YAML_DEPTH`, a number longer than :data:`MAX_NUMBER_CHARS` characters.
    """
    try:
        _check_plain_events(text, source)
        loader = _PlainLoader(text)
        try:
            node = loader.get_single_node()
            value = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise UserError(_yaml_error(e, text, source)) from None
    return value, node


def _check_plain_events(text: str, source: str) -> None:
    """Refuse aliases, anchors, non-standard tags and deep nesting before anything is built."""
    depth = 0
    for ev in yaml.parse(text, Loader=_PlainLoader):
        at = _at(source, ev.start_mark, text)
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            raise UserError(f"{at}: YAML anchors and aliases (&name, *name) are not allowed in recipes; write the values out")
        tag = getattr(ev, "tag", None)
        if tag is not None and tag not in _PLAIN_TAGS:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise UserError(f"{at}: the YAML tag {short_repr(shown)} is not allowed in recipes; use plain values")
        if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise UserError(f"{at}: nested more than {MAX_YAML_DEPTH} levels deep; a recipe needs at most 5")
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _at(source: str, mark: Any, text: str) -> str:
    """``source:line`` for a YAML mark; just ``source`` for one-line text (a --set value)."""
    return f"{source}:{mark.line + 1}" if mark is not None and "\n" in text else source


def _yaml_error(e: yaml.YAMLError, text: str, source: str) -> str:
    """One line for a YAML error: where, and the problem (with its context)."""
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, other controls)
        line = text.count("\n", 0, e.position) + 1 if isinstance(e.position, int) and "\n" in text else None
        char = chr(e.character) if isinstance(e.character, int) else e.character
        return f"{f'{source}:{line}' if line else source}: not valid YAML: character {char!r} is not allowed ({e.reason})"
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    at = _at(source, getattr(e, "problem_mark", None), text)
    return f"{at}: not valid YAML: {context + ': ' if context else ''}{problem}"


def apply_override(raw: dict, override: str) -> None:
    """Apply ``KEY=VALUE`` (dotted key path, list indices as numbers) to a raw recipe dict.

    ``VALUE`` is read as plain YAML (``1``, ``5e-5``, ``[a, b]``, ``{type: int8}``); a string that
    YAML would read otherwise needs quotes.
    """
    if "=" not in override:
        raise UserError(f"--set {short_repr(override, 200)}: expected KEY=VALUE, e.g. stages.0.epochs=1")
    key, value = override.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise UserError(f"--set {short_repr(override, 200)}: empty key; expected a dotted path such as stages.0.lr")
    val = load_plain_yaml(value, f"--set {short_repr(override, 200)}")[0] if value.strip() else None
    cur: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        where = where if len(where) <= 80 else where[:77] + "..."
        if isinstance(cur, list):
            index = int(part) if part.isascii() and part.isdigit() and len(part) < 10 else None
            if index is None or index >= len(cur):
                raise UserError(f"--set {short_repr(override, 200)}: {where}: index out of range (the list has {len(cur)} items)")
            if last:
                cur[index] = val
            else:
                cur = cur[index]
        elif isinstance(cur, dict):
            if last:
                cur[part] = val  # unknown keys are caught by validation, with their path
            else:
                if part not in cur:
                    raise UserError(f"--set {short_repr(override, 200)}: {where} does not exist in the recipe")
                cur = cur[part]
        else:
            raise UserError(f"--set {short_repr(override, 200)}: {where}: cannot set a key inside a {type(cur).__name__}")


class _LineIndex:
    """Maps key paths (('stages', 0, 'methods', 1, 'bits')) to YAML line numbers."""

    def __init__(self, node: yaml.Node | None):
        self.node = node

    def line(self, path: tuple) -> int | None:
        node = self.node
        best = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if k.value == str(part):
                        nxt = v
                        best = k.start_mark.line + 1
                        break
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                best = node.start_mark.line + 1
            else:
                break
            if node is None:
                break
        return best

    def where(self, path: tuple, source: str) -> str:
        ln = self.line(path)
        return f"{source}:{ln}" if ln else source


def _user_error(
    e: ValidationError, prefix: tuple, source: str, lines: _LineIndex, model: type[BaseModel] | None = None
) -> UserError:
    """One line from the first pydantic error: file:line: key.path: what is wrong and what is valid."""
    err = e.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        valid = sorted(_model_at(err["loc"][:-1], model or Recipe).model_fields)
        msg = f"unknown key{did_you_mean(str(loc[-1]), valid)}; valid keys: {', '.join(valid)}"
    elif "input" in err and err["type"] != "missing":
        msg = f"{msg} (got {short_repr(err['input'])})"
    return UserError(f"{lines.where(loc, source)}: {_dotted(loc) or '(top level)'}: {msg}")


def _model_at(loc: tuple, model: type[BaseModel]) -> type[BaseModel]:
    """The pydantic model class that owns the keys at ``loc`` (a path inside ``model``)."""
    if model is Recipe and len(loc) >= 2 and loc[0] == "stages":
        return AugmentConfig if len(loc) >= 3 and loc[2] == "augment" else Stage
    return model
