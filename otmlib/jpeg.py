"""JPEG maths: IJG tables, encode/decode, MATLAB YCbCr, blockwise DCT, quantisation intervals.

The JPEG loss of the paper (Sec. 3.3.3, eqs. 4-6) lives here too, because it is nothing but
DCT arithmetic. Conventions:

- Pixels are floats in [0, 255]. ``C(.)`` is the orthonormal 8x8 DCT-II of ``pixels - 128``,
  the level shift of the JPEG standard (ITU T.81, A.3.1).
- Blockwise coefficients are laid out as ``(..., Hb, Wb, 8, 8)``: block row, block column, then
  the 8x8 frequencies (row = vertical frequency). An 8x8 quantisation table ``Q`` then broadcasts.
- Edges: :func:`block_dct` pads a side that is not a multiple of 8 by repeating its last
  row/column, as libjpeg's encoder does. The decoder never shows the padded pixels, so the
  coefficients of a partial edge block cannot be recovered from a decoded image; the interval
  functions and :func:`jpeg_loss` therefore use complete blocks only (the image is cropped to
  ``8 * (H // 8), 8 * (W // 8)``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, JpegImagePlugin
from torch import Tensor

BLOCK = 8

# ITU T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), natural (row-major) order.
IJG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
)
IJG_CHROMA = np.array(
    [
        [17, 18, 24, 47, 99, 99, 99, 99],
        [18, 21, 26, 66, 99, 99, 99, 99],
        [24, 26, 56, 99, 99, 99, 99, 99],
        [47, 66, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
        [99, 99, 99, 99, 99, 99, 99, 99],
    ],
    dtype=np.int64,
)


# The luminance table by N. Robidoux that ImageMagick writes and mozjpeg's cjpeg uses by default (its table 3),
# natural order. Scaled by quality as libjpeg scales Annex K's (scaled_table): a common non-IJG table.
ROBIDOUX_LUMA = np.array(
    [
        [16, 16, 16, 18, 25, 37, 56, 85],
        [16, 17, 20, 27, 34, 40, 53, 75],
        [16, 20, 24, 31, 43, 62, 91, 135],
        [18, 27, 31, 40, 53, 74, 106, 156],
        [25, 34, 43, 53, 69, 94, 131, 189],
        [37, 40, 62, 74, 94, 124, 169, 238],
        [56, 53, 91, 106, 131, 169, 226, 311],
        [85, 75, 135, 156, 189, 238, 311, 418],
    ],
    dtype=np.int64,
)


def scaled_table(base: np.ndarray, quality: int) -> np.ndarray:
    """``base`` scaled to ``quality`` as libjpeg's jpeg_set_quality scales a table (baseline: steps 1..255)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((np.asarray(base, dtype=np.int64) * scale + 50) // 100, 1, 255)


def ijg_table(quality: int, chroma: bool = False) -> np.ndarray:
    """The quantisation table libjpeg's ``jpeg_set_quality(q, force_baseline=TRUE)`` writes.

    Same arithmetic as ``jpeg_quality_scaling`` and ``jpeg_add_quant_table`` in jcparam.c.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return scaled_table(IJG_CHROMA if chroma else IJG_LUMA, quality)


# --------------------------------------------------------------------------------------------
# Files and bytes
# --------------------------------------------------------------------------------------------

_SUBSAMPLING = {-1: None, 0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


@dataclass(frozen=True)
class JpegInfo:
    """What a JPEG file says about its own coding (read with Pillow, no pixels decoded)."""

    path: str
    width: int
    height: int
    mode: str  # Pillow mode: "L", "RGB", "CMYK", ...
    components: int
    subsampling: str | None  # "4:4:4", "4:2:2", "4:2:0"; None for grey or unusual layouts
    quant_tables: dict[int, np.ndarray]  # table id -> 8x8 int array, natural order
    progressive: bool

    @property
    def luma_table(self) -> np.ndarray:
        return self.quant_tables[0]


def read_jpeg_info(path: str | Path) -> JpegInfo:
    """Quantisation tables, component count and chroma subsampling of a JPEG file.

    Raises ``ValueError`` naming the file when it is not a JPEG.
    """
    with Image.open(path) as im:
        if im.format != "JPEG":
            raise ValueError(f"{path}: not a JPEG file (Pillow reads it as {im.format})")
        return _info_from_image(im, str(path))


def _info_from_image(im: Image.Image, name: str) -> JpegInfo:
    # Pillow (>= 8.3) gives the DQT tables in natural order, as lists of 64 ints.
    tables = {int(k): np.asarray(v, dtype=np.int64).reshape(8, 8) for k, v in im.quantization.items()}
    sampling = JpegImagePlugin.get_sampling(im) if len(im.getbands()) == 3 else -1
    return JpegInfo(
        path=name,
        width=im.width,
        height=im.height,
        mode=im.mode,
        components=len(im.getbands()),
        subsampling=_SUBSAMPLING.get(sampling),
        quant_tables=tables,
        progressive=bool(im.info.get("progressive") or im.info.get("progression")),
    )


def encode(img: np.ndarray, quality: int, subsampling: str = "4:2:0") -> bytes:
    """Compress a uint8 array (H, W) grey or (H, W, 3) RGB with the standard IJG tables.

    Baseline, Huffman tables not optimised, libjpeg's default (islow) DCT: what Pillow writes
    for ``quality=q``. ``subsampling`` only matters for colour.
    """
    if img.dtype != np.uint8:
        raise TypeError(f"encode expects uint8 pixels, got {img.dtype} (round and clip first)")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"encode expects (H, W) or (H, W, 3), got shape {img.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    return buf.getvalue()


def encode_with_table(y: np.ndarray, table: np.ndarray) -> bytes:
    """Compress a grey uint8 image (H, W) with the luminance quantisation ``table`` (8x8 steps 1..255, natural
    order): any table, not only the IJG ones ``encode`` writes (cameras and editors use their own). Baseline,
    libjpeg's islow DCT, as ``encode``; with ``table = ijg_table(q)`` the decoded pixels equal ``encode(y, q)``'s."""
    table = np.asarray(table)
    if y.dtype != np.uint8 or y.ndim != 2:
        raise ValueError(f"encode_with_table expects a grey uint8 (H, W) image, got {y.dtype} {y.shape}")
    if table.shape != (8, 8) or table.min() < 1 or table.max() > 255:
        raise ValueError(f"a baseline JPEG table is 8x8 steps in 1..255, got shape {table.shape}, "
                         f"range {table.min()}..{table.max()}")
    buf = io.BytesIO()
    Image.fromarray(y).save(buf, format="JPEG", qtables=[[int(v) for v in table.reshape(-1)]])
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """Decode JPEG bytes to a uint8 array, (H, W) for grey, (H, W, 3) for colour."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L" if im.mode == "L" else "RGB"))


@dataclass(frozen=True)
class Compressed:
    """A JPEG round trip: the decoded pixels and the tables the coder used."""

    pixels: np.ndarray  # uint8, same shape as the input
    quant_tables: dict[int, np.ndarray]
    nbytes: int

    @property
    def luma_table(self) -> np.ndarray:
        return self.quant_tables[0]


def compress(img: np.ndarray, quality: int, subsampling: str = "4:2:0") -> Compressed:
    """Encode then decode ``img`` at ``quality``; returns pixels and quantisation tables."""
    data = encode(img, quality, subsampling)
    with Image.open(io.BytesIO(data)) as im:
        info = _info_from_image(im, "<memory>")
    return Compressed(pixels=decode(data), quant_tables=info.quant_tables, nbytes=len(data))


# --------------------------------------------------------------------------------------------
# Colour: MATLAB rgb2ycbcr (ITU-R BT.601, studio range: Y in [16, 235], Cb/Cr in [16, 240])
# --------------------------------------------------------------------------------------------

_RGB2YCBCR = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ]
)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` on 8-bit-scaled RGB: (..., 3) in [0, 255] -> float64 YCbCr in [0, 255].

    MATLAB on a uint8 image also rounds; call :func:`to_uint8` on the result for that.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_ycbcr expects a last axis of 3, got shape {rgb.shape}")
    # One 2-D matmul (BLAS): numpy loops a (H, W, 3) @ (3, 3) product row by row, 2x slower, same bits.
    flat = rgb.reshape(-1, 3) / 255.0
    return (flat @ _RGB2YCBCR.T + _YCBCR_OFFSET).reshape(rgb.shape)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr` (MATLAB ``ycbcr2rgb``): float64 RGB in [0, 255], unclipped."""
    ycbcr = np.asarray(ycbcr, dtype=np.float64)
    flat = ycbcr.reshape(-1, 3) - _YCBCR_OFFSET  # 2-D for BLAS, as in rgb_to_ycbcr
    return (flat @ np.linalg.inv(_RGB2YCBCR).T * 255.0).reshape(ycbcr.shape)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (MATLAB's ``uint8()``) and clip to [0, 255]."""
    # floor(x + 0.5) equals sign(x) * floor(|x| + 0.5) wherever the clip to [0, 255] keeps the value.
    x = np.floor(np.asarray(x, dtype=np.float64) + 0.5)
    return np.clip(x, 0, 255, out=x).astype(np.uint8)


def luminance(img: np.ndarray) -> np.ndarray:
    """The 8-bit Y channel the paper evaluates on: MATLAB ``rgb2ycbcr`` Y, rounded; grey passes through."""
    if img.ndim == 2:
        return img.astype(np.uint8, copy=False)
    return to_uint8(rgb_to_ycbcr(img)[..., 0])


# --------------------------------------------------------------------------------------------
# Blockwise DCT in torch
# --------------------------------------------------------------------------------------------


def dct_matrix(n: int = BLOCK, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Orthonormal DCT-II matrix ``D`` (``D @ D.T = I``); a block's 2-D DCT is ``D @ X @ D.T``."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    d[0] /= 2.0**0.5
    return d.to(dtype=dtype, device=device)


def pad_to_blocks(x: Tensor, block: int = BLOCK) -> Tensor:
    """Pad the last two axes up to a multiple of ``block`` by repeating the last row/column (libjpeg)."""
    h, w = x.shape[-2:]
    ph, pw = -h % block, -w % block
    if ph == 0 and pw == 0:
        return x
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, h, w)
    flat = F.pad(flat, (0, pw, 0, ph), mode="replicate")
    return flat.reshape(*lead, h + ph, w + pw)


def block_dct(x: Tensor) -> Tensor:
    """2-D orthonormal DCT of every 8x8 block: (..., H, W) -> (..., H/8, W/8, 8, 8).

    No level shift here (see :func:`coefficients`). Sides that are not multiples of 8 are padded
    by edge replication first. Differentiable; one batched matmul pair, no loop over blocks.
    """
    x = pad_to_blocks(x)
    h, w = x.shape[-2:]
    blocks = x.reshape(*x.shape[:-2], h // BLOCK, BLOCK, w // BLOCK, BLOCK).transpose(-3, -2)
    d = dct_matrix(dtype=x.dtype, device=x.device)
    return d @ blocks @ d.T


def block_idct(coeffs: Tensor) -> Tensor:
    """Inverse of :func:`block_dct`: (..., Hb, Wb, 8, 8) -> (..., 8 Hb, 8 Wb)."""
    d = dct_matrix(dtype=coeffs.dtype, device=coeffs.device)
    blocks = d.T @ coeffs @ d
    hb, wb = coeffs.shape[-4:-2]
    return blocks.transpose(-3, -2).reshape(*coeffs.shape[:-4], hb * BLOCK, wb * BLOCK)


def crop_to_blocks(x: Tensor) -> Tensor:
    """Keep the complete 8x8 blocks only (see the module docstring on edges)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % BLOCK, : w - w % BLOCK]


def coefficients(x: Tensor) -> Tensor:
    """``C(x)`` of the paper: DCT of the level-shifted pixels of the complete blocks of ``x``."""
    return block_dct(crop_to_blocks(x) - 128.0)


def _as_table(q: Tensor | np.ndarray, like: Tensor) -> Tensor:
    """Broadcast a quantisation table against (N, C, Hb, Wb, 8, 8) coefficients.

    Accepts (8, 8) for everything, (N, 8, 8) one per image, or (N, C, 8, 8) one per channel.
    """
    q = torch.as_tensor(q, dtype=like.dtype, device=like.device)
    if q.shape[-2:] != (BLOCK, BLOCK):
        raise ValueError(f"a quantisation table is 8x8, got shape {tuple(q.shape)}")
    if q.ndim == 2:
        return q
    if q.ndim == 3:
        return q[:, None, None, None]
    if q.ndim == 4:
        return q[:, :, None, None]
    raise ValueError(f"quantisation table of shape {tuple(q.shape)} not understood")


def quantised_indices(decoded: Tensor, q: Tensor | np.ndarray) -> Tensor:
    """Eq. (4): the integers ``k = round(C(x') / Q)`` the file stored, recovered from decoded pixels.

    Exact where the decoder did not clip (pixel rounding moves a coefficient by far less than
    ``Q/2`` for every ``Q >= 2``). ``decoded`` is (N, C, H, W) in [0, 255].
    """
    c = coefficients(decoded)
    return torch.round(c / _as_table(q, c))


def coefficient_bounds(k: Tensor, q: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Eq. (5): every original ``x`` of the JPEG satisfies ``Q k - Q/2 <= C(x) <= Q k + Q/2``."""
    qt = _as_table(q, k)
    return qt * k - qt / 2, qt * k + qt / 2


def interval_excess(y: Tensor, k: Tensor, q: Tensor | np.ndarray) -> Tensor:
    """How far each coefficient of ``y`` lies outside its interval: ``max(0, |C(y) - Qk| - Q/2)``."""
    c = coefficients(y)
    qt = _as_table(q, c)
    return F.relu((c - qt * k).abs() - qt / 2)


def jpeg_loss(
    y: Tensor,
    k: Tensor,
    q: Tensor | np.ndarray,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """JPEG loss, eq. (6): ``L_j = mean(max(0, |C(y) - Q k| - Q/2)^2)``, a truncated L2.

    Args:
        y: candidates (N, C, H, W) in [0, 255].
        k: quantised indices of the input JPEG, from :func:`quantised_indices`.
        q: quantisation table(s), see :func:`_as_table`.
        weight: (N,) per-sample weight, e.g. 0 for patches not aligned with the 8x8 coding grid
            (their blocks are not the coder's, Sec. 3.4), 1 otherwise.
        reduction: "mean" (over the batch of per-image losses), "sum" or "none" (per image, (N,)).
    """
    per_image = interval_excess(y, k, q).pow(2).flatten(1).mean(dim=1)
    if weight is not None:
        per_image = per_image * weight.to(per_image)
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        return per_image.mean()
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def project_to_intervals(y: Tensor, k: Tensor, q: Tensor | np.ndarray, margin: float = 0.0) -> Tensor:
    """Clamp every complete block's coefficients of ``y`` into its interval (eq. 5), back to pixels.

    The result is the nearest image (in L2: the DCT is orthonormal) whose complete blocks are a
    plausible original of the JPEG with indices ``k`` and table(s) ``q``. Pixels outside the
    complete blocks (a partial edge) are left as they are. ``margin`` shrinks each interval by
    ``min(margin, Q/4)`` on both sides: clamped coefficients sit on a bound, and rounding the
    result to 8-bit pixels would push about half of them just outside again.
    """
    c = coefficients(y)
    lo, hi = coefficient_bounds(k, q)
    if margin:
        m = torch.clamp(_as_table(q, c) / 4, max=margin)
        lo, hi = lo + m, hi - m
    inside = block_idct(torch.minimum(torch.maximum(c, lo), hi)) + 128.0
    out = y.clone()
    h, w = inside.shape[-2:]
    out[..., :h, :w] = inside
    return out


def matlab_y_to_jfif(y: np.ndarray) -> np.ndarray:
    """MATLAB (studio-range) Y to JFIF (full-range) Y of the same RGB: both are 0.299 R + 0.587 G + 0.114 B."""
    return (np.asarray(y, dtype=np.float64) - 16.0) * 255.0 / 219.0


def jfif_y_to_matlab(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`matlab_y_to_jfif`."""
    return 16.0 + np.asarray(y, dtype=np.float64) * 219.0 / 255.0


# --------------------------------------------------------------------------------------------
# Colour as a JPEG file holds it: JFIF YCbCr (full range, ITU-R BT.601 weights), Cb/Cr centred on 128
# --------------------------------------------------------------------------------------------

_RGB2JFIF = np.array([
    [0.299, 0.587, 0.114],
    [-0.168735892, -0.331264108, 0.5],
    [0.5, -0.418687589, -0.081312411],
])
_JFIF_OFFSET = np.array([0.0, 128.0, 128.0])


def rgb_to_jfif(rgb):
    """RGB in [0, 255] -> JFIF YCbCr, the colour space a JPEG file codes (what libjpeg's encoder computes,
    before its fixed-point rounding). ``rgb`` is (..., 3) numpy (float64 out) or (N, 3, H, W) torch (same dtype out)."""
    if isinstance(rgb, torch.Tensor):
        m = torch.as_tensor(_RGB2JFIF, dtype=rgb.dtype, device=rgb.device)
        off = torch.as_tensor(_JFIF_OFFSET, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"rgb_to_jfif expects (N, 3, H, W) tensors, got {tuple(rgb.shape)}")
        return torch.einsum("oc,nchw->nohw", m, rgb) + off
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_jfif expects a last axis of 3, got shape {rgb.shape}")
    return (rgb.reshape(-1, 3) @ _RGB2JFIF.T + _JFIF_OFFSET).reshape(rgb.shape)


def jfif_to_rgb(ycc):
    """Inverse of :func:`rgb_to_jfif` (unclipped, unrounded): numpy (..., 3) or torch (N, 3, H, W)."""
    inv = np.linalg.inv(_RGB2JFIF)
    if isinstance(ycc, torch.Tensor):
        m = torch.as_tensor(inv, dtype=ycc.dtype, device=ycc.device)
        off = torch.as_tensor(_JFIF_OFFSET, dtype=ycc.dtype, device=ycc.device).view(1, 3, 1, 1)
        if ycc.ndim != 4 or ycc.shape[1] != 3:
            raise ValueError(f"jfif_to_rgb expects (N, 3, H, W) tensors, got {tuple(ycc.shape)}")
        return torch.einsum("oc,nchw->nohw", m, ycc - off)
    ycc = np.asarray(ycc, dtype=np.float64)
    return ((ycc.reshape(-1, 3) - _JFIF_OFFSET) @ inv.T).reshape(ycc.shape)


def jfif_chroma_to_matlab(c: np.ndarray) -> np.ndarray:
    """JFIF Cb or Cr (full range around 128) -> MATLAB's studio-range Cb or Cr of the same RGB (224/255 scale)."""
    return 128.0 + (np.asarray(c, dtype=np.float64) - 128.0) * 224.0 / 255.0


def chroma_means(c: Tensor, factor: int = 2) -> Tensor:
    """A full-resolution chroma plane (..., H, W) as a ``factor``-subsampled file codes it: the means of its
    complete ``factor`` x ``factor`` cells, (..., H // factor, W // factor) (libjpeg's h2v2 downsampling
    without its alternating 1/4-level rounding bias). ``factor`` 1 returns ``c``."""
    if factor == 1:
        return c
    h, w = c.shape[-2:]
    c = c[..., : h - h % factor, : w - w % factor]
    return c.reshape(*c.shape[:-2], h // factor, factor, w // factor, factor).mean(dim=(-3, -1))


def project_chroma(c: Tensor, k: Tensor, q: Tensor | np.ndarray, factor: int = 2, margin: float = 0.0) -> Tensor:
    """The nearest full-resolution chroma plane (in L2) whose ``factor``-subsampled version (:func:`chroma_means`)
    has every complete 8x8 block inside the intervals of ``k``, ``q`` (eq. 5 on the plane the file codes).

    The means are projected (:func:`project_to_intervals`) and each cell moves by its mean's correction, the
    same for its ``factor**2`` pixels: the smallest change that gives a cell a new mean, so the detail inside
    a cell is kept. ``k``: the file's indices of this component, (N, 1, Hb, Wb, 8, 8) for the complete blocks.
    """
    half = chroma_means(c, factor)
    corr = project_to_intervals(half, k, q, margin) - half
    out = c.clone()
    hh, ww = corr.shape[-2:]
    cells = out[..., : hh * factor, : ww * factor].unflatten(-1, (ww, factor)).unflatten(-3, (hh, factor))
    cells += corr[..., :, None, :, None]  # a view of ``out``: each cell's pixels move by its mean's correction
    return out
