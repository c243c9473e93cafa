"""PSNR, SSIM and PSNR-B on 8-bit luminance, as Table 2 of the paper measures them.

PSNR and SSIM are scikit-image's (a well-kept implementation); SSIM is configured as Wang et al.
2004: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, population covariances, data range
255, mean over the "valid" window positions. PSNR-B (Yim & Bovik, "Quality assessment of
deblocked images", IEEE TIP 2011) has no scikit-image implementation and torchmetrics' copies a
counting slip of a circulating MATLAB script, so it is written out here.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PEAK = 255.0


def _check(ref: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref)
    out = np.asarray(out)
    if ref.shape != out.shape:
        raise ValueError(f"shapes differ: reference {ref.shape} vs output {out.shape}")
    if ref.ndim != 2:
        raise ValueError(f"metrics take one 2-D (luminance) channel, got shape {ref.shape}")
    return ref.astype(np.float64), out.astype(np.float64)


def psnr(ref: np.ndarray, out: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, peak 255 (``inf`` for identical images)."""
    ref, out = _check(ref, out)
    if np.array_equal(ref, out):
        return math.inf
    return float(peak_signal_noise_ratio(ref, out, data_range=PEAK))


def ssim(ref: np.ndarray, out: np.ndarray) -> float:
    """SSIM of Wang et al. 2004 (window 11, sigma 1.5, K1 0.01, K2 0.03, range 255)."""
    ref, out = _check(ref, out)
    if min(ref.shape) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels, got {ref.shape}")
    return float(
        structural_similarity(
            ref,
            out,
            data_range=PEAK,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            K1=0.01,
            K2=0.03,
        )
    )


def block_edge_terms(img: np.ndarray, block: int = 8) -> tuple[float, float]:
    """``(D_B, D_Bc)`` of Yim & Bovik 2011, eqs. (4)-(7): mean squared step across / inside 8x8 blocks.

    ``D_B`` sums squared differences of neighbouring pixels across block boundaries (both
    directions), ``D_Bc`` those of neighbours inside blocks. They are normalised by the pair
    counts *as the paper writes them*, ``N_HB = N_V (N_H / B - 1)`` and ``N_VB = N_H (N_V / B - 1)``
    (fractional where a side is not a multiple of B). NaN for an image under two blocks a side.
    """
    x = np.asarray(img, dtype=np.float64)
    h, w = x.shape
    if h < 2 * block or w < 2 * block:
        return math.nan, math.nan  # no interior block boundary to measure
    dh = (x[:, 1:] - x[:, :-1]) ** 2  # pair (c, c+1) at index c
    dv = (x[1:, :] - x[:-1, :]) ** 2
    hb = np.zeros(w - 1, dtype=bool)
    hb[block - 1 :: block] = True
    vb = np.zeros(h - 1, dtype=bool)
    vb[block - 1 :: block] = True
    n_hb = h * (w / block - 1)
    n_vb = w * (h / block - 1)
    n_hbc = h * (w - 1) - n_hb
    n_vbc = w * (h - 1) - n_vb
    d_b = (dh[:, hb].sum() + dv[vb, :].sum()) / (n_hb + n_vb)
    d_bc = (dh[:, ~hb].sum() + dv[~vb, :].sum()) / (n_hbc + n_vbc)
    return float(d_b), float(d_bc)


def block_edge_ratio(img: np.ndarray, block: int = 8) -> float:
    """``D_B / D_Bc``: how much larger the squared step across 8x8 block edges is than inside blocks.

    About 1 for a photo (its edges ignore the coding grid), 3.8 for a Q10 JPEG (BSDS500 test mean);
    the excess over 1 is what PSNR-B's BEF penalises (:func:`blocking_effect_factor`). NaN where
    undefined.
    """
    d_b, d_bc = block_edge_terms(img, block)
    return d_b / d_bc if d_bc > 0 else math.nan


def blocking_effect_factor(img: np.ndarray, block: int = 8) -> float:
    """BEF of Yim & Bovik 2011, eq. (8): ``eta (D_B - D_Bc)`` where ``D_B > D_Bc``, else 0.

    ``eta = log2(B) / log2(min(H, W))``; ``D_B``, ``D_Bc`` from :func:`block_edge_terms`. These
    pair counts reproduce the JPEG row of Table 2 on BSDS500 test (481x321) to 0.01 dB; integer
    counts do not. 0 for an image under two blocks a side (no interior boundary).
    """
    d_b, d_bc = block_edge_terms(img, block)
    if math.isnan(d_b) or d_b <= d_bc:
        return 0.0
    h, w = np.shape(img)
    return float(math.log2(block) / math.log2(min(h, w)) * (d_b - d_bc))


def psnr_b(ref: np.ndarray, out: np.ndarray, block: int = 8) -> float:
    """PSNR-B (Yim & Bovik 2011, eq. 10): PSNR with MSE + BEF(out) in the denominator."""
    ref, out = _check(ref, out)
    mse_b = np.mean((ref - out) ** 2) + blocking_effect_factor(out, block)
    if mse_b == 0:
        return math.inf
    return float(10.0 * math.log10(PEAK**2 / mse_b))


def all_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """``{"psnr", "ssim", "psnrb"}`` of ``out`` against ``ref`` (both 8-bit luminance)."""
    return {"psnr": psnr(ref, out), "ssim": ssim(ref, out), "psnrb": psnr_b(ref, out)}


def rgb_metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """The colour protocol (issue 18; the grey protocol of Table 2 is :func:`all_metrics`) on (H, W, 3) RGB:

    - PSNR: one MSE over every pixel of every channel (what QGAC and FBCNN report as RGB PSNR);
    - SSIM: the mean of the three channels' SSIM (:func:`ssim` on each);
    - PSNR-B: that MSE plus the mean of the channels' BEF (:func:`blocking_effect_factor`).
    """
    ref, out = np.asarray(ref), np.asarray(out)
    if ref.shape != out.shape or ref.ndim != 3 or ref.shape[2] != 3:
        raise ValueError(f"rgb_metrics takes two (H, W, 3) images of one shape, got {ref.shape} and {out.shape}")
    r, o = ref.astype(np.float64), out.astype(np.float64)
    mse = float(np.mean((r - o) ** 2))
    bef = float(np.mean([blocking_effect_factor(o[..., c]) for c in range(3)]))
    return {"psnr": math.inf if mse == 0 else float(peak_signal_noise_ratio(r, o, data_range=PEAK)),
            "ssim": float(np.mean([ssim(ref[..., c], out[..., c]) for c in range(3)])),
            "psnrb": math.inf if mse + bef == 0 else 10.0 * math.log10(PEAK**2 / (mse + bef))}
