"""Wall time and peak memory of the ``otm restore`` command, as a user runs it.

    OMP_NUM_THREADS=2 python benchmarks/bench_restore.py [--models baseline-q10 one-to-many-q10] [--json out.json]

Inputs: BSDS500 test 100007 (481x321 colour JPEG, found by ``resolve_bsds500``; else scikit-image's ``chelsea``)
and a 4000x3000 (12 MP) colour JPEG made from it (Lanczos upscale plus mild noise, quality 90), so
the large case is a real JPEG of photo size. Each (input, model, float32 / ``--bf16``) runs the
command ``--repeats`` times (default 3; the median is reported, with the range), each in a fresh
process under ``/usr/bin/time -v``: start-up, model loading, decoding, restoring (tiled for the
large image), projection and writing the PNG are all counted. Seconds per megapixel divide the
whole command's time. Not a test: timings depend on what else runs.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from otmlib.datasets import resolve_bsds500


def make_inputs(folder: Path) -> list[Path]:
    """The 481x321 photo (copied byte for byte) and a 12 MP JPEG made from it."""
    source = resolve_bsds500()  # ../shared, OTM_DATA or the download cache; says which
    print(source.message, file=sys.stderr)
    photo = None if source.is_samples else source.root / "test" / "100007.jpg"
    if photo is not None and photo.exists():
        small = folder / photo.name
        small.write_bytes(photo.read_bytes())
    else:
        from skimage import data

        small = folder / "chelsea.jpg"
        Image.fromarray(data.chelsea()).save(small, quality=75)
    big = Image.open(small).convert("RGB").resize((4000, 3000), Image.Resampling.LANCZOS)
    noisy = np.asarray(big, np.float32) + np.random.default_rng(0).normal(0, 2, (3000, 4000, 3))
    large = folder / "photo_12mp.jpg"
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(large, quality=90)
    return [small, large]


def time_restore(image: Path, model: str, bf16: bool, out: Path, repeats: int) -> dict:
    """Median (and range) of ``repeats`` fresh runs of the command; peak memory is the largest seen."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "otmlib.cli", "restore", str(image), "-o", str(out),
           "--model", model, "--force", "--quiet"] + (["--bf16"] if bf16 else [])
    times, peaks = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if run.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
        peaks.append(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1)))
    seconds = statistics.median(times)
    w, h = Image.open(image).size
    mp = w * h / 1e6
    return {"input": image.name, "size": f"{w}x{h}", "model": model, "bf16": bf16, "seconds": round(seconds, 2),
            "min_s": round(min(times), 2), "max_s": round(max(times), 2), "repeats": repeats,
            "s_per_mp": round(seconds / mp, 2), "peak_gb": round(max(peaks) / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["baseline-q10", "one-to-many-q10"])
    ap.add_argument("--repeats", type=int, default=3, help="fresh runs per case; the median is reported")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for image in make_inputs(tmp):
            for model in args.models:
                for bf16 in (False, True):
                    row = time_restore(image, model, bf16, tmp / "out", args.repeats)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
