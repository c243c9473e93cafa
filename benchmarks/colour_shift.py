"""Where the colour shift of a Q10 colour JPEG comes from (the colour issue's "no colour shift" target).

For each BSDS500 test image coded as Pillow (libjpeg) codes it, 4:2:0 at quality 10: the largest gap between the
mean Cb or Cr (JFIF levels) of the decoded image and of the original, measured twice: on the decoder's YCbCr
output (jpeglib, before any conversion to RGB) and on its RGB output (converted and clipped to 0..255, what a
viewer and the colour protocol see). The first is the quantiser's own bias, the second adds gamut clipping.

Not a test. One core, about a minute:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/colour_shift.py --json benchmarks/colour_shift_2026-12-05.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from otmlib import jpeg
from otmlib.imageio import list_images, load_image


def shifts(rgb: np.ndarray, quality: int) -> tuple[float, float]:
    """(gap before the RGB conversion, gap after it) for one image, JFIF levels."""
    import jpeglib

    data = jpeg.encode(rgb, quality, "4:2:0")
    fd, tmp = tempfile.mkstemp(suffix=".jpg")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        ycc = jpeglib.read_spatial(tmp, out_color_space=jpeglib.Colorspace.JCS_YCbCr).spatial.astype(np.float64)
    finally:
        os.unlink(tmp)
    orig, dec = jpeg.rgb_to_jfif(rgb), jpeg.rgb_to_jfif(jpeg.decode(data))
    gap = lambda a: float(max(abs(a[..., c].mean() - orig[..., c].mean()) for c in (1, 2)))  # noqa: E731
    return gap(ycc), gap(dec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/BSDS500/test")
    p.add_argument("--quality", type=int, default=10)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    rows = [(f.name, *shifts(load_image(f, exif=False), args.quality)) for f in list_images(args.data)]
    a = np.array([r[1:] for r in rows])
    out = {"data": args.data, "quality": args.quality, "images": len(rows)}
    for i, name in enumerate(("decoded YCbCr", "decoded RGB")):
        out[name] = {"mean": round(float(a[:, i].mean()), 3), "max": round(float(a[:, i].max()), 3),
                     "share_above_0.5": round(float((a[:, i] > 0.5).mean()), 3)}
    out["largest_rgb"] = [{"image": r[0], "ycbcr": round(r[1], 3), "rgb": round(r[2], 3)}
                          for r in sorted(rows, key=lambda r: -r[2])[:5]]
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
