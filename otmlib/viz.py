"""Figures the notebooks and the command line share."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from otmlib import jpeg
from otmlib.metrics import psnr, psnr_b
from otmlib.utils import as_batch

SAMPLES = ("chelsea", "astronaut", "coffee", "camera", "rocket")


def sample_image(name: str = "chelsea") -> np.ndarray:
    """A photo bundled with scikit-image (no download): uint8, (H, W, 3) or (H, W)."""
    from skimage import data

    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; bundled: {', '.join(SAMPLES)}")
    return np.ascontiguousarray(getattr(data, name)())


def _grid(ax, shape: tuple[int, int], x0: int = 0, y0: int = 0, color: str = "#ff3b30") -> None:
    """Draw the 8x8 coding grid over an image shown with ``imshow`` (pixel centres at integers)."""
    h, w = shape
    for x in range(-x0 % 8, w + 1, 8):
        ax.axvline(x - 0.5, color=color, lw=0.4, alpha=0.6)
    for y in range(-y0 % 8, h + 1, 8):
        ax.axhline(y - 0.5, color=color, lw=0.4, alpha=0.6)


def blocking_figure(img: np.ndarray, quality: int = 10, crop: int = 96) -> Figure:
    """Four panels on the luminance of ``img``: original and JPEG (zoomed, with the 8x8 grid),
    the error map, and how many DCT coefficients each block kept (the information JPEG lost).
    """
    y = jpeg.luminance(img)
    comp = jpeg.compress(y, quality)
    dec = comp.pixels
    k = jpeg.quantised_indices(as_batch(dec, np.float64), comp.luma_table)[0, 0]
    kept = (k != 0).sum(dim=(-1, -2)).numpy()

    h, w = y.shape
    cy, cx = (h // 2) // 8 * 8, (w // 2) // 8 * 8
    crop = min(crop, h - cy, w - cx) // 8 * 8
    sl = (slice(cy, cy + crop), slice(cx, cx + crop))

    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    axes[0].imshow(y[sl], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[0].set_title("original (Y), zoomed")
    axes[1].imshow(dec[sl], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    _grid(axes[1], (crop, crop))
    axes[1].set_title(f"JPEG Q{quality}: PSNR {psnr(y, dec):.2f} / PSNR-B {psnr_b(y, dec):.2f} dB", fontsize=9)
    err = np.abs(y.astype(np.int16) - dec.astype(np.int16))
    im = axes[2].imshow(err[sl], cmap="magma", interpolation="nearest")
    _grid(axes[2], (crop, crop), color="#5ac8fa")
    axes[2].set_title("|JPEG - original|, 8x8 grid in blue", fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    im = axes[3].imshow(kept, cmap="viridis", vmin=0, vmax=max(int(kept.max()), 1), interpolation="nearest")
    axes[3].set_title(f"non-zero DCT coefficients per block\n(of 64; mean {kept.mean():.1f})", fontsize=9)
    fig.colorbar(im, ax=axes[3], shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"What JPEG quality {quality} does to a photo ({comp.nbytes / 1024:.1f} KiB, {8 * comp.nbytes / (h * w):.2f} bits/pixel)")
    return fig


def crop_box(shape: tuple[int, int], size: int, center: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int, int]:
    """A square crop ``(top, left, size)`` at a relative centre, clipped to the image."""
    h, w = shape[:2]
    size = min(size, h, w)
    top = int(min(max(center[0] * h - size / 2, 0), h - size))
    left = int(min(max(center[1] * w - size / 2, 0), w - size))
    return top, left, size


def compare_figure(
    panels: dict[str, np.ndarray],
    box: tuple[int, int, int] | None = None,
    reference: str | None = None,
    title: str = "",
    panel_width: float = 3.2,
) -> Figure:
    """Images side by side (row 1) with a zoomed crop of each (row 2).

    ``panels`` maps a caption to an 8-bit image (grey or RGB, all the same size). With
    ``reference`` (a key of ``panels``), captions get each panel's PSNR / PSNR-B against it on
    the luminance, as the paper's Figs. 5-6 do.
    """
    from matplotlib.patches import Rectangle

    names = list(panels)
    first = panels[names[0]]
    box = box or crop_box(first.shape, min(first.shape[:2]) // 3)
    top, left, size = box
    fig = Figure(figsize=(panel_width * len(names), 2 * panel_width * 0.9), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False)
    ref_y = jpeg.luminance(panels[reference]) if reference else None
    for j, name in enumerate(names):
        img = panels[name]
        kw = {"cmap": "gray", "vmin": 0, "vmax": 255} if img.ndim == 2 else {}
        caption = name
        if ref_y is not None and name != reference:
            y = jpeg.luminance(img)
            caption += f"\n{psnr(ref_y, y):.2f} / {psnr_b(ref_y, y):.2f} dB"
        axes[0, j].imshow(img, **kw)
        axes[0, j].add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, ec="#ffcc00", lw=1.2))
        axes[0, j].set_title(caption, fontsize=9)
        axes[1, j].imshow(img[top : top + size, left : left + size], interpolation="nearest", **kw)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


GRAD_TERMS = {"grad_lp": "$L_p$", "grad_ln": "$L_n$", "grad_lj": "$L_j$", "grad_mse_mean": "MSE of the mean",
              "grad_spread": "spread", "grad_mode_seeking": "mode seeking"}


def _running_mean(v: list[float], n: int = 5) -> np.ndarray:
    """Mean of each value and the up to ``n - 1`` before it (one logged batch is noisy)."""
    c = np.cumsum(np.concatenate([[0.0], np.asarray(v, dtype=float)]))
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(i - n, 0)
    return (c[i] - c[lo]) / (i - lo)


def gan_health_figure(runs: dict[str, list[dict]]) -> Figure:
    """Four panels per run (one row each) from training-log records, to tell a healthy GAN from a collapsed one.

    1. D's mean output on natural patches and on candidates (sigmoid): a D that wins outright sits at 1 / 0;
    2. D's accuracy on each: both near 1 means ``L_n`` gives G almost no gradient;
    3. the gradient norm each loss term sends into G's output (log scale): which term drives G;
    4. validation: the candidates' diversity overall, in textured and in flat regions, and the L2 parent's
       RMSE (what an ideal sampler's diversity would be).
    """
    fig = Figure(figsize=(16, 3.3 * len(runs)), layout="constrained")
    axes = fig.subplots(len(runs), 4, squeeze=False)
    for row, (label, records) in zip(axes, runs.items()):
        logs = [r for r in records if "grad_lp" in r]
        vals = [r for r in records if "val_psnr" in r]
        steps = [r["step"] for r in logs]
        a, b, c, d = row
        d_logs = [r for r in logs if "d_real" in r]
        ds = [r["step"] for r in d_logs]
        for k, (key, name) in enumerate((("d_real", "D(natural)"), ("d_fake", "D(candidate)"))):
            v = [r[key] for r in d_logs]
            a.plot(ds, v, color=f"C{k}", alpha=0.25, lw=0.8)
            a.plot(ds, _running_mean(v), color=f"C{k}", label=f"{name}, mean of 5 logs")
        a.set_ylim(-0.02, 1.02)
        a.set_title(f"{label}\nD's mean output (one batch per log)", fontsize=9)
        for k, (key, name) in enumerate((("d_acc_real", "on natural"), ("d_acc_fake", "on candidates"))):
            v = [r[key] for r in d_logs]
            b.plot(ds, v, color=f"C{k}", alpha=0.25, lw=0.8)
            b.plot(ds, _running_mean(v), color=f"C{k}", label=f"{name}, mean of 5 logs")
        b.set_ylim(-0.02, 1.02)
        b.set_title("D's accuracy", fontsize=9)
        for key, name in GRAD_TERMS.items():
            pts = [(r["step"], r[key]) for r in logs if r.get(key, 0) > 0]
            if pts:
                c.semilogy(*zip(*pts), label=name)
        c.set_title("gradient norm of each weighted term into G's output", fontsize=9)
        for key, name in (("val_div_all", "diversity"), ("val_div_textured", "in textured regions"),
                          ("val_div_flat", "in flat regions")):
            pts = [(r["step"], r[key]) for r in vals if key in r]
            if pts:
                d.plot(*zip(*pts), "o-", label=name)
        rm = [(r["step"], r["val_ref_rmse"]) for r in vals if "val_ref_rmse" in r]
        if rm:
            d.plot(*zip(*rm), "k:", label="L2 parent's RMSE")
        d.set_title("validation: std across 4 candidates (grey levels)", fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        if not steps:
            a.text(0.5, 0.5, "no diagnostics in this log", ha="center", transform=a.transAxes)
    return fig


def recipe_figure(table) -> Figure:
    """Validation diversity / RMSE, textured / flat and PSNR against the step, a line per run, with the one-to-many
    issue's targets dotted; ``table`` is :func:`otmlib.train.validation_table`'s DataFrame."""
    fig = Figure(figsize=(16, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for label, g in table.groupby("run", sort=False):
        for ax, key in zip(axes, ("diversity / RMSE", "textured / flat", "PSNR")):
            ax.plot(g["step"], g[key], "o-", label=label)
    for ax, key, target in zip(axes, ("diversity / RMSE", "textured / flat", "PSNR"), (0.5, 3.0, None)):
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        if target:
            ax.axhline(target, color="gray", ls=":", label="target")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)  # covers no point
    return fig
