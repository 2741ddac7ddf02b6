"""Gather what is known about each model from the files runs, exports and benchmarks leave behind.

Each path given to ``compactbert report`` may be:

* a **run directory** (``run.json``): its ``eval.json`` gives the metric; its size is ``size.json``
  when present (the packed size that ``compactbert size`` predicts), else the bytes of ``model/``;
* a **packed directory** (``manifest.json``) or any **model folder** (``config.json`` / ``model.onnx``):
  its size is the bytes of its files; an ``eval.json`` inside gives the metric;
* a ``bench.json`` file, or a folder holding one: one entry per benchmarked model, with latency,
  throughput, peak memory, size and (with a task) accuracy;
* an ``eval.json`` or ``size.json`` file: an entry named after its folder.

A run or packed directory whose weights carry ``groupbits`` quantizers also gets ``widths``:
``{matrix name: [bits of each row group]}`` (:func:`compactbert.report.widths.widths_of_folder`).

Entries that describe the same model folder (a packed directory that is also in a bench.json) are
merged; the benchmark's numbers win where both have one, because they were measured together.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import read_user_json
from ..runs import EVAL_FILE, MODEL, MODEL_DIR, ONNX, PACKED, RUN, RUN_FILE, SIZE_FILE, open_path

__all__ = ["collect", "FIELDS"]

# Everything an entry may hold; None when unknown.
FIELDS = (
    "name", "kind", "role", "task", "metric", "accuracy", "file_bytes", "weights_bytes", "bytes_source",
    "latency_ms_bs1_p50", "latency_ms_bs1_p90", "throughput_bs32", "peak_rss_mb", "threads", "kernels",
    "source", "group", "widths",
)
_BENCH_KEYS = (
    "kind", "role", "accuracy", "metric", "file_bytes", "weights_bytes", "latency_ms_bs1_p50",
    "latency_ms_bs1_p90", "throughput_bs32", "peak_rss_mb", "kernels",
)


MAX_JSON_BYTES = 64 * 1024 * 1024  # a bench.json of many models is ~100 kB; anything this large is not ours


def _read_json(path: Path) -> Any:
    return read_user_json(path, "file", MAX_JSON_BYTES)


def _empty(name: str, source: Path) -> dict[str, Any]:
    e: dict[str, Any] = dict.fromkeys(FIELDS)
    e.update(name=name, source=str(source))
    return e


def _apply_eval(entry: dict[str, Any], ev: Any, where: Path) -> None:
    """Fill the task metric from an eval.json ``{"task", "split", "n", "metrics": {...}}``."""
    metrics = ev.get("metrics") if isinstance(ev, dict) else None
    if not isinstance(metrics, dict) or not metrics:
        raise UserError(f"{str(where)!r} has no 'metrics' object; expected the eval.json that 'compactbert eval' writes")
    metric = "accuracy" if "accuracy" in metrics else next(iter(metrics))
    try:
        from ..data.tasks import get_task

        spec = get_task(ev.get("task")) if ev.get("task") else None
        if spec is not None and "accuracy" not in metrics and spec.main_metric in metrics:
            metric = spec.main_metric
    except UserError:
        pass
    value = metrics[metric]
    if not isinstance(value, (int, float)):
        raise UserError(f"{str(where)!r}: metric {metric!r} is {value!r}, expected a number")
    entry.update(accuracy=float(value), metric=metric, task=ev.get("task"))


def _size_bytes(sz: Any, where: Path) -> int:
    """Bytes from a size.json: ``compressed_bytes`` (size_report), ``file_bytes`` or ``total``."""
    if isinstance(sz, dict):
        for key in ("compressed_bytes", "file_bytes", "total", "bytes"):
            if isinstance(sz.get(key), (int, float)):
                return int(sz[key])
    raise UserError(
        f"{str(where)!r} has no byte count; expected a size.json with 'compressed_bytes' (compactbert size) "
        f"or 'file_bytes'"
    )


def _bench_entries(data: Any, where: Path) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise UserError(f"{str(where)!r} is not a bench.json (no 'models' list); expected the file 'compactbert bench' writes")
    out = []
    for i, m in enumerate(data["models"]):
        if not isinstance(m, dict) or not m.get("name"):
            raise UserError(f"{str(where)!r}: models[{i}] has no 'name'")
        if m.get("skipped"):  # an engine that was not installed: nothing was measured
            continue
        e = _empty(str(m["name"]), where)
        for k in _BENCH_KEYS:
            if m.get(k) is not None:
                e[k] = m[k]
        e["task"] = data.get("task")
        e["threads"] = data.get("threads")
        e["bytes_source"] = "files on disk (bench)"
        e["group"] = str(where)  # models measured together: ratios are only taken within a group
        e["_path"] = m.get("path")
        out.append(e)
    return out


def _dir_entries(p: Path) -> list[dict[str, Any]]:
    from ..bench.result import model_bytes

    entries: list[dict[str, Any]] = []
    model_entry: dict[str, Any] | None = None
    kind = open_path(p).kind
    if kind == RUN:
        run = _read_json(p / RUN_FILE)
        model_entry = _empty(p.name, p)
        model_entry["kind"] = f"run ({run.get('kind', '?')})" if isinstance(run, dict) else "run"
        model_entry["task"] = run.get("task") if isinstance(run, dict) else None
        model_entry["_path"] = str(p / MODEL_DIR)
        if (p / SIZE_FILE).is_file():
            model_entry["file_bytes"] = _size_bytes(_read_json(p / SIZE_FILE), p / SIZE_FILE)
            model_entry["bytes_source"] = "size.json (predicted packed size)"
        elif (p / MODEL_DIR).is_dir():
            model_entry["file_bytes"], model_entry["weights_bytes"] = model_bytes(p / MODEL_DIR)
            model_entry["bytes_source"] = "model/ files on disk"
    elif kind in (PACKED, ONNX, MODEL):
        model_entry = _empty(p.name, p)
        model_entry["kind"] = kind
        model_entry["file_bytes"], model_entry["weights_bytes"] = model_bytes(p)
        model_entry["bytes_source"] = "files on disk"
        model_entry["_path"] = str(p)
    elif (p / EVAL_FILE).is_file() or (p / SIZE_FILE).is_file():
        model_entry = _empty(p.name, p)
        model_entry["_path"] = str(p)
        if (p / SIZE_FILE).is_file():
            model_entry["file_bytes"] = _size_bytes(_read_json(p / SIZE_FILE), p / SIZE_FILE)
            model_entry["bytes_source"] = "size.json"
    if model_entry is not None and kind in (RUN, PACKED, MODEL):
        from .widths import widths_of_folder

        model_entry["widths"] = widths_of_folder(p / MODEL_DIR if kind == RUN else p) or None
    if model_entry is not None and (p / "eval.json").is_file():
        _apply_eval(model_entry, _read_json(p / "eval.json"), p / "eval.json")
    if model_entry is not None:
        entries.append(model_entry)
    if (p / "bench.json").is_file():
        entries.extend(_bench_entries(_read_json(p / "bench.json"), p / "bench.json"))
    if not entries:
        raise UserError(
            f"{str(p)!r} holds nothing to report (no run.json, manifest.json, config.json, model.onnx, "
            f"eval.json, size.json or bench.json)"
        )
    return entries


def _file_entries(p: Path) -> list[dict[str, Any]]:
    data = _read_json(p)
    # The file's name says what it is meant to be (its errors are then specific); else its content.
    if p.name == "bench.json" or (isinstance(data, dict) and "models" in data):
        return _bench_entries(data, p)
    e = _empty(p.parent.name or p.stem, p)
    e["_path"] = str(p.parent)
    if p.name == "eval.json" or (isinstance(data, dict) and "metrics" in data):
        _apply_eval(e, data, p)
        return [e]
    if p.name == "size.json" or (isinstance(data, dict) and any(k in data for k in ("compressed_bytes", "file_bytes", "total"))):
        e["file_bytes"] = _size_bytes(data, p)
        e["bytes_source"] = "size.json"
        return [e]
    raise UserError(f"{str(p)!r} is neither a bench.json, an eval.json nor a size.json")


def _key(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve())
    except OSError:  # pragma: no cover - unresolvable paths just do not merge
        return None


def collect(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """One dict per model (keys :data:`FIELDS`) from run dirs, packed dirs and bench/eval/size JSON files.

    Raises:
        UserError: a path that does not exist or holds nothing to report, or a malformed JSON file.
    """
    raw: list[dict[str, Any]] = []
    paths = list(paths)
    if not paths:
        raise UserError("no paths given to report on; pass run directories, packed directories or bench.json files")
    for path in paths:
        p = Path(path).expanduser()
        if not p.exists():
            raise UserError(f"{str(path)!r} does not exist; expected a run or packed directory, or a bench.json")
        raw.extend(_dir_entries(p) if p.is_dir() else _file_entries(p))

    merged: list[dict[str, Any]] = []
    by_path: dict[str, dict[str, Any]] = {}
    for e in raw:
        key = _key(e.pop("_path", None))
        if key is not None and key in by_path:
            into = by_path[key]
            bench_first = e.get("latency_ms_bs1_p50") is not None and into.get("latency_ms_bs1_p50") is None
            for k in FIELDS:
                if k in ("name", "source"):
                    continue
                if k == "group" and into.get("group") is None:
                    into[k] = e.get(k)
                    continue
                if e.get(k) is not None and (into.get(k) is None or (bench_first and k in _BENCH_KEYS)):
                    into[k] = e[k]
            into["source"] = f"{into['source']}; {e['source']}"
            continue
        merged.append(e)
        if key is not None:
            by_path[key] = e

    # Same name from different sources (two bench runs, a run and its packed export): make the
    # names unique for tables and plots with what tells them apart: the kind, else the folder the
    # source lies in, else a number.
    first: dict[str, dict[str, Any]] = {}
    taken = {e["name"] for e in merged}
    for e in merged:
        name = e["name"]
        if name not in first:
            first[name] = e
            continue
        f = first[name]
        folder = Path(str(e.get("source", "")).split(";")[0].strip()).parent.name
        if e.get("kind") and e.get("kind") != f.get("kind"):
            label = f"{name} [{e['kind']}]"
        elif folder and folder != Path(str(f.get("source", "")).split(";")[0].strip()).parent.name:
            label = f"{name} ({folder})"
        else:
            label = name
        n = 2
        while label == name or label in taken:
            label, n = f"{name} ({n})", n + 1
        e["name"] = label
        taken.add(label)
    return merged
