"""otmlib.metrics against independent references: hand computations, torchmetrics, and
(in test_evaluate) the paper's printed JPEG row."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from otmlib import jpeg, metrics


def test_psnr_hand_computation():
    ref = np.zeros((16, 16), np.uint8)
    out = ref.copy()
    out[0, :4] = 16  # MSE = 4 * 256 / 256 = 4
    assert metrics.psnr(ref, out) == pytest.approx(10 * math.log10(255**2 / 4))
    assert metrics.psnr(ref, ref) == math.inf


def test_ssim_matches_torchmetrics(camera):
    dec = jpeg.compress(camera, 10).pixels
    ours = metrics.ssim(camera, dec)
    t = lambda a: torch.tensor(a, dtype=torch.float64)[None, None]  # noqa: E731
    ref = structural_similarity_index_measure(
        t(dec), t(camera), gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0, k1=0.01, k2=0.03
    ).item()
    assert ours == pytest.approx(ref, abs=2e-3)
    assert metrics.ssim(camera, camera) == pytest.approx(1.0)
    assert 0.5 < ours < 0.95


def _terms_by_loops(x: np.ndarray, b: int = 8) -> tuple[float, float]:
    """(D_B, D_Bc) of Yim & Bovik 2011 eqs. (4)-(8), written pair by pair."""
    x = x.astype(np.float64)
    h, w = x.shape
    sb = sbc = 0.0
    for r in range(h):
        for c in range(w - 1):
            d = (x[r, c] - x[r, c + 1]) ** 2
            if (c + 1) % b == 0:
                sb += d
            else:
                sbc += d
    for r in range(h - 1):
        for c in range(w):
            d = (x[r, c] - x[r + 1, c]) ** 2
            if (r + 1) % b == 0:
                sb += d
            else:
                sbc += d
    n_hb, n_vb = h * (w / b - 1), w * (h / b - 1)
    db = sb / (n_hb + n_vb)
    dbc = sbc / (h * (w - 1) - n_hb + w * (h - 1) - n_vb)
    return db, dbc


def _bef_by_loops(x: np.ndarray, b: int = 8) -> float:
    db, dbc = _terms_by_loops(x, b)
    h, w = x.shape
    return math.log2(b) / math.log2(min(h, w)) * (db - dbc) if db > dbc else 0.0


@pytest.mark.parametrize("shape", [(32, 48), (27, 41)])
def test_bef_matches_the_formula_written_out(shape):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=shape).astype(np.uint8)
    x[:, 7::8] = 255  # strong steps at the block boundaries
    bef = metrics.blocking_effect_factor(x)
    assert bef > 0
    assert bef == pytest.approx(_bef_by_loops(x), rel=1e-12)


@pytest.mark.parametrize("shape", [(32, 48), (27, 41)])
def test_block_edge_terms_match_the_loops(shape, camera):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=shape).astype(np.uint8)
    x[7::8, :] = 0
    d_b, d_bc = metrics.block_edge_terms(x)
    assert (d_b, d_bc) == pytest.approx(_terms_by_loops(x), rel=1e-12)
    assert metrics.block_edge_ratio(x) == pytest.approx(d_b / d_bc, rel=1e-12)
    ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    assert metrics.block_edge_ratio(ramp) == pytest.approx(1.0)  # by hand: D_B = D_Bc = 1/2
    dec = jpeg.compress(camera, 10).pixels
    assert metrics.block_edge_ratio(dec) > 2 > 1.2 > metrics.block_edge_ratio(camera)
    assert math.isnan(metrics.block_edge_ratio(np.zeros((8, 40), np.uint8)))


def test_psnrb_hand_cases(camera):
    ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))  # every step equal: no blocking
    assert metrics.blocking_effect_factor(ramp) == 0.0
    noisy = np.clip(ramp.astype(int) + 3, 0, 255).astype(np.uint8)
    assert metrics.psnr_b(ramp, noisy) == pytest.approx(metrics.psnr(ramp, noisy))
    dec = jpeg.compress(camera, 10).pixels
    assert metrics.psnr_b(camera, dec) < metrics.psnr(camera, dec)  # JPEG is blocky


def test_metrics_refuse_mismatched_or_colour_inputs(chelsea):
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="one 2-D"):
        metrics.psnr(chelsea, chelsea)
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
