"""The tokenizer of a packed directory: written as data files only, and read back as data only.

A packed directory is untrusted, so its ``tokenizer/`` folder may hold only the file names a
tokenizer's ``save_pretrained`` writes for the supported models (:data:`TOKENIZER_FILES`, each
possibly ``.xz``-compressed): no Python file, no pickle. A ``tokenizer_config.json`` that asks for
custom code (``auto_map``) is refused, and the tokenizer is built with ``trust_remote_code=False``
from a private temporary folder holding only those files. An ``.xz`` file expands to at most
:data:`MAX_TOKENIZER_FILE_BYTES` (the folder to :data:`MAX_TOKENIZER_BYTES`), however well it
compresses.
"""

from __future__ import annotations

import json
import lzma
import tempfile
from pathlib import Path
from typing import Any

from ...errors import short_repr
from .constants import MANIFEST_FILE, TOKENIZER_DIR
from .schema import bad_folder

__all__ = ["TOKENIZER_FILES", "MAX_TOKENIZER_FILE_BYTES", "MAX_TOKENIZER_BYTES", "tokenizer_file_ok",
           "check_tokenizer_dir", "expand_xz", "load_packed_tokenizer"]

#: the file names a tokenizer's save_pretrained writes for BERT, DistilBERT, ELECTRA, RoBERTa, XLM-R
TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
})
MAX_TOKENIZER_FILE_BYTES = 64 * 1024 * 1024
MAX_TOKENIZER_BYTES = 128 * 1024 * 1024


def tokenizer_file_ok(name: str) -> bool:
    """Whether ``name`` (inside ``tokenizer/``) is one a packed directory may hold."""
    return (name[: -len(".xz")] if name.endswith(".xz") else name) in TOKENIZER_FILES


def check_tokenizer_dir(folder: Path) -> None:
    """Refuse a ``tokenizer/`` folder holding anything but the allowed files (code, pickles, links...)."""
    tdir = folder / TOKENIZER_DIR
    if not tdir.exists() and not tdir.is_symlink():
        return
    if tdir.is_symlink() or not tdir.is_dir():
        raise bad_folder(folder, f"{TOKENIZER_DIR}/ is not a plain folder")
    for f in sorted(tdir.iterdir()):
        if not tokenizer_file_ok(f.name) or f.is_symlink() or not f.is_file():
            raise bad_folder(folder, f"{TOKENIZER_DIR}/ holds {short_repr(f.name)}, which a packed tokenizer never "
                             f"has (allowed: {', '.join(sorted(TOKENIZER_FILES))}, optionally .xz)")


def expand_xz(data: bytes, rel: str, folder: Path, limit: int = MAX_TOKENIZER_FILE_BYTES) -> bytes:
    """``data`` decompressed, refusing anything that expands past ``limit`` bytes."""
    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        out = d.decompress(data, max_length=limit + 1)
    except lzma.LZMAError as e:
        raise bad_folder(folder, f"tokenizer file {rel!r} cannot be decompressed ({e})") from None
    if len(out) > limit or not d.eof:
        what = f"expands past {limit:,} bytes" if len(out) > limit else "is truncated"
        raise bad_folder(folder, f"tokenizer file {rel!r} {what}")
    if d.unused_data:
        raise bad_folder(folder, f"tokenizer file {rel!r} has data after its xz stream")
    return out


def _check_config(data: bytes, rel: str, folder: Path) -> None:
    try:
        cfg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad_folder(folder, f"tokenizer file {rel!r} is not valid JSON ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise bad_folder(folder, f"tokenizer file {rel!r} is not a JSON object")
    if "auto_map" in cfg:
        raise bad_folder(folder, f"tokenizer file {rel!r} asks for custom code (auto_map); packed models never run code")


def _tokenizer_files(folder: Path, manifest: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every tokenizer file the manifest lists, expanded and checked."""
    out, total = [], 0
    for rel in manifest.get("files", {}):
        if not rel.startswith(TOKENIZER_DIR + "/"):
            continue
        name = rel.split("/", 1)[1]
        if not tokenizer_file_ok(name):
            raise bad_folder(folder, f"invalid tokenizer file name {rel!r}")
        data = (folder / rel).read_bytes()
        if name.endswith(".xz"):
            data, name = expand_xz(data, rel, folder), name[: -len(".xz")]
        total += len(data)
        if total > MAX_TOKENIZER_BYTES:
            raise bad_folder(folder, f"its tokenizer files expand past {MAX_TOKENIZER_BYTES:,} bytes")
        if name.endswith(".json"):
            _check_config(data, rel, folder)
        out.append((name, data))
    if len({n for n, _ in out}) != len(out):
        raise bad_folder(folder, "its tokenizer lists a file twice (plain and .xz)")
    return out


def load_packed_tokenizer(path, manifest: dict[str, Any] | None = None):
    """The tokenizer stored in a packed directory (None if it has none).

    Only names listed in the manifest (and allowed, :data:`TOKENIZER_FILES`) are read; compressed
    files are expanded (bounded) into a private temporary folder first, and the tokenizer is built
    from there with ``trust_remote_code=False``.

    Raises:
        UserError: a file that is not allowed, does not expand, is not valid JSON, asks for custom
            code, or that the tokenizer library cannot read.
    """
    from transformers import AutoTokenizer

    from .schema import parse_manifest, read_json

    folder = Path(path)
    if manifest is None:
        manifest = parse_manifest(read_json(folder / MANIFEST_FILE, folder, MANIFEST_FILE), folder)
    check_tokenizer_dir(folder)
    files = _tokenizer_files(folder, manifest)
    if not files:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files:
            (Path(tmp) / name).write_bytes(data)
        try:
            return AutoTokenizer.from_pretrained(tmp, trust_remote_code=False, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - whatever the tokenizer library says of a bad file
            msg = str(e).splitlines()[0] if str(e) else ""
            raise bad_folder(folder, f"its tokenizer cannot be loaded ({type(e).__name__}: {msg[:200]})") from None
