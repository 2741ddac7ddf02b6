"""The teacher's outputs, computed once per training example and read back at every step.

A distillation stage runs the frozen teacher on every batch. On a CPU that forward is about a
quarter of a step's matrix work (XTC on MiniLM-L6: the teacher's 38 products against the student's
38 forward and 76 backward ones). The teacher is frozen and in eval mode (no dropout) and the
training examples are the same every epoch, so what it says about an example is the same each time
it is seen: an 18-epoch run computes it 18 times.

:class:`TeacherCache` computes it once, in one pass over the examples (batches sorted by length),
and keeps for each example, over its real tokens only, the outputs distillation reads:

* ``logits``: (labels,);
* ``hidden_states``: (layers + 1, tokens, width);
* ``attentions``: (layers, heads, tokens, tokens);
* ``last_hidden_state``: (tokens, width), for a bare encoder.

They are stored as float16 (relative rounding at most 2**-11) in one memory-mapped file, which
runs on the same machine share through the page cache (opening it asks the kernel to read it in). At a step,
:meth:`TeacherCache.outputs` pads the batch's rows back to (batch, seq, ...), with zeros at the
padding positions. Every distillation term masks those positions out, so the loss is the live
teacher's up to that rounding.

Where it lives: ``$COMPACTBERT_CACHE`` (default ``~/.cache/compactbert``), under
``teacher-outputs/<key>``. The key is a hash of:

* the teacher's class, config and weights;
* the examples' token ids;
* the outputs asked for and the autocast setting;
* the format version.

So a run with the same teacher and data reuses it: another recipe, a resumed run, the next stage.
Anything else gets its own. The first run builds it under a lock, in a temporary folder renamed when
complete, so two runs started together build it once, and an interrupted build leaves no half cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

__all__ = ["TeacherCache", "cache_root", "estimate_bytes", "FORMAT_VERSION"]

FORMAT_VERSION = 1
BUILD_BATCH = 64  # examples per teacher forward while building
FP16_MAX = 65504.0


def cache_root() -> Path:
    """``$COMPACTBERT_CACHE``, else ``$XDG_CACHE_HOME/compactbert``, else ``~/.cache/compactbert``."""
    env = os.environ.get("COMPACTBERT_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "compactbert"


def _layout(teacher: torch.nn.Module, fields: Sequence[str]) -> dict[str, tuple]:
    """Per-example shape of each stored field; "T" stands for the example's token count."""
    cfg = teacher.config
    layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layers"))
    width = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "dim"))
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads"))
    shapes = {
        "logits": (int(getattr(cfg, "num_labels", 1)),),
        "hidden_states": (layers + 1, "T", width),
        "attentions": (layers, heads, "T", "T"),
        "last_hidden_state": ("T", width),
    }
    return {f: shapes[f] for f in fields}


def _numel(shape: tuple, tokens: int) -> int:
    return math.prod(tokens if d == "T" else d for d in shape)


def estimate_bytes(teacher: torch.nn.Module, fields: Sequence[str], lengths: Sequence[int]) -> int:
    """Bytes the cache of ``fields`` for examples of these token counts takes (float16)."""
    layout = _layout(teacher, fields)
    return 2 * sum(_numel(s, int(t)) for t in lengths for s in layout.values())


def _fingerprint(teacher: torch.nn.Module, features: Sequence[dict], input_keys: Sequence[str],
                 fields: Sequence[str], autocast: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": FORMAT_VERSION, "class": type(teacher).__name__, "fields": list(fields),
                         "inputs": sorted(input_keys), "autocast": autocast}, sort_keys=True).encode())
    h.update(teacher.config.to_json_string(use_diff=False).encode())
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    for k in sorted(input_keys):
        if k == "attention_mask":
            continue
        for f in features:
            ids = np.asarray(f.get(k, ()), dtype=np.int64)
            h.update(np.int64(ids.size).tobytes())
            h.update(ids.tobytes())
    return h.hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class TeacherCache:
    """The stored teacher outputs of a fixed list of examples (see the module docstring).

    Build or open one with :meth:`open_or_build`; read a batch's with :meth:`outputs`.
    """

    def __init__(self, folder: Path):
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != FORMAT_VERSION:
            raise RuntimeError(f"teacher cache {folder}: format {meta.get('version')}, expected {FORMAT_VERSION}")
        self.folder = folder
        self.layout = {k: tuple(v) for k, v in meta["layout"].items()}
        self.lengths = np.load(folder / "lengths.npy")
        self.offsets = np.load(folder / "offsets.npy")
        with open(folder / "data.f16", "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
            # every example is read once per epoch: have the kernel read the file in now, in the
            # background, rather than one example at a time from the disk during the first epoch
            self._map.madvise(mmap.MADV_WILLNEED)
        self.data = np.frombuffer(self._map, dtype=np.float16)
        end = int(self.offsets[-1]) + self._example_numel(len(self.lengths) - 1)
        if self.data.size != end:
            raise RuntimeError(f"teacher cache {folder}: data holds {self.data.size} values, the index {end}")

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def nbytes(self) -> int:
        return int(self.data.size) * 2

    def _example_numel(self, i: int) -> int:
        return sum(_numel(s, int(self.lengths[i])) for s in self.layout.values())

    # ------------------------------------------------------------------ building
    @classmethod
    def open_or_build(
        cls, teacher: torch.nn.Module, features: Sequence[dict], input_keys: Sequence[str], collate: Any,
        forward_kwargs: dict[str, Any], fields: Sequence[str], autocast: bool, device: torch.device,
        root: Path | None = None, log: Any = print,
    ) -> "TeacherCache":
        """The cache for ``teacher`` on ``features``: opened when a run built it already, else built.

        Args:
            teacher: the frozen teacher (eval mode), on ``device``.
            features: encoded examples (``input_ids``, ...); step batches index into this list.
            input_keys: the inputs the live teacher gets (``input_ids``, ``attention_mask``, ...).
            collate: pads a list of features into a batch dict (the loop's Collator).
            forward_kwargs: ``output_hidden_states`` / ``output_attentions`` as the live forward.
            fields: the outputs to keep (names in the module docstring).
            autocast: whether the live teacher runs under bf16 autocast.
            root: the cache folder (default :func:`cache_root`).
            log: where the one-line notes go.
        """
        root = Path(root) if root is not None else cache_root()
        key = _fingerprint(teacher, features, input_keys, fields, autocast)
        folder = root / "teacher-outputs" / key
        with _locked(root / "teacher-outputs" / f"{key}.lock"):
            if folder.exists():
                try:
                    cache = cls(folder)
                    if len(cache) == len(features):
                        log(f"distillation: the teacher's outputs come from the cache {folder}")
                        return cache
                    why = f"it holds {len(cache)} examples, not {len(features)}"
                except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
                    why = f"{type(e).__name__}: {e}"
                log(f"distillation: the cache {folder} is unreadable ({why}); computing it again")
                shutil.rmtree(folder)
            cls._build(folder, teacher, features, input_keys, collate, forward_kwargs, fields, autocast, device, log)
        return cls(folder)

    @classmethod
    def _build(cls, folder: Path, teacher, features, input_keys, collate, forward_kwargs, fields, autocast, device,
               log) -> None:
        from ..data.batching import batch_order

        if not features:
            raise ValueError("no examples to cache the teacher's outputs for")
        lengths = np.array([len(f["input_ids"]) for f in features], dtype=np.int64)
        layout = _layout(teacher, fields)
        size = estimate_bytes(teacher, fields, lengths)
        log(f"distillation: computing the teacher's outputs once for {len(features):,} examples "
            f"({size / 2**30:.2f} GiB, float16) in {folder}")
        start = time.monotonic()
        per = np.array([sum(_numel(s, int(t)) for s in layout.values()) for t in lengths], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(per)[:-1]]).astype(np.int64)
        tmp = folder.parent / f"{folder.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            data = np.memmap(tmp / "data.f16", dtype=np.float16, mode="w+", shape=(int(per.sum()),))
            order = batch_order(lengths.tolist(), BUILD_BATCH, shuffle=False, group_by_length=True)
            kw = {**forward_kwargs, "return_dict": True}
            with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                for idx in order:
                    batch = {k: v.to(device) for k, v in collate([features[i] for i in idx]).items() if k in input_keys}
                    out = teacher(**batch, **kw)
                    for j, i in enumerate(idx):
                        flat = _example_values(out, j, int(lengths[i]), layout)
                        if not torch.isfinite(flat).all() or flat.abs().max() > FP16_MAX:
                            raise OverflowError(f"example {i}: a teacher output does not fit float16")
                        data[offsets[i]: offsets[i] + per[i]] = flat.numpy()
            data.flush()
            del data
            np.save(tmp / "lengths.npy", lengths)
            np.save(tmp / "offsets.npy", offsets)
            (tmp / "meta.json").write_text(json.dumps({"version": FORMAT_VERSION, "layout": layout,
                                                       "examples": len(features)}))
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log(f"distillation: teacher outputs cached in {time.monotonic() - start:.0f} s")

    # ------------------------------------------------------------------ reading
    def outputs(self, index: Sequence[int], attention_mask: torch.Tensor, device: torch.device) -> SimpleNamespace:
        """The teacher's outputs for examples ``index`` padded like a batch with ``attention_mask``
        (batch, seq): the fields of a Hugging Face ModelOutput, float32, zeros at the padding."""
        n, seq = attention_mask.shape
        real = attention_mask.sum(1).tolist()
        index = [int(i) for i in index]
        if len(index) != n or any(int(self.lengths[i]) != int(r) for i, r in zip(index, real)):
            raise RuntimeError("teacher cache: the batch's token counts do not match the cached examples "
                               f"{index[:4]}...; the batch is not the examples it was said to be")
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.layout.items():
            full = tuple(seq if d == "T" else d for d in shape)
            if name == "hidden_states":
                out[name] = torch.zeros((full[0], n, *full[1:]), dtype=torch.float32)
            elif name == "attentions":
                out[name] = torch.zeros((full[0], n, *full[1:]), dtype=torch.float32)
            else:
                out[name] = torch.zeros((n, *full), dtype=torch.float32)
        for j, i in enumerate(index):
            t, pos = int(self.lengths[i]), int(self.offsets[i])
            for name, shape in self.layout.items():
                k = _numel(shape, t)
                block = torch.from_numpy(np.array(self.data[pos: pos + k])).reshape(
                    tuple(t if d == "T" else d for d in shape))
                pos += k
                dst = out[name]
                if name == "logits":
                    dst[j] = block
                elif name == "last_hidden_state":
                    dst[j, :t] = block
                elif name == "hidden_states":
                    dst[:, j, :t] = block
                else:  # attentions (layers, heads, T, T)
                    dst[:, j, :, :t, :t] = block
        res = SimpleNamespace(logits=None, hidden_states=None, attentions=None, last_hidden_state=None)
        for name, t in out.items():
            t = t.to(device)
            setattr(res, name, tuple(t.unbind(0)) if name in ("hidden_states", "attentions") else t)
        return res


def _example_values(out: Any, j: int, t: int, layout: dict[str, tuple]) -> torch.Tensor:
    """Example ``j``'s stored values (its first ``t`` tokens), flattened in layout order, on the CPU."""
    parts = []
    for name in layout:
        if name == "logits":
            parts.append(out.logits[j])
        elif name == "last_hidden_state":
            parts.append(out.last_hidden_state[j, :t])
        elif name == "hidden_states":
            parts.append(torch.stack([h[j, :t] for h in out.hidden_states]))
        else:
            parts.append(torch.stack([a[j, :, :t, :t] for a in out.attentions]))
    return torch.cat([p.float().reshape(-1) for p in parts]).cpu()
