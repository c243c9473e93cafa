"""Measuring candidates where the paper only shows pictures (Sec. 4.2 names the lack of an
objective favourability measure as open): per image and method, full-reference scores (PSNR,
SSIM, PSNR-B), JPEG consistency (share of DCT coefficients inside the input's intervals, eq. 5),
over-smoothness (texture ratio), no-reference naturalness (BRISQUE, lower is better) and, for
the one-to-many model, diversity across candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from otmlib import jpeg
from otmlib.imageio import load_image
from otmlib.metrics import all_metrics
from otmlib.models import Generator
from otmlib.restore import diversity, interval_share, restore_luma, texture_ratio


@lru_cache(maxsize=1)
def _brisque():
    from brisque import BRISQUE  # ships its SVR model: no download

    return BRISQUE(url=False)


def brisque_score(img: np.ndarray) -> float:
    """BRISQUE (Mittal et al. 2012) of an 8-bit image; grey is repeated to RGB. Lower is more natural."""
    import warnings

    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    with warnings.catch_warnings():  # brisque 0.2.0 converts 1-element arrays to floats (numpy < 2.4 pinned)
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(_brisque().score(img))


def measure_image(
    y: np.ndarray, quality: int, G_base: Generator | None, G_otm: Generator | None, seeds: Sequence[int]
) -> list[dict]:
    """Rows (one per method: JPEG, baseline, each candidate) of measurements on luminance ``y``."""
    comp = jpeg.compress(y, quality)
    outputs = {"JPEG": comp.pixels}
    if G_base is not None:
        outputs["baseline"] = restore_luma(G_base, comp.pixels)[0]
    cands = restore_luma(G_otm, comp.pixels, list(seeds)) if G_otm is not None else []
    for s, c in zip(seeds, cands):
        outputs[f"one-to-many seed {s}"] = c
    rows = []
    for name, out in outputs.items():
        rows.append({
            "method": "one-to-many" if name.startswith("one-to-many") else name,
            "output": name,
            **all_metrics(y, out),
            "interval_share": interval_share(out, comp.pixels, comp.luma_table),
            "texture_ratio": texture_ratio(out, y),
            "brisque": brisque_score(out),
        })
    if len(cands) > 1:
        for r in rows:
            if r["method"] == "one-to-many":
                r["diversity"] = diversity(cands)
    return rows


def measure_folder(
    files: Sequence[Path],
    quality: int,
    G_base: Generator | None,
    G_otm: Generator | None,
    seeds: Sequence[int] = (0, 1, 2, 3),
    progress: bool = True,
):
    """Per-output measurements over images (a DataFrame with an ``image`` column)."""
    import pandas as pd
    from tqdm.auto import tqdm

    rows = []
    for f in tqdm(list(files), desc="measuring", unit="img", disable=not progress):
        y = jpeg.luminance(load_image(f, exif=False, min_side=16))
        for r in measure_image(y, quality, G_base, G_otm, seeds):
            rows.append({"image": Path(f).name, **r})
    return pd.DataFrame(rows)


def summarise(per_output) -> "object":
    """Mean of every measure per method (candidates pooled), with the number of outputs averaged."""
    cols = [c for c in ("psnr", "ssim", "psnrb", "interval_share", "texture_ratio", "brisque", "diversity")
            if c in per_output]
    out = per_output.groupby("method", sort=False)[cols].mean()
    out.insert(0, "outputs", per_output.groupby("method", sort=False).size())
    return out.reset_index()
