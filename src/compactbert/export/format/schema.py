"""The strict schema of a packed directory's ``manifest.json`` and ``config.json``.

A packed directory is untrusted input: whoever made it controls every byte, the hashes in the
manifest included. Before anything else reads them, both JSON files are checked against these
models (pydantic, strict: an integer is a JSON integer, never ``1.0`` or ``true``; unknown keys are
refused); what the fields must say *together* (shapes against the config, bytes against the
payload) is :mod:`.check`'s part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...errors import UserError, short_repr
from .constants import FORMAT_NAME
from .layout import ACTIVATIONS

__all__ = ["MAX_JSON_BYTES", "MAX_DIM", "MAX_LAYERS", "bad_folder", "read_json", "parse_manifest", "parse_config",
           "ManifestV1", "ManifestV2", "RuntimeConfig"]

#: manifest.json and config.json larger than this are refused before they are parsed
MAX_JSON_BYTES = 8 * 1024 * 1024
#: no dimension of a packed model may exceed this (int32 indexing); the payload bounds them far lower
MAX_DIM = 2**31 - 1
MAX_LAYERS = 1024
MAX_PARTS = 32

Dim = Annotated[int, Field(ge=0, le=MAX_DIM)]
PosDim = Annotated[int, Field(ge=1, le=MAX_DIM)]
Bytes = Annotated[int, Field(ge=0, le=2**53)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


def bad_folder(path: Path, what: str) -> UserError:
    return UserError(f"packed model {str(path)!r}: {what}; re-export it with `compactbert export`")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class FileInfo(_Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Bytes


class QuantV2(_Strict):
    kind: Name
    spec: dict[str, Any]
    scale_layout: Literal["tensor", "row", "group"]
    group_size: Optional[PosDim] = None
    params: Annotated[list[Name], Field(max_length=8)]
    row_bits: list[Annotated[list[Annotated[int, Field(ge=0, le=MAX_DIM)]], Field(min_length=2, max_length=2)]]
    groups: Optional[PosDim] = None


class QuantV1(_Strict):
    kind: Name
    spec: dict[str, Any]
    scale_layout: Literal["tensor", "row", "group"]
    group_size: Optional[PosDim] = None
    zero_points: bool
    level_offset: Optional[int] = None
    level_step: Optional[int] = None
    groups: Optional[PosDim] = None


class _Entry(_Strict):
    shape: Annotated[list[Dim], Field(min_length=1, max_length=2)]
    encoding: Literal["dense", "rows", "bitmask"]
    bits: Annotated[int, Field(ge=0, le=32)]
    dtype: Optional[Literal["float16", "float32"]]
    parts: Annotated[dict[Name, Name], Field(max_length=MAX_PARTS)]
    bytes: Bytes
    source: Optional[Annotated[str, Field(max_length=1024)]] = None

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        if v > 8 and v not in (16, 32):
            raise ValueError("bits must be 0..8 (quantized) or 16/32 (floats)")
        return v


class EntryV2(_Entry):
    quant: Optional[QuantV2]


class EntryV1(_Entry):
    quant: Optional[QuantV1]


class _Manifest(_Strict):
    format: Literal["compactbert-packed"]
    format_version: int
    float_dtype: Literal["float16", "float32"]
    uncompressed_bits: Literal[16, 32]
    extra_tensors: Annotated[list[Name], Field(max_length=100_000)]
    files: Annotated[dict[Annotated[str, Field(min_length=1, max_length=512)], FileInfo], Field(max_length=64)]
    payload_bytes: Bytes
    weights_bytes: Bytes
    tokenizer_bytes: Bytes
    total_bytes: Bytes


class ManifestV2(_Manifest):
    tensors: Annotated[dict[Name, EntryV2], Field(max_length=100_000)]


class ManifestV1(_Manifest):
    tensors: Annotated[dict[Name, EntryV1], Field(max_length=100_000)]


class HeadConfig(_Strict):
    activation: Literal["tanh", "relu", "gelu"]


class VocabConfig(_Strict):
    pruned: bool
    original_size: PosDim
    kept: PosDim
    unk_token_id: Dim
    unseen: Literal["unk", "nearest"]


class PoolingConfig(_Strict):
    mode: Literal["mean", "cls", "max", "mean_sqrt_len"]
    normalize: bool = True
    max_seq_length: Optional[PosDim] = None
    source: Optional[Annotated[str, Field(max_length=1024)]] = None


class ActQuantConfig(BaseModel):
    """``{"spec": {...}, <parameter>: <tensor key>, ...}`` of one linear's input quantizer."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    spec: dict[str, Any]

    @field_validator("spec")
    @classmethod
    def _kind(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("kind"), str):
            raise ValueError("an activation quantizer spec needs a string 'kind'")
        return v


class RuntimeConfig(_Strict):
    format: Literal["compactbert-packed"]
    arch: Literal["bert", "roberta", "distilbert"]
    model_type: Annotated[str, Field(max_length=128)]
    hidden_size: PosDim
    embedding_size: PosDim
    head_dim: PosDim
    num_layers: Annotated[int, Field(ge=0, le=MAX_LAYERS)]
    hidden_act: Literal[tuple(sorted(set(ACTIVATIONS.values())))]  # type: ignore[valid-type]
    layer_norm_eps: Annotated[float, Field(gt=0, lt=1)]
    vocab_size: PosDim
    max_position_embeddings: PosDim
    type_vocab_size: Dim
    pad_token_id: Dim
    position_style: Literal["absolute", "roberta"]
    head: Optional[HeadConfig]
    num_labels: Dim
    problem_type: Optional[Annotated[str, Field(max_length=128)]] = None
    id2label: Annotated[dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[str, Field(max_length=1024)]],
                        Field(max_length=100_000)] = {}
    heads_per_layer: Annotated[list[Dim], Field(max_length=MAX_LAYERS)]
    ffn_per_layer: Annotated[list[Dim], Field(max_length=MAX_LAYERS)]
    # absent or present, never null: readers use config.get(key, default)
    removed: dict[str, int] = None  # type: ignore[assignment]
    act_quant: dict[Name, ActQuantConfig] = None  # type: ignore[assignment]
    vocab: VocabConfig = None  # type: ignore[assignment]
    pooling: PoolingConfig = None  # type: ignore[assignment]
    source_config: Any = None


def read_json(path: Path, folder: Path, what: str) -> Any:
    """The parsed JSON file ``path`` of a packed directory (at most :data:`MAX_JSON_BYTES`)."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise bad_folder(folder, f"{what} has {size} bytes; at most {MAX_JSON_BYTES} are read")
        return json.loads(path.read_bytes().decode("utf-8"))
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise bad_folder(folder, f"{what} is not valid JSON ({type(e).__name__}: {e})") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    where = ".".join(str(x) for x in err["loc"]) or "(top level)"
    return f"{where}: {err['msg']} (got {short_repr(err.get('input'), 60)})"


def parse_manifest(raw: Any, folder: Path) -> dict[str, Any]:
    """``raw`` (parsed ``manifest.json``) checked against its version's schema; returns it unchanged.

    Raises:
        UserError: not a manifest of this format, an unreadable version (naming the readable ones),
            or the first field that does not fit (one line).
    """
    from .constants import READABLE_VERSIONS

    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise bad_folder(folder, f"manifest.json does not describe a {FORMAT_NAME!r} folder")
    version = raw.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:  # 1.0 and true are not versions
        raise UserError(
            f"packed model {str(folder)!r} has format_version {short_repr(version)}; this compactbert reads version "
            f"{' or '.join(map(str, READABLE_VERSIONS))} only (an integer; re-export the model, or use the "
            "compactbert version that wrote it)"
        )
    try:
        (ManifestV1 if version == 1 else ManifestV2).model_validate(raw)
    except ValidationError as e:
        raise bad_folder(folder, f"manifest.json does not fit the format: {_first_error(e)}") from None
    return raw


def parse_config(raw: Any, folder: Path) -> dict[str, Any]:
    """``raw`` (parsed ``config.json``) checked against :class:`RuntimeConfig`; returns it unchanged."""
    try:
        RuntimeConfig.model_validate(raw)
    except ValidationError as e:
        raise bad_folder(folder, f"config.json does not fit the format: {_first_error(e)}") from None
    return raw
