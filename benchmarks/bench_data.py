"""Is caching the coded images worth it? Cost of reading + JPEG-coding an image vs a cached patch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--data DIR]
"""

from __future__ import annotations

import argparse
import time

from otmlib.data import DataConfig, JpegPatchDataset, code_image
from otmlib.datasets import resolve_bsds500
from otmlib.imageio import list_images, load_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="BSDS500 root (default: resolved as for training)")
    p.add_argument("--images", type=int, default=20)
    args = p.parse_args()
    src = resolve_bsds500(args.data)
    if src.is_samples:
        raise SystemExit(src.message)
    files = list_images(src.root / "train")[: args.images]
    t = time.perf_counter()
    imgs = [load_image(f) for f in files]
    t_load = (time.perf_counter() - t) / len(files)
    t = time.perf_counter()
    coded = [code_image(f.name, im, 10, False) for f, im in zip(files, imgs)]
    t_code = (time.perf_counter() - t) / len(files)
    ds = JpegPatchDataset(coded, DataConfig(patch=64))
    t = time.perf_counter()
    for i in range(2000):
        ds[i]
    t_item = (time.perf_counter() - t) / 2000
    mb = sum(c.gt.nbytes + c.coded.nbytes for c in coded) / len(coded) * 290 / 1e6
    print(f"read a file: {t_load * 1e3:.2f} ms; luminance + JPEG round trip: {t_code * 1e3:.2f} ms; "
          f"a patch from the cache: {t_item * 1e3:.3f} ms")
    print(f"coding per patch would cost {(t_load + t_code) / t_item:.0f}x a cached patch; "
          f"the cache of 290 BSDS500 images takes {mb:.0f} MB")


if __name__ == "__main__":
    main()
