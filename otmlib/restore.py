"""Restoring real images with a trained G: candidates, colour, JPEG consistency, measurements.

Colour (paper Sec. 4.3) with a luminance model: the image is split into MATLAB YCbCr, Y is
restored by the model, and Cb/Cr are kept as the JPEG decoder upsampled them. Chroma blocking
and colour bleeding therefore remain; they are far less visible than luminance artifacts at the
same quality, but this is a luminance restoration, not the paper's RGB model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from otmlib import jpeg
from otmlib.models import Generator, restore_tiled


@dataclass
class Restored:
    """Candidates for one image: uint8 arrays shaped like the input, one per seed."""

    candidates: list[np.ndarray]
    seeds: list[int | None]  # None for the baseline (one deterministic output)


def _as_tensor(y: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(y.astype(np.float32))[None, None].to(device)


def restore_luma(
    G: Generator,
    y: np.ndarray,
    seeds: list[int] | None = None,
    *,
    tile: int = 512,
    bf16: bool = False,
) -> list[np.ndarray]:
    """Restore 8-bit luminance ``y`` (H, W): one uint8 output per seed (one for the baseline)."""
    device = next(G.parameters()).device
    x = _as_tensor(y, device)
    if bf16 and device.type == "cpu":  # oneDNN's bf16 kernels want NHWC (measured 4x over NCHW fp32)
        G = G.to(memory_format=torch.channels_last)
    seeds_ = seeds if G.cfg.noise else [None]
    outs = []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cpu"):
        for s in seeds_ or [0]:
            out = restore_tiled(G, x, tile=tile, seed=s) if G.cfg.noise else restore_tiled(G, x, tile=tile)
            outs.append(out[0, 0].float().clamp(0, 255).round().to(torch.uint8).cpu().numpy())
    return outs


def restore_image(
    G: Generator,
    img: np.ndarray,
    seeds: list[int] | None = None,
    *,
    tile: int = 512,
    bf16: bool = False,
) -> Restored:
    """Restore a decoded JPEG (grey (H, W) or RGB (H, W, 3) uint8) with a luminance model.

    Colour images: see the module docstring (Y restored, chroma kept).
    """
    if G.cfg.channels != 1:
        raise ValueError("restore_image expects a luminance (1-channel) model")
    seeds = list(seeds) if seeds else [0]
    if img.ndim == 2:
        ys = restore_luma(G, img, seeds, tile=tile, bf16=bf16)
        return Restored(ys, seeds if G.cfg.noise else [None])
    ycc = jpeg.rgb_to_ycbcr(img)
    y8 = jpeg.to_uint8(ycc[..., 0])
    ys = restore_luma(G, y8, seeds, tile=tile, bf16=bf16)
    outs = []
    for y in ys:
        merged = ycc.copy()
        merged[..., 0] = y
        outs.append(jpeg.to_uint8(jpeg.ycbcr_to_rgb(merged)))
    return Restored(outs, seeds if G.cfg.noise else [None])


def estimate_ijg_quality(table: np.ndarray) -> tuple[int, float]:
    """The IJG quality whose luminance table is closest to ``table`` and the mean relative gap."""
    best = min(range(1, 101), key=lambda q: np.abs(np.log(jpeg.ijg_table(q) / table)).mean())
    return best, float(np.abs(np.log(jpeg.ijg_table(best) / table)).mean())


# --------------------------------------------------------------------------------------------
# Measurements of candidates (issue 7): JPEG consistency, texture, diversity
# --------------------------------------------------------------------------------------------


def interval_share(candidate: np.ndarray, decoded: np.ndarray, qtable: np.ndarray) -> float:
    """Share of the candidate's DCT coefficients inside the input JPEG's intervals (eq. 5)."""
    d = torch.from_numpy(decoded.astype(np.float64))[None, None]
    c = torch.from_numpy(candidate.astype(np.float64))[None, None]
    k = jpeg.quantised_indices(d, qtable)
    return float((jpeg.interval_excess(c, k, qtable) == 0).double().mean())


def gradient_energy(img: np.ndarray) -> float:
    """Mean gradient magnitude (central differences), a simple measure of high-frequency detail."""
    g = img.astype(np.float64)
    gy, gx = np.gradient(g)
    return float(np.mean(np.hypot(gx, gy)))


def texture_ratio(output: np.ndarray, reference: np.ndarray) -> float:
    """Over-smoothness: gradient energy of ``output`` over that of the ground truth (1 = as detailed)."""
    return gradient_energy(output) / max(gradient_energy(reference), 1e-12)


def diversity(candidates: list[np.ndarray]) -> float:
    """Mean per-pixel standard deviation across candidates (0 for a deterministic model)."""
    return float(np.std(np.stack([c.astype(np.float64) for c in candidates]), axis=0).mean())
