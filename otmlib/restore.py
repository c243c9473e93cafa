"""Restoring real images with a trained G: candidates, colour, JPEG consistency, measurements.

Colour (paper Sec. 4.3) with a luminance model: the image is split into MATLAB YCbCr, Y is
restored by the model, and Cb/Cr are kept as the JPEG decoder upsampled them. Chroma blocking
and colour bleeding therefore remain; they are far less visible than luminance artifacts at the
same quality. A chroma model (``mode: chroma``, :func:`restore_chroma`) restores Cb/Cr too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from otmlib import jpeg
from otmlib.models import Generator, restore_tiled
from otmlib.utils import as_batch, bf16_plan, to_uint8_image

COLOUR_STRIP_ROWS = 256  # colour conversion runs this many rows at a time (memory; see _with_luma)


@dataclass
class Restored:
    """Candidates for one image: uint8 arrays shaped like the input, one per seed."""

    candidates: list[np.ndarray]
    seeds: list[int | None]  # None for the baseline (one deterministic output)


def restore_luma(
    G: Generator,
    y: np.ndarray,
    seeds: list[int] | None = None,
    *,
    tile: int = 512,
    bf16: bool = False,
    qtable: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Restore 8-bit luminance ``y`` (H, W): one uint8 output per seed (one for the baseline).

    Runs G channels-last on CPU (and with bfloat16) and hands G back in the memory layout it came in.
    ``qtable`` (8, 8): the luminance table ``y`` was coded with, for a model that reads it (``table_cond``).
    """
    x = as_batch(y, device=next(G.parameters()).device)
    outs = _run_tiled(G, x, seeds if G.cfg.noise else [None], tile, bf16, qtable)
    return [to_uint8_image(out[0, 0]) for out in outs]


def _run_tiled(G: Generator, x: Tensor, seeds: list, tile: int, bf16: bool, qtable=None) -> list[Tensor]:
    """G on a whole image ``x`` (1, C, H, W), tile by tile, once per seed (None: a baseline), float32 out.

    Channels-last on CPU (and with bfloat16), non-finite outputs refused, and G handed back in the memory
    layout it came in (a G still being trained keeps its layout).
    """
    device = next(G.parameters()).device
    bf16 = bf16_plan(bf16, device)[0]  # emulated bfloat16 (no native support) ran 13x slower
    given = _memory_format(G)
    if bf16 or device.type == "cpu":  # oneDNN wants NHWC: bf16 4x over NCHW fp32; fp32 1.5x (12 MP, tiled)
        G.to(memory_format=torch.channels_last)
    if qtable is not None:
        qtable = torch.as_tensor(np.asarray(qtable, dtype=np.float32), device=device)
    outs = []
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for s in seeds or [0]:
                out = (restore_tiled(G, x, tile=tile, seed=s, qtable=qtable) if G.cfg.noise
                       else restore_tiled(G, x, tile=tile, qtable=qtable))
                _refuse_non_finite(out)
                outs.append(out.float())
    finally:
        G.to(memory_format=given)
    return outs


def _refuse_non_finite(out: Tensor) -> None:
    """NaN becomes 0 in the uint8 conversion (an all-black image) and inf 0 or 255: refuse instead."""
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise ValueError(f"the model produced {bad} non-finite value(s) (NaN or inf) for this image; nothing "
                         "written (are its weights damaged? re-download or re-export them)")


def _memory_format(G: Generator) -> torch.memory_format:
    """channels_last if G's 4-D weights are stored that way, else the default (contiguous) layout."""
    # a weight with one input channel or a 1x1 kernel is both layouts at once: ask one that is not
    w = next((p for p in G.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1), None)
    if w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


@dataclass
class Consistency:
    """What a JPEG file fixes about its originals: its stored luminance DCT indices and table.

    Read from the file itself with jpeglib (libjpeg's own coefficient reader), so blocks the
    decoder clipped at 0 or 255 get their true indices too (recovering them from pixels cannot).
    """

    k: torch.Tensor  # (1, 1, Hb, Wb, 8, 8) quantised luminance indices of the complete blocks
    qtable: np.ndarray  # the file's luminance quantisation table, 8x8
    # colour files in 4:2:0 or 4:4:4: the Cb and Cr indices of their complete blocks, their table, the factor
    kc: tuple[torch.Tensor, torch.Tensor] | None = None
    cqtable: np.ndarray | None = None
    chroma_factor: int = 0  # 2 (4:2:0) or 1 (4:4:4); 0: no chroma constraint (grey, or another layout)

    @classmethod
    def from_file(cls, path) -> Consistency:
        import jpeglib

        from otmlib.imageio import ImageError

        try:
            dct = jpeglib.read_dct(str(path))
            k, qt = np.asarray(dct.Y), np.asarray(dct.qt[0])
            chroma = dct.Cb is not None and dct.Cr is not None
            if chroma:
                cb, cr = np.asarray(dct.Cb), np.asarray(dct.Cr)
                ctab = np.asarray(dct.qt[int(dct.quant_tbl_no[1])])
                samp = np.asarray(dct.samp_factor)
        except Exception as e:  # noqa: BLE001 - jpeglib raises plain Exceptions for libjpeg errors
            raise ImageError(path, f"cannot read its DCT coefficients ({e})", "pass --no-project") from None
        with __import__("PIL.Image").Image.open(path) as im:
            height, width = im.height, im.width
        hb, wb = height // 8, width // 8
        out = cls(torch.from_numpy(k[:hb, :wb].astype(np.float64))[None, None], qt.astype(np.int64))
        if chroma:
            f = {(2, 2, 1, 1): 2, (1, 1, 1, 1): 1}.get((*samp[0], *samp[1]), 0) if (samp[1] == samp[2]).all() else 0
            if f:  # the complete blocks of the subsampled planes: 8 f x 8 f pixels of the image each
                cb_, cr_ = ((torch.from_numpy(a[: height // (8 * f), : width // (8 * f)].astype(np.float64))[None, None])
                            for a in (cb, cr))
                out.kc, out.cqtable, out.chroma_factor = (cb_, cr_), ctab.astype(np.int64), f
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> Consistency:
        import os
        import tempfile

        fd, tmp = tempfile.mkstemp(suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return cls.from_file(tmp)
        finally:
            os.unlink(tmp)

    def project_jfif(self, yj: np.ndarray) -> np.ndarray:
        """JFIF Y -> the nearest JFIF Y whose complete blocks lie in the file's intervals (eq. 5)."""
        return jpeg.project_to_intervals(as_batch(yj, np.float64), self.k, self.qtable, margin=1.0)[0, 0].numpy()

    def project(self, y_matlab: np.ndarray) -> np.ndarray:
        """The same for MATLAB-range Y (the model's colour path), through the exact linear map."""
        return jpeg.jfif_y_to_matlab(self.project_jfif(jpeg.matlab_y_to_jfif(y_matlab)))

    def project_chroma(self, cbcr: np.ndarray) -> np.ndarray:
        """JFIF Cb and Cr (2, H, W) -> the nearest planes whose subsampled versions' complete blocks lie in the
        file's own chroma intervals (:func:`otmlib.jpeg.project_chroma`); unchanged when the file gives none.
        In float32 (the chroma model's output precision; 2x faster than float64 on a 12 MP photo, within 1e-5
        levels of it)."""
        if not self.chroma_factor:
            return cbcr
        return np.stack([jpeg.project_chroma(as_batch(c, np.float32), k.float(), self.cqtable, self.chroma_factor,
                                             margin=1.0)[0, 0].numpy() for c, k in zip(cbcr, self.kc)])


def restore_image(
    G: Generator,
    img: np.ndarray,
    seeds: list[int] | None = None,
    *,
    tile: int = 512,
    bf16: bool = False,
    consistency: Consistency | None = None,
    chroma: Generator | None = None,
    qtable: np.ndarray | None = None,
) -> Restored:
    """Restore a decoded JPEG (grey (H, W) or RGB (H, W, 3) uint8) with a luminance model.

    Colour images: Y restored by ``G``; Cb/Cr kept as decoded (see the module docstring) or, with a
    ``chroma`` model, restored by it (the same for every candidate). With ``consistency``
    (from the file itself), each candidate's luminance is projected into the file's own
    quantisation intervals, so it is a plausible original of exactly that file. ``qtable`` (8, 8): the file's
    luminance table, for a model that reads it; a colour file's Y steps are JFIF levels, so the model, which
    works on MATLAB-range Y (219/255 of the span), is given the steps in its own units.
    """
    if G.cfg.channels != 1:
        raise ValueError("restore_image expects a luminance (1-channel) model")
    seeds = list(seeds) if seeds else [0]
    grey = img.ndim == 2
    # a grey JPEG's pixels are its JFIF Y; the model works on MATLAB-range Y like its training data
    y_in = img if grey else np.concatenate([jpeg.luminance(img[r]) for r in _strips(img.shape[0], COLOUR_STRIP_ROWS)])
    if qtable is not None and not grey:
        qtable = np.asarray(qtable, dtype=np.float64) * (219.0 / 255.0)
    ys = restore_luma(G, y_in, seeds, tile=tile, bf16=bf16, qtable=qtable)
    cbcr = restore_chroma(chroma, img, tile=tile, bf16=bf16) if chroma is not None and not grey else None
    if cbcr is not None and consistency is not None:
        cbcr = consistency.project_chroma(cbcr)
    outs = []
    for y in ys:
        y = y.astype(np.float64)
        if consistency is not None:
            y = consistency.project_jfif(y) if grey else consistency.project(y)
        outs.append(jpeg.to_uint8(y) if grey else _with_luma(img, y, cbcr=cbcr))
    return Restored(outs, seeds if G.cfg.noise else [None])


def _strips(height: int, rows: int) -> list[slice]:
    return [slice(r, min(r + rows, height)) for r in range(0, height, rows)]


def _with_luma(rgb: np.ndarray, y: np.ndarray | None, rows: int = COLOUR_STRIP_ROWS,
               cbcr: np.ndarray | None = None) -> np.ndarray:
    """``rgb`` (uint8) with its MATLAB Y replaced by ``y`` (None: kept) and its Cb/Cr kept or, with ``cbcr``
    ((2, H, W) JFIF Cb and Cr, e.g. from :func:`restore_chroma`), replaced; rounded to uint8.

    Pixel by pixel, so it runs in strips of rows: a 12 MP photo's float64 YCbCr copies would take
    about 1 GB (and seconds of fresh-page faults), a strip's a few MB. Same bits as the whole image at once.
    """
    out = np.empty_like(rgb)
    for r in _strips(rgb.shape[0], rows):
        ycc = jpeg.rgb_to_ycbcr(rgb[r])
        if y is not None:
            ycc[..., 0] = y[r]
        if cbcr is not None:  # JFIF and MATLAB chroma of one RGB differ by an exact linear map
            ycc[..., 1] = jpeg.jfif_chroma_to_matlab(cbcr[0, r])
            ycc[..., 2] = jpeg.jfif_chroma_to_matlab(cbcr[1, r])
        out[r] = jpeg.to_uint8(jpeg.ycbcr_to_rgb(ycc))
    return out


def restore_chroma(G: Generator, rgb: np.ndarray, *, tile: int = 512, bf16: bool = False) -> np.ndarray:
    """A colour model's Cb and Cr (JFIF, float32 (2, H, W)) for a decoded RGB JPEG (H, W, 3) uint8.

    G (``mode: chroma``, 3 channels) sees the image as the JPEG file codes it, JFIF YCbCr; its Y output is
    not used (the luminance models restore Y). Tiled like the luminance models, channels-last on CPU.
    """
    if G.cfg.channels != 3 or G.cfg.noise:
        raise ValueError("restore_chroma expects a colour (3-channel) baseline model, e.g. a chroma-q10 file")
    device = next(G.parameters()).device
    x = torch.empty((1, 3, *rgb.shape[:2]), dtype=torch.float32)
    for r in _strips(rgb.shape[0], COLOUR_STRIP_ROWS):  # no whole-image float64 copy (a 100 MP photo: 2.4 GB)
        x[0, :, r] = torch.from_numpy(jpeg.rgb_to_jfif(rgb[r]).astype(np.float32).transpose(2, 0, 1))
    return _run_tiled(G, x.to(device), [None], tile, bf16)[0][0, 1:].cpu().numpy()


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels the way EXIF ``orientation`` (1-8) says they should be displayed (Pillow's mapping)."""
    if orientation in (None, 1):
        return img
    from PIL import Image, ImageOps

    im = Image.fromarray(img)
    im.getexif()[0x0112] = orientation
    return np.asarray(ImageOps.exif_transpose(im))


def restore_file(
    G: Generator,
    path,
    seeds: list[int] | None = None,
    *,
    quality: int | None = None,
    consistent: bool = True,
    tile: int = 512,
    bf16: bool = False,
    max_pixels: int = 100_000_000,
    chroma: Generator | None = None,
    chroma_quality: int | None = None,
    strength: float = 1.0,
) -> tuple[Restored, dict]:
    """Restore one file: a JPEG as it is (its own tables for consistency; EXIF orientation applied
    to the outputs), or any other image compressed first at ``quality``. Returns the candidates and
    a dict of notes (``quality_estimate``, ``orientation``, ``consistent``, ``chroma_kept``). ``chroma``: a
    chroma model for colour inputs (see :func:`restore_image`), used on 4:2:0 files (what it learnt; a non-JPEG
    input is coded 4:2:0 first) near its training quality ``chroma_quality`` (the luminance note's tolerance);
    other files keep their decoded chroma and say why in ``chroma_kept``. ``strength``: a model that reads the
    quantisation table (``table_cond``) is given the file's table times ``strength`` (1: the file's own; above 1 it
    restores as if the file had lost more, so it smooths more; below 1 less); other models ignore it."""
    from pathlib import Path

    from PIL import Image

    from otmlib.imageio import load_image

    path = Path(path)
    img = load_image(path, exif=False, min_side=8, max_pixels=max_pixels)
    notes: dict = {}
    with Image.open(path) as im:
        is_jpeg = im.format == "JPEG"
        notes["orientation"] = int(im.getexif().get(0x0112, 1) or 1)
    cons, qtable = None, None
    if is_jpeg:
        info = jpeg.read_jpeg_info(path)
        qtable = info.luma_table
        notes["quality_estimate"] = estimate_ijg_quality(info.luma_table)[0]
        if chroma is not None and info.components == 3 and info.subsampling != "4:2:0":
            notes["chroma_kept"] = f"a {info.subsampling or 'unusual'} file"  # the chroma models learnt 4:2:0 files
            chroma = None
        if consistent:
            cons = Consistency.from_file(path)
    elif quality is None:
        raise ValueError(f"{path}: not a JPEG; pass --quality Q to compress it at quality Q first "
                         "(the models restore JPEG artifacts)")
    else:
        data = jpeg.encode(img, quality)
        img = jpeg.decode(data)
        qtable = jpeg.ijg_table(quality)
        if consistent:
            cons = Consistency.from_bytes(data)
    file_q = notes.get("quality_estimate", quality)
    if chroma is not None and chroma_quality is not None and file_q is not None and \
            not near_quality(file_q, chroma_quality):
        notes["chroma_kept"] = f"quality ~{file_q}, the chroma model's is {chroma_quality}"
        chroma = None
    notes["consistent"] = cons is not None
    if not strength > 0:
        raise ValueError(f"strength must be positive (1: the file's own table), got {strength}")
    res = restore_image(G, img, seeds, tile=tile, bf16=bf16, consistency=cons, chroma=chroma,
                        qtable=qtable * strength if G.cfg.table_cond else None)
    res.candidates = [apply_orientation(c, notes["orientation"]) for c in res.candidates]
    return res, notes


def near_quality(quality: int, trained: int) -> bool:
    """Whether a file of (estimated IJG) ``quality`` is near a model's training quality ``trained``: within
    max(3, trained / 2) (measured: Q10's luminance and chroma models harm Q60 and Q90 files)."""
    return abs(quality - trained) <= max(3, trained // 2)


def estimate_ijg_quality(table: np.ndarray) -> tuple[int, float]:
    """The IJG quality whose luminance table is closest to ``table`` and the mean relative gap."""
    best = min(range(1, 101), key=lambda q: np.abs(np.log(jpeg.ijg_table(q) / table)).mean())
    return best, float(np.abs(np.log(jpeg.ijg_table(best) / table)).mean())


# --------------------------------------------------------------------------------------------
# Measurements of candidates (issue 7): JPEG consistency, texture, diversity
# --------------------------------------------------------------------------------------------


def interval_share(candidate: np.ndarray, decoded: np.ndarray, qtable: np.ndarray) -> float:
    """Share of the candidate's DCT coefficients inside the input JPEG's intervals (eq. 5)."""
    k = jpeg.quantised_indices(as_batch(decoded, np.float64), qtable)
    return float((jpeg.interval_excess(as_batch(candidate, np.float64), k, qtable) == 0).double().mean())


def gradient_energy(img: np.ndarray) -> float:
    """Mean gradient magnitude (central differences), a simple measure of high-frequency detail."""
    g = img.astype(np.float64)
    gy, gx = np.gradient(g)
    return float(np.mean(np.hypot(gx, gy)))


def texture_ratio(output: np.ndarray, reference: np.ndarray) -> float:
    """Over-smoothness: gradient energy of ``output`` over that of the ground truth (1 = as detailed)."""
    return gradient_energy(output) / max(gradient_energy(reference), 1e-12)


def candidate_variance(candidates: list[np.ndarray]) -> np.ndarray:
    """Per-pixel unbiased variance across K >= 2 candidates (float64, H x W): E = sigma^2 for a sampler."""
    if len(candidates) < 2:
        raise ValueError(f"diversity needs at least 2 candidates, got {len(candidates)}")
    return np.var(np.stack([c.astype(np.float64) for c in candidates]), axis=0, ddof=1)


def diversity(candidates: list[np.ndarray]) -> float:
    """RMS over pixels of the per-pixel standard deviation across candidates (0 for a deterministic model).

    The standard deviation is the unbiased one (ddof 1), so an ideal sampler of plausible originals scores
    about the RMSE of the per-pixel optimum (the L2 baseline) whatever K is.
    """
    return float(np.sqrt(candidate_variance(candidates).mean()))


TEXTURED_STD = 12.0  # grey levels: local 9x9 standard deviation of the original above this is "textured"
FLAT_STD = 3.0  # ... below this is "flat"
LOCAL_WINDOW = 9


def local_std(img: np.ndarray, window: int = LOCAL_WINDOW) -> np.ndarray:
    """Standard deviation of ``img`` in the ``window`` x ``window`` neighbourhood of each pixel (reflected edges)."""
    from scipy.ndimage import uniform_filter

    g = img.astype(np.float64)
    m = uniform_filter(g, window, mode="reflect")
    m2 = uniform_filter(g * g, window, mode="reflect")
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


REGIONS = ("all", "textured", "flat")


def region_sums(per_pixel: np.ndarray, original: np.ndarray) -> dict[str, tuple[float, int]]:
    """Sum and pixel count of a per-pixel map over all pixels and over the original's textured (local 9x9 std
    above 12) and flat (below 3) ones: what diversity and error are pooled from, over one image or many."""
    s = local_std(original)
    masks = {"all": np.ones(s.shape, bool), "textured": s > TEXTURED_STD, "flat": s < FLAT_STD}
    return {name: (float(per_pixel[m].sum()), int(m.sum())) for name, m in masks.items()}


def pooled_rms(sums: dict[str, tuple[float, int]]) -> dict[str, float]:
    """sqrt(sum / count) per region of :func:`region_sums` (added up over images); NaN for an empty region."""
    return {name: float(np.sqrt(t / n)) if n else float("nan") for name, (t, n) in sums.items()}


def diversity_stats(candidates: list[np.ndarray], original: np.ndarray) -> dict[str, float]:
    """Diversity overall and in the original's textured (local std > 12) and flat (< 3) regions, and their ratio.

    NaN for a region the image does not have (a ratio then is NaN too).
    """
    rms = pooled_rms(region_sums(candidate_variance(candidates), original))
    out = {"diversity": rms["all"], "diversity_textured": rms["textured"], "diversity_flat": rms["flat"]}
    flat = out["diversity_flat"]
    out["textured_flat"] = out["diversity_textured"] / flat if flat > 0 else float("nan")
    return out
