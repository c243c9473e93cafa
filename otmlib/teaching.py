"""Helpers for the teaching notebooks (01 data, 02 baseline, 04 ablations).

What is here, by notebook:

- data (all): :func:`find_data` (BSDS500, a download, or the sample photos, always said aloud),
  :func:`evaluation_images`, :func:`training_images`.
- 01, a look inside one 8x8 block: :func:`zigzag`, :func:`block_view` (eq. 4-5 for one block),
  :func:`plot_block_intervals`, :func:`zero_share`, :func:`patch_report` (aligned vs misaligned
  training patches under the JPEG loss, eq. 6).
- 02, why L2 is blurry (paper Sec. 1): :func:`same_jpeg_blocks` finds real 8x8 blocks that all
  compress to the *same* JPEG block; their mean is the per-pixel-L2-optimal answer.
  :class:`LossPlot` (a live training curve), :func:`generator_restorer`, :func:`score_table`.
- 04, ablations (paper Sec. 3.2.2 and 4.4, Fig. 8): :func:`deconv_constant` (a constant input
  through a stride-2 deconvolution, with and without shift-and-average), :func:`grid_strength`,
  :func:`candidate_stats`, :func:`train_small`, :func:`choose_weight`.

Everything else the notebooks call lives in the library proper (``jpeg``, ``data``, ``train``,
``restore``, ``viz``...); this module only holds what a notebook would otherwise write twice.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from otmlib import evaluate, jpeg
from otmlib.data import CodedImage, DataConfig, JpegPatchDataset, training_sets
from otmlib.datasets import DataSource, download_bsds500, resolve_bsds500, sample_images
from otmlib.imageio import list_images, load_image
from otmlib.evaluate import Restorer
from otmlib.metrics import psnr, psnr_b
from otmlib import models
from otmlib.models import GeneratorConfig
from otmlib.losses import LossWeights
from otmlib.restore import interval_share, texture_ratio
from otmlib.train import TrainConfig, Trainer
from otmlib.utils import as_batch

__all__ = [
    "find_data",
    "evaluation_images",
    "training_images",
    "zigzag",
    "BlockView",
    "block_view",
    "most_detailed_block",
    "plot_block_intervals",
    "zero_share",
    "block_coefficients",
    "patch_report",
    "SameJpegBlocks",
    "same_jpeg_blocks",
    "LossPlot",
    "generator_restorer",
    "score_table",
    "deconv_constant",
    "grid_strength",
    "candidate_stats",
    "textured_box",
    "train_small",
    "AblationRuns",
    "choose_weight",
]


# --------------------------------------------------------------------------------------------
# Data: where the images come from
# --------------------------------------------------------------------------------------------


def find_data(data_dir: str = "", download: bool = False) -> DataSource:
    """Resolve the image source and print which one it is.

    ``data_dir`` (a BSDS500 root or any image folder) wins; else, with ``download``, BSDS500 is
    fetched and checksum-verified by :func:`otmlib.datasets.download_bsds500` (offline, its
    ``ConnectionError`` is printed and we go on); else :func:`otmlib.datasets.resolve_bsds500`
    looks in ``OTM_DATA``, ``../shared/data`` and the cache, and falls back to the sample photos
    with a message that is printed, never swallowed. A ``data_dir`` that does not exist raises.
    """
    if download and not data_dir:
        try:
            root = download_bsds500()
            src = DataSource(root, "cache", f"downloaded and verified BSDS500 in {root}")
            print(src.message)
            return src
        except ConnectionError as e:
            print(f"download failed, going on without it: {e}")
    src = resolve_bsds500(data_dir or None)
    print(("NOTE: " if src.is_samples else "") + src.message)
    return src


def _image_folder(source: DataSource, split: str) -> Path | None:
    if source.is_samples:
        return None
    return source.root / split if (source.root / split).is_dir() else source.root


def evaluation_images(source: DataSource, n: int | None = None, split: str = "test") -> dict[str, np.ndarray]:
    """Up to ``n`` images as 8-bit luminance (MATLAB ``rgb2ycbcr`` Y, the paper's protocol).

    From ``split`` (default BSDS500 ``test``, sorted by name) of a BSDS500 root, from the folder
    itself for any other folder, or from :func:`otmlib.datasets.sample_images` for the fallback.
    """
    folder = _image_folder(source, split)
    if folder is None:
        items = list(sample_images().items())[:n]
        return {name: jpeg.luminance(img) for name, img in items}
    return {p.stem: jpeg.luminance(load_image(p, min_side=16)) for p in list_images(folder)[:n]}


def training_images(
    source: DataSource,
    quality: int,
    patch: int,
    max_images: int | None = None,
    val_holdout: int = 2,
) -> tuple[list[CodedImage], list[CodedImage], str]:
    """Coded training and validation images for a small training: ``(train, val, description)``.

    :func:`otmlib.data.training_sets` (BSDS500 ``train`` + ``val``, never ``test``; the sample photos
    when there is no BSDS500) for ``source``, with the first ``max_images`` training files and
    ``val_holdout`` images to validate.
    """
    cfg = DataConfig(data=None if source.is_samples else str(source.root), quality=quality, patch=patch,
                     val_holdout=val_holdout)
    sets = training_sets(cfg, progress=False, max_images=max_images)
    return sets.train, sets.val, sets.description


# --------------------------------------------------------------------------------------------
# 01: one 8x8 block under the microscope (eqs. 4-5)
# --------------------------------------------------------------------------------------------


def zigzag(n: int = 8) -> np.ndarray:
    """The JPEG zig-zag scan (ITU T.81, Fig. A.6): (n*n, 2) array of (row, column), low to high frequency."""
    cells = [(i, j) for i in range(n) for j in range(n)]
    # anti-diagonals s = i + j; odd ones run down (row increasing), even ones up
    cells.sort(key=lambda c: (c[0] + c[1], c[0] if (c[0] + c[1]) % 2 else c[1]))
    return np.array(cells, dtype=np.int64)


@dataclass(frozen=True)
class BlockView:
    """One 8x8 block of an image and of its JPEG, in the DCT domain (level-shifted, eq. 4-5)."""

    by: int  # block row
    bx: int  # block column
    original: np.ndarray  # (8, 8) pixels of the ground truth
    decoded: np.ndarray  # (8, 8) pixels of the JPEG
    c_original: np.ndarray  # (8, 8) C(x): DCT of the original block
    c_jpeg: np.ndarray  # (8, 8) C(x') = Q k, what the file stores
    k: np.ndarray  # (8, 8) integer indices of eq. (4)
    q: np.ndarray  # (8, 8) quantisation table
    lower: np.ndarray  # (8, 8) Q k - Q/2, eq. (5)
    upper: np.ndarray  # (8, 8) Q k + Q/2

    def inside(self) -> np.ndarray:
        """(8, 8) bool: which coefficients of the original lie inside their interval."""
        return (self.c_original >= self.lower) & (self.c_original <= self.upper)


def block_view(original: np.ndarray, decoded: np.ndarray, qtable: np.ndarray, by: int, bx: int) -> BlockView:
    """The coefficients and intervals of block ``(by, bx)`` of a grey image and its decoded JPEG."""
    k = jpeg.quantised_indices(as_batch(decoded, np.float64), qtable)[0, 0, by, bx]
    lo, hi = jpeg.coefficient_bounds(k, qtable)
    c_orig = jpeg.coefficients(as_batch(original, np.float64))[0, 0, by, bx]
    sl = (slice(8 * by, 8 * by + 8), slice(8 * bx, 8 * bx + 8))
    q = np.asarray(qtable, dtype=np.float64)
    return BlockView(by, bx, np.asarray(original)[sl].copy(), np.asarray(decoded)[sl].copy(), c_orig.numpy(),
                     (k.numpy() * q), k.numpy().astype(np.int64), q, lo.numpy(), hi.numpy())


def most_detailed_block(decoded: np.ndarray, qtable: np.ndarray, rank: int = 0) -> tuple[int, int]:
    """``(by, bx)`` of the block whose JPEG kept the most non-zero coefficients (``rank``-th such)."""
    k = jpeg.quantised_indices(as_batch(decoded, np.float64), qtable)[0, 0]
    kept = (k != 0).sum(dim=(-1, -2)).flatten()
    order = torch.argsort(kept, descending=True, stable=True)
    idx = int(order[rank])
    return divmod(idx, k.shape[1])


def plot_block_intervals(ax, view: BlockView, others: np.ndarray | None = None, n: int = 64,
                         others_label: str = "other originals") -> None:
    """Error-bar plot of eq. (5) for one block, coefficients in zig-zag order.

    The bar at each frequency is the interval ``Q k +- Q/2`` that every plausible original must
    fall in; dots mark the original's ``C(x)`` and crosses the JPEG's ``Q k``. ``others``
    (m, 8, 8) adds the coefficients of other originals (grey dots), e.g. real blocks that
    compress to the same JPEG block.
    """
    zz = zigzag()[:n]
    pos = np.arange(n)
    centre = view.c_jpeg[zz[:, 0], zz[:, 1]]
    half = view.q[zz[:, 0], zz[:, 1]] / 2
    ax.errorbar(pos, centre, yerr=half, fmt="none", ecolor="#8e8e93", elinewidth=4, alpha=0.45,
                label="interval Q k ± Q/2 (eq. 5)")
    if others is not None:
        oc = np.asarray(others)[:, zz[:, 0], zz[:, 1]]
        jitter = np.linspace(-0.25, 0.25, oc.shape[0])[:, None]
        ax.plot((pos[None] + jitter).ravel(), oc.ravel(), ".", ms=2, color="#5856d6", alpha=0.35,
                label=others_label)
    ax.plot(pos, centre, "x", color="#ff3b30", ms=5, label="JPEG: Q k")
    ax.plot(pos, view.c_original[zz[:, 0], zz[:, 1]], "o", color="#007aff", ms=3.5, label="original: C(x)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("DCT coefficient, zig-zag order (0 = DC, low -> high frequency)")
    ax.set_ylabel("coefficient value (DCT of pixels - 128)")
    ax.legend(fontsize=8, loc="upper right")


def zero_share(decoded: np.ndarray, qtable: np.ndarray) -> np.ndarray:
    """(8, 8): for each frequency, the share of the image's blocks whose coefficient was quantised to 0."""
    k = jpeg.quantised_indices(as_batch(decoded, np.float64), qtable)[0, 0]
    return (k == 0).double().mean(dim=(0, 1)).numpy()


def block_coefficients(blocks: np.ndarray) -> np.ndarray:
    """``C(x)`` of eq. (4) for a stack of 8x8 pixel blocks: (n, 8, 8) -> (n, 8, 8), DCT of pixels - 128."""
    b = torch.from_numpy(np.asarray(blocks, dtype=np.float64))
    if b.shape[-2:] != (8, 8):
        raise ValueError(f"expected (n, 8, 8) blocks, got shape {tuple(b.shape)}")
    return jpeg.block_dct(b - 128.0)[..., 0, 0, :, :].numpy()


def patch_report(dataset: JpegPatchDataset, n: int = 16) -> pd.DataFrame:
    """JPEG loss (eq. 6) and in-interval share of the *ground truth* of ``n`` training patches.

    Returns a pandas DataFrame with one row per patch: ``aligned``, ``jpeg_loss`` (of ``x``
    against the intervals of its own JPEG patch) and ``inside`` (share of coefficients inside).
    An aligned patch's blocks are the coder's, so its ground truth lies inside (loss 0 up to
    the encoder's integer DCT and the decoder's clipping of saturated pixels); a misaligned
    one's blocks straddle the coder's, and the "intervals" computed from them constrain
    nothing real: the ground truth falls outside (except in flat patches, where any grid fits).
    """
    rows = []
    for i in range(n):
        s = dataset[i]
        x, xj, q = s["x"][None].double(), s["jpeg"][None].double(), s["q"][0].double()
        k = jpeg.quantised_indices(xj, q)
        rows.append({
            "patch": i,
            "aligned": bool(s["aligned"]),
            "jpeg_loss": float(jpeg.jpeg_loss(x, k, q)),
            "inside": float((jpeg.interval_excess(x, k, q) == 0).double().mean()),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# 02: many originals, one JPEG, and their average
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SameJpegBlocks:
    """Real 8x8 blocks that all compress to one and the same JPEG block."""

    k: np.ndarray  # (8, 8) the shared quantised indices
    q: np.ndarray  # (8, 8) quantisation table
    decoded: np.ndarray  # (8, 8) uint8: the one decoded JPEG block they all share
    originals: np.ndarray  # (n, 8, 8) uint8: the different ground truths
    searched: int  # how many blocks were searched

    @property
    def mean(self) -> np.ndarray:
        """The per-pixel-L2-optimal answer for this JPEG block: the mean of its originals."""
        return self.originals.astype(np.float64).mean(axis=0)


def same_jpeg_blocks(images: Iterable[np.ndarray], quality: int, min_nonzero: int = 3) -> SameJpegBlocks:
    """Group the 8x8 blocks of grey ``images`` by their JPEG and return the largest group.

    Each image is compressed whole at ``quality`` and every complete block is keyed by its
    quantised indices ``k`` (eq. 4, the coder's own). Among the keys with at least
    ``min_nonzero`` non-zero coefficients (flat DC-only blocks are the most common and the
    least interesting), the most frequent one wins; if no key qualifies, the most frequent of all.
    """
    groups: dict[bytes, list[np.ndarray]] = collections.defaultdict(list)
    decoded: dict[bytes, np.ndarray] = {}
    q = None
    searched = 0
    for img in images:
        y = np.asarray(img, dtype=np.uint8)
        comp = jpeg.compress(y, quality)
        q = comp.luma_table
        k = jpeg.quantised_indices(as_batch(comp.pixels, np.float64), q)[0, 0].numpy().astype(np.int16)
        hb, wb = k.shape[:2]
        blocks = y[: 8 * hb, : 8 * wb].reshape(hb, 8, wb, 8).swapaxes(1, 2)
        dblocks = comp.pixels[: 8 * hb, : 8 * wb].reshape(hb, 8, wb, 8).swapaxes(1, 2)
        for i in range(hb):
            for j in range(wb):
                key = k[i, j].tobytes()
                groups[key].append(blocks[i, j])
                decoded.setdefault(key, dblocks[i, j].copy())
                searched += 1
    if not groups:
        raise ValueError("no 8x8 blocks in the images")
    nonzero = {key: int((np.frombuffer(key, np.int16) != 0).sum()) for key in groups}
    pool = [key for key in groups if nonzero[key] >= min_nonzero] or list(groups)
    best = max(pool, key=lambda key: (len(groups[key]), key))
    k = np.frombuffer(best, np.int16).reshape(8, 8).astype(np.int64)
    return SameJpegBlocks(k, np.asarray(q, dtype=np.int64), decoded[best], np.stack(groups[best]), searched)


class LossPlot:
    """A :class:`otmlib.train.Trainer` callback that redraws the training losses as they come.

    ``keys`` are the record fields to plot (e.g. ``("l2",)`` or ``("lp", "ln", "lj", "d")``;
    missing ones are skipped). With ``live`` the figure is shown once and updated in place
    every ``every`` log records (IPython display handle); :meth:`figure` draws it on demand.
    """

    def __init__(self, keys: Sequence[str], every: int = 1, live: bool = True, title: str = "training loss"):
        self.keys = tuple(keys)
        self.every = max(1, every)
        self.live = live
        self.title = title
        self.records: list[dict] = []
        self._handle = None

    def on_log(self, trainer, record: dict) -> None:
        self.records.append(dict(record))
        if self.live and len(self.records) % self.every == 0:
            self._show()

    def on_val(self, trainer, record: dict) -> None:  # validation is printed by the notebook
        pass

    def _show(self) -> None:
        from IPython.display import display

        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[key]) for r in self.records if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    def figure(self) -> Figure:
        keys = [k for k in self.keys if self.series(k)[0]]
        fig = Figure(figsize=(4.2 * max(1, len(keys)), 3), layout="constrained")
        axes = fig.subplots(1, max(1, len(keys)), squeeze=False)[0]
        for ax, key in zip(axes, keys):
            steps, vals = self.series(key)
            ax.plot(steps, vals, "-", color="#007aff")
            ax.set_xlabel("step")
            ax.set_ylabel(key)
            ax.set_title(key)
            if min(vals) > 0:
                ax.set_yscale("log")
        fig.suptitle(self.title)
        return fig


generator_restorer = evaluate.generator_restorer  # notebook 02 and the ablations: a G in memory as a Restorer


def score_table(images: Mapping[str, np.ndarray], quality: int, restorers: Mapping[str, Restorer]) -> pd.DataFrame:
    """Table 2's protocol on ``images`` (name -> 8-bit luminance) for every restorer.

    Each image is scored by :func:`otmlib.evaluate.score_image` (compressed at ``quality``, restored,
    PSNR, SSIM, PSNR-B and the block-edge ratio). Returns a long DataFrame: image, method, psnr, ssim,
    psnrb, edge_ratio, texture (gradient energy over the original's, :func:`otmlib.restore.texture_ratio`).
    """
    rows = []
    for name, y in images.items():
        for method, restore in restorers.items():
            outs: list[np.ndarray] = []  # what score_image's restorer returned, for the texture

            def kept(decoded: np.ndarray, qtable: np.ndarray, restore: Restorer = restore) -> np.ndarray:
                outs.append(restore(decoded, qtable))
                return outs[-1]

            scores = evaluate.score_image(y, quality, kept)
            rows.append({"image": name, "method": method, **scores, "texture": texture_ratio(outs[0], y)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# 04: shift-and-average (Sec. 3.2.2), measurements of candidates, small trainings
# --------------------------------------------------------------------------------------------


def deconv_constant(weight: np.ndarray, c: float = 1.0, n: int = 8, stride: int = 2,
                    shift_and_average: bool = False) -> np.ndarray:
    """A constant input ``c`` through a stride-``stride`` deconvolution (paper Sec. 3.2.2).

    ``weight`` is a 1-D filter ``(k,)`` (the paper's example: the output alternates
    ``c (w1 + w3)``, ``c (w2 + w4)``) or a 2-D one ``(k, k)``; the input has ``n`` (by ``n``)
    samples. With ``shift_and_average`` the output goes through
    :func:`otmlib.models.shift_and_average` (1-D: average with the copy shifted right by one).
    Only the interior is returned, where every output sample received all its filter taps and
    its shifted copies: positions ``k .. (n - 1) s`` in each deconvolved axis.
    """
    w = torch.as_tensor(np.asarray(weight, dtype=np.float64))
    one_d = w.ndim == 1
    if one_d:
        w = w[None]
    if w.ndim != 2:
        raise ValueError(f"weight must be (k,) or (k, k), got shape {tuple(w.shape)}")
    kh, kw = w.shape
    x = torch.full((1, 1, 1 if one_d else n, n), float(c), dtype=torch.float64)
    y = F.conv_transpose2d(x, w[None, None], stride=(1 if one_d else stride, stride))
    if shift_and_average:
        y = models.shift_and_average(y, stride)  # height 1: its replicated rows are the row itself
    cols = slice(kw, (n - 1) * stride + 1)
    rows = slice(0, 1) if one_d else slice(kh, (n - 1) * stride + 1)
    out = y[0, 0, rows, cols].numpy()
    return out[0] if one_d else out


def grid_strength(img: np.ndarray, period: int = 2) -> float:
    """RMS amplitude, in grey levels, of the part of ``img`` that repeats every ``period`` pixels.

    The mean of each of the ``period^2`` pixel phases minus the overall mean: image content
    averages out over the phases, a deconvolution's grid pattern (Fig. 8a) does not. A constant
    image plus a checkerboard of amplitude ``a`` scores exactly ``a``.
    """
    x = np.asarray(img, dtype=np.float64)
    h, w = x.shape[0] // period * period, x.shape[1] // period * period
    x = x[:h, :w]
    phases = x.reshape(h // period, period, w // period, period).mean(axis=(0, 2))
    return float(np.sqrt(np.mean((phases - x.mean()) ** 2)))


def candidate_stats(out: np.ndarray, gt: np.ndarray, decoded: np.ndarray, qtable: np.ndarray) -> dict[str, float]:
    """What the ablations measure on one restored image (all 8-bit luminance of one shape).

    ``psnr``/``psnrb`` against ``gt``; ``inside``: share of DCT coefficients inside the JPEG's
    intervals (:func:`otmlib.restore.interval_share`, eq. 5); ``shift``: mean brightness minus the
    JPEG's (grey levels); ``contrast``: std over the JPEG's std (1 = same contrast); ``texture``:
    gradient energy over ``gt``'s; ``grid``: :func:`grid_strength` at period 2; ``lj``: the JPEG
    loss of eq. (6) itself (mean squared excess over the intervals, DCT units squared).
    """
    o, d = out.astype(np.float64), decoded.astype(np.float64)
    k = jpeg.quantised_indices(as_batch(decoded, np.float64), qtable)
    return {
        "psnr": psnr(gt, out),
        "psnrb": psnr_b(gt, out),
        "inside": interval_share(out, decoded, qtable),
        "lj": float(jpeg.jpeg_loss(as_batch(out, np.float64), k, qtable)),
        "shift": float(o.mean() - d.mean()),
        "contrast": float(o.std() / max(d.std(), 1e-12)),
        "texture": texture_ratio(out, gt),
        "grid": grid_strength(out),
    }


def textured_box(img: np.ndarray, size: int, step: int = 8) -> tuple[int, int, int]:
    """The ``size`` x ``size`` crop ``(top, left, size)`` of most gradient energy, origin on a ``step`` grid.

    Where over-smoothing shows: a flat sky looks the same blurred or not.
    """
    g = np.asarray(img, dtype=np.float64)
    gy, gx = np.gradient(g)
    mag = np.hypot(gx, gy)
    size = min(size, *g.shape[:2])
    integral = np.pad(mag.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, box = -1.0, (0, 0, size)
    for top in range(0, g.shape[0] - size + 1, step):
        for left in range(0, g.shape[1] - size + 1, step):
            e = (integral[top + size, left + size] - integral[top, left + size]
                 - integral[top + size, left] + integral[top, left])
            if e > best:
                best, box = e, (top, left, size)
    return box


def train_small(
    train: Sequence[CodedImage],
    val: Sequence[CodedImage] = (),
    *,
    mode: str = "one-to-many",
    steps: int = 300,
    l2: float = 0.1,
    l3: float = 0.1,
    shift_and_average: bool = True,
    residual: bool = True,
    quality: int = 10,
    width: int = 16,
    branch_units: int = 1,
    agg_units: int = 2,
    patch: int = 32,
    batch_size: int = 8,
    backbone: str = "efficientnet-lite0",
    d_width: int = 16,
    d_start: float = 0.25,
    lr: float = 2e-4,
    seed: int = 0,
    out: str | Path | None = None,
    callbacks: Sequence = (),
    progress: bool = False,
) -> Trainer:
    """Train a tiny G (and D) for ``steps`` steps and return the :class:`otmlib.train.Trainer`.

    The paper's procedure (Sec. 3.4) at toy scale: ``L = L_p + l2 L_n + l3 L_j`` (eq. 7) with
    ``backbone`` features; D joins after ``d_start`` of the steps (the "first epoch", G alone).
    ``l2 = 0`` never builds a D step (``L_n`` would carry no weight); ``mode="baseline"`` trains
    the per-pixel L2 baseline instead (``l2``, ``l3`` and ``backbone`` unused). D is Table 1's
    network with ``d_width`` filters in its first unit instead of 64 (64 costs 6x the time at
    this scale). ``residual=False`` makes G predict the image itself rather than a correction
    of ``x'`` (:class:`otmlib.models.GeneratorConfig`), as the paper's G does: then nothing but
    the losses ties the output's brightness and contrast to the input's. Checkpoints and the
    log go to ``out``; by default to a temporary folder that is deleted with the trainer.
    """
    steps = int(steps)
    uses_d = mode == "one-to-many" and l2 > 0
    first_epoch = max(1, int(d_start * steps)) if uses_d else steps + 1
    cfg = TrainConfig.student(
        mode=mode,
        gen=GeneratorConfig(width=width, branch_units=branch_units, agg_units=agg_units,
                            shift_and_average=shift_and_average, residual=residual),
        data=DataConfig(quality=quality, patch=patch, seed=seed),
        weights=LossWeights(1.0, l2, l3), backbone=backbone, d_width=d_width, batch_size=batch_size,
        steps=steps, epoch_samples=first_epoch * batch_size, lr=lr, log_every=max(1, steps // 40),
        val_every=max(1, steps), seed=seed, d_seed=seed + 1,
        out=str(out or (tmp := tempfile.TemporaryDirectory(prefix="otm-small-")).name),
    )
    trainer = Trainer(cfg, train, val, callbacks, progress=progress)
    if out is None:
        trainer.tmpdir = tmp  # removed with the trainer (or at exit), not before: its log stays readable
    trainer.fit(steps)
    if out is None:  # nobody resumes a throw-away run: keep the log, drop the checkpoint (MBs)
        trainer.ckpt_path.unlink(missing_ok=True)
    trainer.G.eval()
    return trainer


class AblationRuns:
    """Small trainings of G for the ablations, each run once and measured on the same images.

    ``get(l2, l3, shift_and_average)`` trains (see :func:`train_small`, with ``train_kwargs``) or
    returns the cached run; ``outputs`` restores every evaluation image with it; ``stats`` is the
    mean of :func:`candidate_stats` over the images; ``table`` one row per labelled run.
    ``images`` maps names to 8-bit luminance; each is compressed once at ``quality``.
    """

    def __init__(self, train: Sequence[CodedImage], val: Sequence[CodedImage],
                 images: Mapping[str, np.ndarray], quality: int = 10, **train_kwargs):
        self.train, self.val = list(train), list(val)
        self.quality = quality
        self.train_kwargs = train_kwargs
        self.images = dict(images)
        self.coded = {n: jpeg.compress(y, quality) for n, y in self.images.items()}
        self._runs: dict[tuple, Trainer] = {}
        self._outputs: dict[tuple, dict[str, np.ndarray]] = {}

    @staticmethod
    def key(l2: float, l3: float, shift_and_average: bool = True) -> tuple[float, float, bool]:
        return (float(l2), float(l3), bool(shift_and_average))

    def get(self, l2: float, l3: float, shift_and_average: bool = True) -> Trainer:
        k = self.key(l2, l3, shift_and_average)
        if k not in self._runs:
            self._runs[k] = train_small(self.train, self.val, l2=k[0], l3=k[1], shift_and_average=k[2],
                                        quality=self.quality, **self.train_kwargs)
        return self._runs[k]

    def outputs(self, l2: float, l3: float, shift_and_average: bool = True) -> dict[str, np.ndarray]:
        k = self.key(l2, l3, shift_and_average)
        if k not in self._outputs:
            restore = generator_restorer(self.get(*k).G)
            self._outputs[k] = {n: restore(c.pixels, c.luma_table) for n, c in self.coded.items()}
        return self._outputs[k]

    def stats(self, l2: float, l3: float, shift_and_average: bool = True) -> dict[str, float]:
        outs = self.outputs(l2, l3, shift_and_average)
        rows = [candidate_stats(outs[n], self.images[n], c.pixels, c.luma_table) for n, c in self.coded.items()]
        return {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}

    def jpeg_stats(self) -> dict[str, float]:
        """The same measurements on the JPEG itself, the row to compare with."""
        rows = [candidate_stats(c.pixels, self.images[n], c.pixels, c.luma_table) for n, c in self.coded.items()]
        return {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}

    def table(self, runs: Mapping[str, tuple]) -> pd.DataFrame:
        """DataFrame, one row per ``label -> (l2, l3[, shift_and_average])``, with the weights and stats."""
        rows = []
        for label, args in runs.items():
            k = self.key(*args)
            rows.append({"run": label, "l2": k[0], "l3": k[1], "shift_and_average": k[2], **self.stats(*k)})
        return pd.DataFrame(rows).set_index("run")


def choose_weight(table: pd.DataFrame, weight: str, score: str, tol: float) -> float:
    """The smallest ``weight`` whose ``score`` is within ``tol`` of the best score (higher is better).

    ``table`` is a DataFrame with one row per trained weight. The rule for a loss weight: take
    the least weight that already buys (almost) all of the effect, since any more only competes
    with the other losses. NaN scores are ignored.
    """
    t = table[[weight, score]].dropna()
    if t.empty:
        raise ValueError(f"no rows with a {score!r} to choose {weight!r} by")
    best = t[score].max()
    ok = t[t[score] >= best - tol]
    return float(ok[weight].min())


def fig8_variants(l2: float, l3: float) -> dict[str, tuple[float, float, bool]]:
    """The four runs of the paper's Fig. 8: label -> (l2, l3, shift-and-average)."""
    return {
        "(a) L_p, no shift-and-average": (0.0, 0.0, False),
        "(b) L_p": (0.0, 0.0, True),
        "(c) L_p + L_n": (l2, 0.0, True),
        "(d) L_p + L_n + L_j": (l2, l3, True),
    }


def fig8_figure(runs: AblationRuns, table: pd.DataFrame, variants: Mapping[str, tuple], crop: int, title: str):
    """Fig. 8 as a panel row: original, JPEG and each variant on the first evaluation image,
    with each variant's interval share, brightness shift and contrast (means over the images)."""
    from otmlib.viz import compare_figure

    name = next(iter(runs.images))
    y = runs.images[name]
    panels = {"original": y, f"JPEG Q{runs.quality}": runs.coded[name].pixels}
    for label, args in variants.items():
        r = table.loc[label]
        caption = f"{label}\ninside {100 * r['inside']:.1f}%, shift {r['shift']:+.1f}, contrast {r['contrast']:.2f}"
        panels[caption] = runs.outputs(*args)[name]
    return compare_figure(panels, textured_box(y, crop), reference="original", panel_width=3.0, title=title)
