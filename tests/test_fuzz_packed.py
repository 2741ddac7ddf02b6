"""Generated hostile packed directories through the CLI's own entry point (issue 9).

A fixed seed mutates a small valid packed directory (every encoding, quantizer parameters,
activation ranges, a pruned vocabulary, an xz tokenizer) the way an attacker can: any field of the
manifest or the config, stored tensors and the safetensors header, declared dimensions made
consistent everywhere (and, with every part re-encoded to fit, a few KB declaring GBs),
tokenizer files (garbage, truncated, extra names, custom code), deleted
files; then the attacker makes every hash match. ``size`` and ``eval`` run on each, in this
process. Whatever the input: status 0 (it was still a valid model) or 2 with exactly one line,
never a traceback; no code from the directory runs; nothing in it is written; and no command
raises the process's resident memory more than 200 MiB above where it started (the kernel's
peak-RSS mark is reset before each command: ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import traceback
from pathlib import Path

import pytest
import torch

from hostile_packed import build_base, copy_packed, inflate, read_json, rehash, replace_tensors, write_json

SEED = 20261130
N_CASES = 64
MAX_PEAK_DELTA_MIB = 200
HOSTILE = [None, True, False, 0, -1, 1, 7, 2**31, 10**18, 1e18, 1.5, float("nan"), "", "x", "32", "float16",
           [], [0], [0, 10**18], [32, 32], [[8, 32]], {}, {"kind": "binary"}, [[[[[]]]]], "a" * 3000]
DIMS = [0, 1, 7, 33, 1000, 10**5, 10**7, 10**9]
CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def json_paths(value, path=()):
    """Every (path, value) inside a parsed JSON document."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from json_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from json_paths(v, path + (i,))


def mutate_json(rng: random.Random, doc):
    """Replace, delete or add one value somewhere in ``doc``; returns the new document."""
    paths = [p for p, _ in json_paths(doc) if p]
    path = rng.choice(paths)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    op = rng.random()
    if op < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
    elif op < 0.25 and isinstance(parent, dict):
        parent[rng.choice(["evil", "auto_map", "bits", "shape", "parts"])] = rng.choice(HOSTILE)
    else:
        parent[path[-1]] = rng.choice(HOSTILE)
    return doc


def m_manifest(rng, folder, marker):
    write_json(folder / "manifest.json", mutate_json(rng, read_json(folder / "manifest.json")))


def m_config(rng, folder, marker):
    write_json(folder / "config.json", mutate_json(rng, read_json(folder / "config.json")))
    rehash(folder)


def m_tensor(rng, folder, marker):
    dtype = rng.choice([torch.uint8, torch.float16, torch.float32, torch.int16, torch.int32, torch.float64])
    n = rng.choice([0, 1, 3, 64, 4096, 100_000])

    def fn(tensors):
        key = rng.choice(sorted(tensors))
        tensors[key] = (torch.rand(n) * 300).to(dtype)

    replace_tensors(folder, fn)
    if rng.random() < 0.5:  # leave payload_bytes stale
        m = read_json(folder / "manifest.json")
        m["payload_bytes"] += 1
        write_json(folder / "manifest.json", m)


def m_header(rng, folder, marker):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    n = int.from_bytes(data[:8], "little")
    for _ in range(rng.choice([1, 1, 3])):
        i = rng.randrange(8, 8 + n)
        data[i] = rng.choice(b'{}[]",:0123456789e-9')
    f.write_bytes(bytes(data))
    rehash(folder)


def m_dims(rng, folder, marker):
    """Config dimensions changed and every manifest shape made to match them."""
    from compactbert.export.format.check import expected_tensors

    cfg = read_json(folder / "config.json")
    key = rng.choice(["hidden_size", "type_vocab_size", "max_position_embeddings", "ffn", "num_labels", "head_dim"])
    v = rng.choice(DIMS)
    if key == "ffn":
        cfg["ffn_per_layer"] = [v, cfg["ffn_per_layer"][1]]
    elif key == "hidden_size":
        cfg["hidden_size"] = cfg["embedding_size"] = v
    else:
        cfg[key] = v
    write_json(folder / "config.json", cfg)
    rehash(folder)
    try:
        req, opt = expected_tensors(cfg)
    except ValueError:
        return
    m = read_json(folder / "manifest.json")
    for name, e in m["tensors"].items():
        e["shape"] = list({**opt, **req}.get(name, e["shape"]))
    write_json(folder / "manifest.json", m)


def m_tokenizer(rng, folder, marker):
    import lzma

    tdir = folder / "tokenizer"
    victim = rng.choice(sorted(tdir.iterdir()))
    kind = rng.choice(["garbage", "truncate", "json", "plain-garbage", "extra", "code"])
    if kind == "garbage":
        victim.write_bytes(lzma.compress(bytes(rng.randrange(256) for _ in range(300))))
    elif kind == "truncate":
        victim.write_bytes(victim.read_bytes()[: rng.randrange(1, 40)])
    elif kind == "json":
        victim.write_bytes(lzma.compress(json.dumps(rng.choice(HOSTILE)).encode()))
    elif kind == "plain-garbage":
        (tdir / victim.name.removesuffix(".xz")).write_bytes(bytes(rng.randrange(256) for _ in range(200)))
        victim.unlink()
    elif kind == "extra":
        (tdir / rng.choice(["vocab.pkl", "x.py", "tokenizer.json.gz", ".hidden", "model.bin"])).write_bytes(b"\x80\x04.")
    else:
        (tdir / "tokenization_x.py").write_text(CODE.format(marker=str(marker)))
        cfg = {"tokenizer_class": "XTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}
        for f in tdir.glob("tokenizer_config.json*"):
            f.unlink()
        (tdir / "tokenizer_config.json").write_text(json.dumps(cfg))
    rehash(folder)
    if kind in ("extra", "code") and rng.random() < 0.5:  # on disk, not in the manifest
        m = read_json(folder / "manifest.json")
        m["files"] = {k: v for k, v in m["files"].items() if k.endswith(("safetensors", "config.json", ".xz"))}
        write_json(folder / "manifest.json", m)


def m_delete(rng, folder, marker):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    rng.choice(files).unlink()
    if rng.random() < 0.7:
        if (folder / "manifest.json").exists():
            rehash(folder)


def m_inflate(rng, folder, marker):
    """KBs declaring GBs, consistent in everything but the payload (hostile_packed.inflate)."""
    key = rng.choice(["hidden_size", "ffn", "type_vocab_size", "max_position_embeddings", "num_labels"])
    v = rng.choice([3 * 10**5, 10**6, 2 * 10**6]) if key != "hidden_size" else rng.choice([12000, 20000])
    inflate(folder, **({key: v, "embedding_size": v} if key == "hidden_size" else {key: v}))


MUTATIONS = ([m_manifest] * 4 + [m_config] * 3
             + [m_tensor, m_header, m_dims, m_dims, m_inflate, m_tokenizer, m_tokenizer, m_delete])
ALWAYS_REFUSED = {"m_tokenizer", "m_header", "m_inflate"}


def make_cases(base: Path, data: Path, root: Path, marker: Path) -> list[dict]:
    rng = random.Random(SEED)
    cases = [{"name": "warm-up", "argv": ["eval", str(base), "--task", "sst2", "--data", str(data)]}]
    for i in range(N_CASES):
        folder = copy_packed(base, root / f"c{i:03d}")
        names = []
        for _ in range(rng.choice([1, 1, 1, 2])):
            mutation = rng.choice(MUTATIONS)
            try:
                mutation(rng, folder, marker)
            except Exception:  # noqa: BLE001 - an earlier mutation removed or broke what this one edits
                continue
            names.append(mutation.__name__)
        name = f"c{i:03d}:{'+'.join(names) or 'none'}"
        cases.append({"name": name + ":size", "argv": ["size", str(folder)]})
        cases.append({"name": name + ":eval", "argv": ["eval", str(folder), "--task", "sst2", "--data", str(data)]})
    return cases


def snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def rss_mib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def run(argv: list[str]) -> dict:
    """``main(argv)`` in this process: status, stderr, and how far above the resident memory at
    its start the process peaked while it ran."""
    from compactbert.cli import main

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    start = rss_mib("VmRSS")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except BaseException:  # noqa: BLE001 - a traceback is what the test looks for
            code = "traceback"
            traceback.print_exc(file=err)
    return {"code": code, "stderr": err.getvalue(), "peak_mib": rss_mib("VmHWM") - start}


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    base, data = build_base(root / "base")
    marker = root / "code-ran"
    cases = make_cases(base, data, root / "cases", marker)
    before = snapshot(root / "cases")
    warm = cases.pop(0)
    for _ in range(2):  # first tokenizer and runtime load: not the inputs' doing
        assert run(warm["argv"])["code"] == 0
    results = [{"name": c["name"], **run(c["argv"])} for c in cases]
    return results, marker, before, snapshot(root / "cases")


def test_every_hostile_directory_gets_status_0_or_one_line(fuzz_results):
    results = fuzz_results[0]
    assert len(results) == 2 * N_CASES
    for r in results:
        assert r["code"] in (0, 2), (r["name"], r["stderr"][-2000:])
        lines = r["stderr"].splitlines()
        if r["code"] == 2:
            assert len(lines) == 1 and lines[0].startswith("error: "), (r["name"], lines)
        assert "Traceback" not in r["stderr"], r["name"]
    refused = [r for r in results if r["code"] == 2]
    assert len(refused) >= 0.7 * len(results)  # most mutations break the model; the rest changed harmless values
    for r in results:
        if set(r["name"].split(":")[1].split("+")) <= ALWAYS_REFUSED and r["name"].endswith(":eval"):
            assert r["code"] == 2, r["name"]


def test_no_code_runs_and_nothing_is_written(fuzz_results):
    _, marker, before, after = fuzz_results
    assert not marker.exists()
    assert before == after


def test_no_command_allocates_beyond_a_small_bound(fuzz_results):
    worst = max(fuzz_results[0], key=lambda r: r["peak_mib"])
    assert worst["peak_mib"] < MAX_PEAK_DELTA_MIB, (worst["name"], worst["peak_mib"])
