"""Carry a teacher run to a lent GPU machine under its 64 MiB limit: its weights as fp16 values.

Here: ``python benchmarks/carry_teacher.py pack runs/stsb-teacher .gpu/stsb-teacher`` writes the
run's model with every float tensor rounded to fp16 (half the bytes), plus its eval.json, run.json
and config.yaml. There: ``python3 benchmarks/carry_teacher.py unpack .gpu/stsb-teacher /tmp/t/stsb-teacher``
writes the same values back as fp32, so every script reads it like the original. The rounded teacher
is not the original: evaluate it (``compactbert eval DIR/model``) and put that eval.json in the
carried folder (STS-B: Spearman 0.84650 vs 0.84649 for the fp32 teacher).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

WEIGHTS = Path("model") / "model.safetensors"
BESIDE = ["eval.json", "run.json", "config.yaml"]


def convert(src: Path, dst: Path, half: bool) -> None:
    sd = load_file(str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.half() if half else v.float()).contiguous() if v.is_floating_point() else v for k, v in sd.items()},
              str(dst), metadata={"format": "pt"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["pack", "unpack"])
    p.add_argument("src", type=Path, help="the teacher run directory (pack) or the carried folder (unpack)")
    p.add_argument("dst", type=Path, help="a new folder")
    a = p.parse_args(argv)
    if not (a.src / WEIGHTS).is_file():
        p.exit(2, f"error: {a.src / WEIGHTS} not found\n")
    if a.dst.exists() and any(a.dst.iterdir()):
        p.exit(2, f"error: {a.dst} exists and is not empty; give a new folder\n")
    (a.dst / "model").mkdir(parents=True, exist_ok=True)
    for f in (a.src / "model").iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy2(f, a.dst / "model" / f.name)
    for name in BESIDE:
        if (a.src / name).is_file():
            shutil.copy2(a.src / name, a.dst / name)
    convert(a.src / WEIGHTS, a.dst / WEIGHTS, half=a.mode == "pack")
    print(f"{a.mode}: {a.dst} ({(a.dst / WEIGHTS).stat().st_size:,} bytes of weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
