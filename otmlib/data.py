"""Training patches: ground truth, its JPEG, the quantisation table and the alignment flag.

Compress first, then crop (Sec. 3.4): each image is JPEG-compressed once, whole, so the coder's
8x8 grid is the image's. A patch whose origin is a multiple of 8 then shares that grid and its
DCT blocks are the coder's (the JPEG loss applies); any other origin is "misaligned" (weight 0).
Any-quality training (``DataConfig.qualities``, issue 19) codes each patch on its own instead, at a table
drawn per patch (:func:`random_table`), with the whole image's blocks all the same (see ``_code_patch``).

Determinism: sample ``i`` of the (endless) stream is a pure function of ``(seed, i)``, so a run
resumed at step ``s`` sees exactly the batches it would have seen, with any number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from otmlib import jpeg
from otmlib.imageio import ImageError, list_images, load_image


@dataclass
class DataConfig:
    """Where the patches come from and what they look like."""

    data: str | None = None  # folder (BSDS500 root or any image folder); None: resolve_bsds500()
    splits: tuple[str, ...] = ("train", "val")  # BSDS500 splits to train on (test is never used)
    val_holdout: int = 10  # first N images of BSDS500 val (by name) held aside for validation
    quality: int = 10  # JPEG quality of the training inputs
    patch: int = 64  # patch side in pixels (multiple of 8); the paper's value is lost (reconstructed)
    colour: bool = False  # False: luminance Y (the paper's main setting); True: RGB
    subsampling: str = "4:4:4"  # colour only: the chroma layout of the training JPEGs ("4:2:0": most real files)
    aligned_fraction: float = 0.5  # share of patches whose origin is on the 8x8 coding grid
    augment: bool = True  # random flips / transposes (the table is transposed with the patch)
    scales: tuple[float, ...] = (1.0,)  # each training image also at these sizes (resized, then coded)
    seed: int = 0
    # any quality (issue 19): each patch coded on its own at a quality drawn log-uniformly from [lo, hi]
    # (random_table), instead of every image once at ``quality``; grey only. ``quality`` is then nominal (the
    # release's); validation codes each held-out image at every quality of VAL_QUALITIES.
    qualities: tuple[int, int] | None = None
    table_jitter: float = 0.0  # share of those patches coded with a perturbed, non-IJG table (cameras' own)
    # how the quality is drawn: "quality" log-uniform in Q (Q90-95 get 2% of the patches on [5, 95]); "scale"
    # log-uniform in IJG's table scale (5000/Q below 50, 200-2Q above), i.e. in the quantiser's step: every
    # doubling of the step gets the same share, Q90-95 as many patches as Q5-10 (16% each on [5, 95]); "mixed":
    # half the patches each way (Q90-95 9%, Q5-10 21%)
    quality_law: str = "quality"

    def __post_init__(self) -> None:
        if self.subsampling not in ("4:4:4", "4:2:0"):
            raise ValueError(f"data.subsampling must be '4:4:4' or '4:2:0', got {self.subsampling!r}")
        if self.qualities is not None:
            lo, hi = self.qualities
            if not 1 <= lo <= hi <= 100:
                raise ValueError(f"data.qualities must be [lo, hi] with 1 <= lo <= hi <= 100, got {self.qualities}")
            if self.colour:
                raise ValueError("data.qualities (any-quality training) is grey only for now")
        if self.quality_law not in QUALITY_LAWS:
            raise ValueError(f"data.quality_law must be one of {QUALITY_LAWS}, got {self.quality_law!r}")
        if not 0.0 <= self.table_jitter <= 1.0:
            raise ValueError(f"data.table_jitter is a share in [0, 1], got {self.table_jitter}")


VAL_QUALITIES = (10, 20, 40, 60, 90, 95)  # what an any-quality run validates at (each held-out image at each)
QUALITY_LAWS = ("quality", "scale", "mixed")


def ijg_scale(quality: float) -> float:
    """libjpeg's table scale in percent for ``quality`` (jpeg_quality_scaling, without its integer division)."""
    return 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality


def quality_of_scale(scale: float) -> float:
    """The inverse of :func:`ijg_scale` on 1 <= quality < 100."""
    return 5000.0 / scale if scale >= 100 else (200.0 - scale) / 2.0


def random_table(rng: np.random.Generator, qualities: tuple[int, int], jitter: float,
                 law: str = "quality") -> tuple[np.ndarray, int]:
    """A luminance table for one any-quality training patch, and the IJG quality it was drawn around.

    ``law="quality"``: the quality is log-uniform on ``qualities`` (rounded): Q5-10 get as many patches as Q50-100,
    because the low qualities carry most of the loss and of the artifacts. ``law="scale"``: the table's scale
    (:func:`ijg_scale`, proportional to every step) is log-uniform between the scales of the two ends, so each
    doubling of the quantiser step gets the same share, the high qualities too; ``law="mixed"``: either, at even
    odds, per patch. With probability ``jitter`` the IJG table is perturbed
    into one no IJG quality gives: tilted toward low or high frequencies (x exp(a (u + v - 7) / 7), a uniform in
    +-0.5) and each step moved by x exp(N(0, 0.15^2)), rounded to 1..255 (cameras and editors write such tables).
    """
    lo, hi = qualities
    if law == "mixed":
        law = "scale" if rng.random() < 0.5 else "quality"
    if law == "scale" and hi < 100:
        s = math.exp(rng.uniform(math.log(ijg_scale(hi)), math.log(ijg_scale(lo))))
        q = int(round(quality_of_scale(s)))
    else:  # "quality" (a range reaching Q100, scale 0, has no log-scale law: it falls back here)
        q = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    table = jpeg.ijg_table(q)
    if rng.random() < jitter:
        u, v = np.mgrid[0:8, 0:8]
        a = rng.uniform(-0.5, 0.5)
        f = np.exp(a * (u + v - 7) / 7 + rng.normal(0.0, 0.15, (8, 8)))
        table = np.clip(np.round(table * f), 1, 255).astype(np.int64)
    return table, q


@dataclass
class CodedImage:
    """One training image, stored once: ground truth and its decoded JPEG, (C, H, W) uint8."""

    name: str
    gt: np.ndarray
    coded: np.ndarray | None  # None: coded patch by patch (any-quality training, DataConfig.qualities)
    qtable: np.ndarray | None  # (C, 8, 8): luminance table for grey; (Y, Cb, Cr) tables for colour
    quality: int | None = None  # the IJG quality it was coded at


def code_luma(name: str, y: np.ndarray, table: np.ndarray, quality: int | None = None) -> CodedImage:
    """A grey image (H, W) uint8 coded with any luminance ``table`` (:func:`otmlib.jpeg.encode_with_table`)."""
    coded = jpeg.decode(jpeg.encode_with_table(y, table))
    return CodedImage(name, y[None].copy(), coded[None].copy(), np.asarray(table, dtype=np.int64)[None].copy(), quality)


def code_image(name: str, img: np.ndarray, quality: int, colour: bool, subsampling: str = "4:4:4") -> CodedImage:
    """Compress a whole image once at ``quality`` and keep both versions (the cache).

    Grey: the MATLAB luminance as a grey JPEG, as the evaluation does. Colour: RGB, coded with
    ``subsampling`` chroma: 4:4:4 keeps every channel on the 8x8 grid; 4:2:0 (what most cameras and
    encoders write) codes Cb/Cr at half resolution, on a 16x16 grid of the image.
    """
    if colour:
        rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        comp = jpeg.compress(rgb, quality, subsampling=subsampling)
        tables = np.stack([comp.quant_tables[0], comp.quant_tables[1], comp.quant_tables[1]])
        return CodedImage(name, rgb.transpose(2, 0, 1).copy(), comp.pixels.transpose(2, 0, 1).copy(), tables)
    y = jpeg.luminance(img)
    comp = jpeg.compress(y, quality)
    return CodedImage(name, y[None].copy(), comp.pixels[None].copy(), comp.luma_table[None].copy(), quality)


def rescale(img: np.ndarray, scale: float) -> np.ndarray:
    """``img`` (H, W[, 3]) uint8 resized by ``scale`` (Lanczos; Pillow low-passes when it shrinks).

    Scale augmentation: a photo shrunk is another photo of the same kind (finer texture per 8x8
    block), coded whole afterwards so its JPEG grid is its own. ``scale == 1`` returns ``img``.
    """
    from PIL import Image

    if not 0 < scale <= 1:
        raise ValueError(f"scales must lie in (0, 1] (shrinking only), got {scale}")
    if scale == 1:
        return img
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the last two axes (k in 0..7); k & 4 transposes."""
    if k & 1:
        a = a[..., :, ::-1]
    if k & 2:
        a = a[..., ::-1, :]
    if k & 4:
        a = np.swapaxes(a, -1, -2)
    return a


class JpegPatchDataset(Dataset):
    """Index ``i`` -> dict(x, jpeg, q, aligned); endless (``__len__`` is nominal).

    ``x`` and ``jpeg`` are float32 (C, P, P) in [0, 255]; ``q`` is (C, 8, 8); ``aligned`` a bool.
    Flips keep an aligned patch aligned (a block maps onto a block, its coefficients change
    sign only); a transpose also transposes the quantisation table, which this carries along.
    """

    def __init__(self, images: Sequence[CodedImage], cfg: DataConfig, length: int = 1 << 30):
        if not images:
            raise ValueError("no training images")
        small = [im.name for im in images if min(im.gt.shape[1:]) < cfg.patch + 8]
        if small:
            raise ValueError(f"images smaller than patch {cfg.patch}+8: {', '.join(small[:5])}")
        if cfg.patch % 8:
            raise ValueError(f"patch must be a multiple of 8, got {cfg.patch}")
        self.images = list(images)
        self.cfg = cfg
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, int(i)])
        im = self.images[rng.integers(len(self.images))]
        _, h, w = im.gt.shape
        p = cfg.patch
        aligned = bool(rng.random() < cfg.aligned_fraction)
        if aligned:
            top = 8 * rng.integers(0, (h - p) // 8 + 1)
            left = 8 * rng.integers(0, (w - p) // 8 + 1)
        else:  # any origin off the grid in at least one direction
            while True:
                top, left = rng.integers(0, h - p + 1), rng.integers(0, w - p + 1)
                if top % 8 or left % 8:
                    break
        sl = (slice(None), slice(top, top + p), slice(left, left + p))
        if cfg.qualities is not None:  # code this patch's own surroundings at its own table
            x, y, q = im.gt[sl], *self._code_patch(im.gt, top, left, rng)
        else:
            x, y, q = im.gt[sl], im.coded[sl], im.qtable
        if cfg.augment:
            k = int(rng.integers(8))
            x, y = _dihedral(x, k), _dihedral(y, k)
            if k & 4:
                q = np.swapaxes(q, -1, -2)
        return {
            "x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            "jpeg": torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)),
            "q": torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)),
            "aligned": torch.tensor(aligned),
        }


    def _code_patch(self, gt: np.ndarray, top: int, left: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The decoded JPEG of patch (top, left) of ``gt`` (1, H, W) at a table from :func:`random_table`, and the table.

        Exactly what coding the whole image would give: a grey JPEG's 8x8 blocks are coded independently, so
        the region from the block corner at or above-left of the patch, coded alone, has the whole image's
        blocks (a region ending at the image's edge pads its last blocks as the whole image's coding does).
        """
        p = self.cfg.patch
        table, _ = random_table(rng, self.cfg.qualities, self.cfg.table_jitter, self.cfg.quality_law)
        r0, c0 = top // 8 * 8, left // 8 * 8  # the blocks the patch touches, and no more (p x p when aligned)
        r1, c1 = -(-(top + p) // 8) * 8, -(-(left + p) // 8) * 8
        region = gt[0, r0 : min(gt.shape[1], r1), c0 : min(gt.shape[2], c1)]
        dec = jpeg.decode(jpeg.encode_with_table(np.ascontiguousarray(region), table))
        return dec[None, top - r0 : top - r0 + p, left - c0 : left - c0 + p], table[None]


class StreamSampler(Sampler[int]):
    """Global sample indices ``start, start+1, ...`` taken by one of ``world`` ranks (endless)."""

    def __init__(self, start: int = 0, rank: int = 0, world: int = 1):
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while True:
            yield i * self.world + self.rank
            i += 1


# --------------------------------------------------------------------------------------------
# Building the image sets
# --------------------------------------------------------------------------------------------


def split_files(root: Path, splits: Sequence[str], val_holdout: int) -> tuple[list[Path], list[Path]]:
    """Training files and held-out validation files under a BSDS500 root or a plain folder.

    A BSDS500 root (with ``train``/``val``/``test``) trains on ``splits`` minus the first
    ``val_holdout`` images of ``val``, which validate. A plain folder holds out its first
    ``val_holdout`` images. ``test`` is refused: it is for the final evaluation only.
    """
    if "test" in splits:
        raise ValueError("BSDS500 test is for evaluation only; train on train/val")
    if (root / "train").is_dir() and (root / "val").is_dir():
        val_all = list_images(root / "val")
        held = val_all[:val_holdout]
        train = [f for s in splits for f in list_images(root / s) if f not in held]
        return train, held
    files = list_images(root)
    if len(files) <= val_holdout:
        raise ValueError(f"{root}: {len(files)} images, need more than val_holdout={val_holdout}")
    return files[val_holdout:], files[:val_holdout]


def load_coded(
    files: Sequence[Path], cfg: DataConfig, progress: bool = True, scales: Sequence[float] = (1.0,)
) -> tuple[list[CodedImage], list[str]]:
    """Read each file, resize it to every scale in ``scales`` and compress each version once.

    Unreadable files are reported by name and skipped; a version smaller than ``patch + 8`` on a
    side is left out. Versions are named ``name@scale`` (``name`` alone at scale 1).
    """
    from tqdm.auto import tqdm

    out, failures = [], []
    for f in tqdm(files, desc=f"coding Q{cfg.quality}", unit="img", disable=not progress):
        try:
            img = load_image(f, min_side=cfg.patch + 8)
        except ImageError as e:
            failures.append(str(e))
            continue
        out += coded_versions(f.name, img, cfg, scales)
    return out, failures


def coded_versions(name: str, img: np.ndarray, cfg: DataConfig, scales: Sequence[float] = (1.0,)) -> list[CodedImage]:
    """``img`` resized to each of ``scales`` and compressed once, named ``name@scale`` (``name`` at 1);
    a version smaller than ``patch + 8`` on a side is left out."""
    out = []
    for s in scales:
        im = rescale(img, s)
        if min(im.shape[:2]) >= cfg.patch + 8:
            n = name if s == 1 else f"{name}@{s:g}"
            if cfg.qualities is not None:  # coded patch by patch during training
                out.append(CodedImage(n, jpeg.luminance(im)[None].copy(), None, None))
            else:
                out.append(code_image(n, im, cfg.quality, cfg.colour, cfg.subsampling))
    return out


def validation_versions(images: Sequence[CodedImage], cfg: DataConfig) -> list[CodedImage]:
    """Held-out images as validation sees them: as coded (one quality), or, for an any-quality run, each one
    coded at every quality of :data:`VAL_QUALITIES` (named ``name Q20``)."""
    if cfg.qualities is None:
        return list(images)
    return [code_luma(f"{im.name} Q{q}", im.gt[0], jpeg.ijg_table(q), q) for q in VAL_QUALITIES for im in images]


def sample_coded(cfg: DataConfig) -> tuple[list[CodedImage], list[CodedImage]]:
    """The offline fallback: scikit-image's photos, the last two held out for validation."""
    from otmlib.datasets import sample_images

    images = [(n, a) for n, a in sample_images().items() if min(a.shape[:2]) >= cfg.patch + 8]
    train = [c for n, a in images[:-2] for c in coded_versions(n, a, cfg, cfg.scales)]
    return train, [code_image(n, a, cfg.quality, cfg.colour, cfg.subsampling) for n, a in images[-2:]]


@dataclass
class TrainingSets:
    """Coded training and validation images, what they are, and a checksum of their files."""

    train: list[CodedImage]
    val: list[CodedImage]
    description: str
    sha256: str  # over the sorted (file name, file SHA-256) pairs of the training files
    failures: list[str]


def training_sets(cfg: DataConfig, progress: bool = True, max_images: int | None = None) -> TrainingSets:
    """Resolve the data (see :func:`otmlib.datasets.resolve_bsds500`), code every image once.

    ``max_images``: only the first that many training images (a small training in a notebook)."""
    import hashlib

    from otmlib.datasets import resolve_bsds500, sha256_file

    source = resolve_bsds500(cfg.data)
    if source.is_samples:
        train, val = sample_coded(cfg)
        train, val = train[:max_images], validation_versions(val, cfg)
        digest = hashlib.sha256(",".join(im.name for im in train).encode()).hexdigest()
        return TrainingSets(train, val, f"scikit-image samples ({source.message})", digest, [])
    train_files, val_files = split_files(source.root, cfg.splits, cfg.val_holdout)
    train_files = train_files[:max_images]
    h = hashlib.sha256()
    for f in sorted(train_files, key=lambda p: p.name):
        h.update(f"{f.name} {sha256_file(f)}\n".encode())
    train, fails = load_coded(train_files, cfg, progress, scales=cfg.scales)
    val, vfails = load_coded(val_files, cfg, progress=False)  # validation: native size only
    val = validation_versions(val, cfg)
    sizes = "" if tuple(cfg.scales) == (1.0,) else f" (with resized copies at scales {', '.join(f'{s:g}' for s in cfg.scales)})"
    coding = (f"JPEG Q{cfg.quality}" if cfg.qualities is None else
              f"JPEG Q{cfg.qualities[0]}-{cfg.qualities[1]} per patch (log-uniform"
              + {"quality": "", "scale": " in the table's scale", "mixed": ", half of them in the table's scale"}[cfg.quality_law]
              + (f", {cfg.table_jitter:.0%} non-IJG tables)" if cfg.table_jitter else ")"))
    desc = (f"{source.root} ({source.kind}): {len(train)} training images{sizes} from {'+'.join(cfg.splits)}, "
            f"{len(val_files) - len(vfails)} held out for validation, {coding}, "
            f"{f'RGB {cfg.subsampling}' if cfg.colour else 'Y'}")
    return TrainingSets(train, val, desc, h.hexdigest(), fails + vfails)
