"""Find modules by name pattern and swap them for their compressed versions, in place.

Patterns are matched against full module names (``bert.encoder.layer.0.attention.self.query``):

* a glob (``fnmatch``; ``*`` also matches dots): ``"*encoder.layer.*"``, ``"*.attention.self.*"``;
* a regular expression after ``re:``, which must match the whole name:
  ``"re:.*layer\\.(0|1)\\.output\\.dense"``.

A pattern that matches nothing is an error (a typo must not silently compress nothing).

Example::

    layers = compress_modules(model, encoder_linear_patterns(model))   # {name: CompressedLinear}
    for layer in layers.values():
        layer.weight_quantizer = TernaryQuantizer()
    compress_embeddings(model)["bert.embeddings.word_embeddings"].weight_quantizer = TernaryQuantizer()
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable, Sequence

from torch import nn

from ..errors import UserError, did_you_mean
from .compressed import CompressedEmbedding, CompressedLinear, is_compressed
from .quantizers import quantizer_from_spec

__all__ = [
    "match_modules",
    "compress_modules",
    "compress_embeddings",
    "encoder_linear_patterns",
    "compressed_modules",
    "compression_spec",
    "apply_compression_spec",
    "replace_module",
    "bake",
    "SPEC_VERSION",
]

SPEC_VERSION = 1


def _as_list(patterns: str | Iterable[str]) -> list[str]:
    if isinstance(patterns, str):
        return [patterns]
    return list(patterns)


def _matcher(pattern: str, where: str):
    if not isinstance(pattern, str) or not pattern:
        raise UserError(f"{where}target pattern {pattern!r} must be a non-empty string (a glob, or 're:' + regex)")
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise UserError(f"{where}target pattern {pattern!r} is not a valid regular expression: {e}") from None
        return lambda name: rx.fullmatch(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def match_modules(
    model: nn.Module,
    patterns: str | Sequence[str],
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,),
    where: str = "",
) -> dict[str, nn.Module]:
    """Modules of ``kinds`` whose full name matches any of ``patterns``, in model order.

    Args:
        model: The model to search.
        patterns: Globs (fnmatch) or ``re:``-prefixed regexes matched against the whole name.
        kinds: Module classes to consider (subclasses included, so compressed layers match too).
        where: Prefix for error messages, e.g. ``"stages.1.methods.0.targets: "``.

    Raises:
        UserError: a pattern that matches no module of ``kinds``; the message repeats the pattern
            and lists a few module names that exist.
    """
    candidates = [(n, m) for n, m in model.named_modules() if n and isinstance(m, kinds)]
    pats = _as_list(patterns)
    if not pats:
        raise UserError(f"{where}no target patterns given; give at least one module-name pattern")
    found: dict[str, nn.Module] = {}
    hits: set[str] = set()
    matchers = [(p, _matcher(p, where)) for p in pats]
    for name, mod in candidates:
        for p, ok in matchers:
            if ok(name):
                found[name] = mod
                hits.add(p)
    for p, _ in matchers:
        if p not in hits:
            kind_names = "/".join(k.__name__ for k in kinds)
            names = [n for n, _ in candidates]
            examples = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
            hint = did_you_mean(p.removeprefix("re:"), names)
            raise UserError(
                f"{where}target pattern {p!r} matches no {kind_names} module in {type(model).__name__}{hint}; "
                f"module names look like: {examples or '(none of that kind)'}. Use a glob such as "
                f"'*encoder.layer.*' or a regex with the 're:' prefix"
            )
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at dotted ``name`` inside ``model`` (works for ModuleList/Sequential indices)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def compress_modules(model: nn.Module, patterns: str | Sequence[str], **match: Any) -> dict[str, nn.Module]:
    """Swap every matching Linear (and, if in ``kinds``, Embedding) for its compressed version.

    Idempotent: an already compressed layer is kept as it is. The new layers share the old
    layers' Parameters, so an optimizer built before still holds the right tensors.

    Args:
        model, patterns: as for :func:`match_modules`.
        match: ``kinds`` and ``where`` (keywords), as for :func:`match_modules`.

    Returns:
        ``{name: CompressedLinear | CompressedEmbedding}`` for every matched module.
    """
    out: dict[str, nn.Module] = {}
    for name, mod in match_modules(model, patterns, **match).items():
        if not is_compressed(mod):
            if isinstance(mod, nn.Linear):
                new: nn.Module = CompressedLinear.from_linear(mod)
            elif isinstance(mod, nn.Embedding):
                new = CompressedEmbedding.from_embedding(mod)
            else:
                raise TypeError(f"cannot compress {name} of type {type(mod).__name__}")
            replace_module(model, name, new)
            mod = new
        out[name] = mod
    return out


def _name_of(model: nn.Module, target: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is target:
            return n
    raise ValueError("module not found in model")


def compress_embeddings(
    model: nn.Module, patterns: str | Sequence[str] | None = None, where: str = ""
) -> dict[str, CompressedEmbedding]:
    """Swap the word embeddings (``model.get_input_embeddings()``), or the Embedding modules
    matching ``patterns``, for :class:`CompressedEmbedding`. Idempotent.

    Position and token-type embeddings are left alone unless a pattern names them.
    """
    if patterns is None:
        get = getattr(model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        if not isinstance(emb, nn.Embedding):
            raise UserError(
                f"{where}cannot find the word embeddings of {type(model).__name__}; "
                "name them with an embedding pattern, e.g. '*word_embeddings'"
            )
        patterns = [_name_of(model, emb)]
    return compress_modules(model, patterns, kinds=(nn.Embedding,), where=where)  # type: ignore[return-value]


# Encoder layer containers: BERT / RoBERTa / ELECTRA / MiniLM ("encoder.layer.N"), DistilBERT
# ("transformer.layer.N"), and other common spellings.
_LAYER_CONTAINER = re.compile(r"^(?P<prefix>(?:.*\.)?)(?P<box>encoder\.layers?|transformer\.layers?|layers|blocks)\.\d+\.")


def encoder_linear_patterns(model: nn.Module) -> list[str]:
    """The default quantization targets: every Linear inside the encoder layers.

    That is Q/K/V, attention output and both FFN matrices of each layer — ``["*encoder.layer.*"]``
    for BERT, RoBERTa, ELECTRA and MiniLM, ``["*transformer.layer.*"]`` for DistilBERT. The pooler
    and the classifier head are outside the layers and so not targeted.

    Raises:
        UserError: no Linear layer sits inside a numbered layer list.
    """
    boxes: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            m = _LAYER_CONTAINER.match(name)
            if m and m.group("box") not in boxes:
                boxes.append(m.group("box"))
    if not boxes:
        raise UserError(
            f"cannot find encoder layers in {type(model).__name__} (no Linear under 'encoder.layer.N' or "
            "'transformer.layer.N'); give the targets explicitly, e.g. targets: ['*layer.*.attention.*']"
        )
    return [f"*{box}.*" for box in boxes]


def compressed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """All CompressedLinear / CompressedEmbedding modules of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if is_compressed(m)}


def compression_spec(model: nn.Module) -> dict[str, Any]:
    """JSON-able structure of the compressed layers, to rebuild them before loading weights.

    Returns:
        ``{"version": 1, "modules": {name: {"kind": "linear" | "embedding", "weight_quantizer":
        spec | None, "input_quantizer": spec | None, "has_mask": bool, "mask_dtype": str | None}}}``
    """
    modules: dict[str, Any] = {}
    for name, m in compressed_modules(model).items():
        wq, iq = m.weight_quantizer, getattr(m, "input_quantizer", None)
        modules[name] = {
            "kind": "linear" if isinstance(m, CompressedLinear) else "embedding",
            "weight_quantizer": wq.spec() if wq is not None else None,
            "input_quantizer": iq.spec() if iq is not None else None,
            "has_mask": m.weight_mask is not None,
            "mask_dtype": str(m.weight_mask.dtype).removeprefix("torch.") if m.weight_mask is not None else None,
        }
    return {"version": SPEC_VERSION, "modules": modules}


def apply_compression_spec(model: nn.Module, spec: dict[str, Any], source: str = "compression.json") -> dict[str, nn.Module]:
    """Rebuild the compressed layers described by ``spec`` (from :func:`compression_spec`).

    Layers are swapped in, quantizers built and attached, and a placeholder mask (all ones, the
    saved dtype) registered where the spec has one, so that a strict ``load_state_dict`` of the
    saved weights then restores masks and learned quantizer parameters.

    Raises:
        UserError: an unknown spec version, or a module the model does not have.
    """
    import torch

    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION or not isinstance(spec.get("modules"), dict):
        raise UserError(f"{source}: not a compression spec of version {SPEC_VERSION} (got {str(spec)[:80]!r})")
    out: dict[str, nn.Module] = {}
    names = {n for n, _ in model.named_modules()}
    for name, entry in spec["modules"].items():
        if name not in names:
            raise UserError(
                f"{source}: module {name!r} does not exist in {type(model).__name__}"
                f"{did_you_mean(name, sorted(names))}; the spec and the model do not match"
            )
        kind = entry.get("kind")
        cls = {"linear": nn.Linear, "embedding": nn.Embedding}.get(kind)
        if cls is None:
            raise UserError(f"{source}: module {name!r} has kind {kind!r}; valid: linear, embedding")
        layer = compress_modules(model, [name], kinds=(cls,), where=f"{source}: ")[name]
        layer.weight_quantizer = quantizer_from_spec(entry.get("weight_quantizer"))
        if kind == "linear":
            layer.input_quantizer = quantizer_from_spec(entry.get("input_quantizer"))
        if entry.get("has_mask"):
            dtype = getattr(torch, entry.get("mask_dtype") or "bool")
            layer.weight_mask = torch.ones(layer.weight.shape, dtype=dtype, device=layer.weight.device)
        else:
            layer.weight_mask = None
        out[name] = layer
    return out


def bake(model: nn.Module) -> dict[str, nn.Module]:
    """Replace every compressed layer by a plain one with mask and quantization baked in.

    Activation quantizers are dropped (they cannot live in a weight). Returns the new modules.
    """
    out: dict[str, nn.Module] = {}
    for name, m in list(compressed_modules(model).items()):
        new = m.to_linear() if isinstance(m, CompressedLinear) else m.to_embedding()
        replace_module(model, name, new)
        out[name] = new
    return out
