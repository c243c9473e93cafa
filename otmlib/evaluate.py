"""The paper's evaluation protocol (Sec. 4.1, Table 2).

For every image in a folder: MATLAB ``rgb2ycbcr`` luminance rounded to 8 bits -> grey JPEG at
quality Q with the IJG tables (Pillow/libjpeg) -> restore -> PSNR, SSIM, PSNR-B against the 8-bit
luminance; the report is the mean over images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from otmlib import jpeg
from otmlib.imageio import ImageError, list_images, load_image
from otmlib.metrics import all_metrics, block_edge_ratio

# A restorer maps the decoded 8-bit luminance and its quantisation table to restored 8-bit luminance.
Restorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _identity(decoded: np.ndarray, qtable: np.ndarray) -> np.ndarray:
    return decoded


RESTORERS: dict[str, Restorer] = {"jpeg": _identity}


def generator_restorer(G, seed: int = 0, bf16: bool = False) -> Restorer:
    """A restorer from a :class:`~otmlib.models.Generator` in memory, put in eval mode; candidate ``seed``."""
    from otmlib.restore import restore_luma

    G.eval()

    def restore(decoded: np.ndarray, qtable: np.ndarray) -> np.ndarray:
        return restore_luma(G, decoded, [seed], bf16=bf16, qtable=qtable if G.cfg.table_cond else None)[0]

    return restore


def model_restorer(name_or_path: str, seed: int = 0, bf16: bool = False, alpha: float | None = None) -> Restorer:
    """A restorer from release weights (a shipped name or a .safetensors path); candidate ``seed``;
    ``alpha``: the one-to-many G interpolated toward its L2 parent (see :func:`otmlib.zoo.load_generator`)."""
    from otmlib.utils import default_device
    from otmlib.zoo import load_generator

    G, _ = load_generator(name_or_path, default_device(), alpha=alpha)
    restore = generator_restorer(G, seed, bf16)
    restore.__name__ = str(name_or_path)
    return restore


def get_restorer(name: str) -> Restorer:
    """``jpeg`` (the decoded JPEG itself, Table 2's JPEG row), or release weights by name or path."""
    if name in RESTORERS:
        return RESTORERS[name]
    return model_restorer(name)


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    psnrb: float
    edge_ratio: float  # D_B / D_Bc of the output: squared step across 8x8 edges over inside (1 = none)
    colour_shift: float = math.nan  # colour protocol: max |mean Cb or Cr of the output - the original's| (JFIF levels)


@dataclass
class EvalReport:
    """Mean scores over the images that could be read; failures are listed, not hidden."""

    data: str
    quality: int
    model: str
    protocol: str = "luminance"  # or "colour" (RGB, 4:2:0: :func:`evaluate_colour`)
    scores: list[ImageScore] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.scores)

    def mean(self, metric: str) -> float:
        vals = [getattr(s, metric) for s in self.scores]
        return float(np.mean(vals)) if vals else math.nan

    def summary(self) -> dict:
        """``n``, ``psnr``, ``ssim``, ``psnrb``, ``edge_ratio`` (+ what was measured on what)."""
        return {
            "n": self.n,
            "psnr": self.mean("psnr"),
            "ssim": self.mean("ssim"),
            "psnrb": self.mean("psnrb"),
            "edge_ratio": self.mean("edge_ratio"),
            **({"colour_shift_mean": self.mean("colour_shift"),
                "colour_shift_max": max((s.colour_shift for s in self.scores), default=math.nan)}
               if self.protocol == "colour" else {}),
            "protocol": self.protocol,
            "quality": self.quality,
            "model": self.model,
            "data": self.data,
            "failures": [{"file": f, "error": e} for f, e in self.failures],
        }

    def per_image(self) -> list[dict]:
        return [asdict(s) for s in self.scores]


def score_image(y: np.ndarray, quality: int | None, restorer: Restorer, table: np.ndarray | None = None) -> dict[str, float]:
    """Compress 8-bit luminance ``y`` at ``quality``, restore it, and score it against ``y``.

    PSNR, SSIM, PSNR-B (Table 2) and the output's block-edge ratio (:func:`block_edge_ratio`, the
    D_B / D_Bc behind PSNR-B's penalty), which says how much blocking is left. ``table``: code with this
    luminance table instead of IJG ``quality``'s (a camera's or an editor's own; ``quality`` is then unused).
    """
    return _score_coded(y, *_code(y, quality, table), restorer)


def _code(y: np.ndarray, quality: int | None, table: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``y`` coded with ``table`` (any luminance table) or else at IJG ``quality``: (decoded pixels, table)."""
    if table is not None:
        return jpeg.decode(jpeg.encode_with_table(y, table)), np.asarray(table)
    comp = jpeg.compress(y, quality)
    return comp.pixels, comp.luma_table


def _score_coded(y: np.ndarray, decoded: np.ndarray, table: np.ndarray, restorer: Restorer) -> dict[str, float]:
    out = restorer(decoded, table)
    if out.shape != y.shape or out.dtype != np.uint8:
        raise RuntimeError(f"restorer returned {out.dtype} {out.shape}, expected uint8 {y.shape}")
    return {**all_metrics(y, out), "edge_ratio": block_edge_ratio(out)}


def evaluate(
    data: str | Path,
    quality: int,
    model: str | Restorer = "jpeg",
    *,
    on_error: str = "skip",
    limit: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """Run the protocol over the images in ``data``.

    ``on_error="skip"`` lists unreadable images in ``report.failures`` and goes on;
    ``"stop"`` raises the first :class:`~otmlib.imageio.ImageError`.
    """
    restorer = get_restorer(model) if isinstance(model, str) else model
    name = model if isinstance(model, str) else getattr(model, "__name__", "custom")
    return _run_protocol(data, quality, name, "luminance", lambda img: score_image(jpeg.luminance(img), quality, restorer),
                         on_error, limit, progress)


def _run_protocol(data, quality: int, name: str, protocol: str, score, on_error: str, limit: int | None,
                  progress: bool) -> EvalReport:
    """``score(image)`` over the images of ``data`` (8-bit, grey or RGB) into an :class:`EvalReport`;
    unreadable ones listed in ``failures`` (``on_error="skip"``) or raised (``"stop"``)."""
    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    report = EvalReport(data=str(data), quality=quality, model=name, protocol=protocol)
    suffix = "" if protocol == "luminance" else f" {protocol}"
    bar = tqdm(list_images(data)[:limit], desc=f"{name} Q{quality}{suffix}", unit="img", disable=not progress)
    for path in bar:
        try:
            img = load_image(path, exif=False, min_side=11)
        except ImageError as e:
            if on_error == "stop":
                raise
            report.failures.append((str(path), e.reason))
            continue
        report.scores.append(ImageScore(path.name, **score(img)))
        bar.set_postfix(psnr=f"{report.mean('psnr'):.2f}", refresh=False)
    return report


# A colour restorer maps a decoded RGB JPEG (H, W, 3) uint8 to a restored one.
ColourRestorer = Callable[[np.ndarray], np.ndarray]


def colour_restorer(luma: str | None = None, chroma: str | None = None, bf16: bool = False) -> ColourRestorer:
    """Restore colour JPEGs with release weights: ``luma`` (a luminance model: Y) and ``chroma`` (a chroma model:
    Cb/Cr), either one None to keep that part as decoded; both None: the JPEG itself."""
    from otmlib.restore import _with_luma, restore_chroma, restore_image
    from otmlib.utils import default_device
    from otmlib.zoo import load_chroma_model, load_generator

    G = load_generator(luma, default_device())[0].eval() if luma else None
    C = load_chroma_model(chroma, default_device()) if chroma else None

    def restore(rgb: np.ndarray) -> np.ndarray:
        if G is not None:
            return restore_image(G, rgb, [0], bf16=bf16, chroma=C).candidates[0]
        if C is not None:
            return _with_luma(rgb, None, cbcr=restore_chroma(C, rgb, bf16=bf16))
        return rgb

    restore.__name__ = " + ".join(n for n in (luma, chroma) if n) or "jpeg"
    return restore


def score_colour_image(rgb: np.ndarray, quality: int, restorer: ColourRestorer, subsampling: str = "4:2:0") -> dict:
    """The colour protocol for one image: code RGB ``rgb`` as Pillow (libjpeg) does at ``quality`` with
    ``subsampling`` chroma (4:2:0: what most files are), restore, and score RGB PSNR / SSIM / PSNR-B
    (:func:`otmlib.metrics.rgb_metrics`); ``edge_ratio`` on the output's luminance; ``colour_shift`` the larger
    gap between the output's and the original's mean Cb and Cr (JFIF levels)."""
    from otmlib.metrics import rgb_metrics

    comp = jpeg.compress(rgb, quality, subsampling)
    out = restorer(comp.pixels)
    if out.shape != rgb.shape or out.dtype != np.uint8:
        raise RuntimeError(f"restorer returned {out.dtype} {out.shape}, expected uint8 {rgb.shape}")
    a, b = jpeg.rgb_to_jfif(out), jpeg.rgb_to_jfif(rgb)
    shift = float(max(abs(a[..., c].mean() - b[..., c].mean()) for c in (1, 2)))
    return {**rgb_metrics(rgb, out), "edge_ratio": block_edge_ratio(jpeg.luminance(out)), "colour_shift": shift}


def evaluate_colour(
    data: str | Path,
    quality: int,
    restorer: ColourRestorer | None = None,
    *,
    subsampling: str = "4:2:0",
    on_error: str = "skip",
    limit: int | None = None,
    progress: bool = True,
) -> EvalReport:
    """The colour protocol (:func:`score_colour_image`) over the images in ``data`` (grey ones as R = G = B);
    ``restorer`` None: the JPEG itself. The grey protocol of Table 2 is :func:`evaluate`."""
    restorer = restorer or colour_restorer()

    def score(img: np.ndarray) -> dict:
        rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        return score_colour_image(rgb, quality, restorer, subsampling)

    return _run_protocol(data, quality, getattr(restorer, "__name__", "custom"), "colour", score, on_error, limit,
                         progress)


def table2_rows(
    test_dir: str | Path, qualities: Sequence[int], models: Sequence[str], *, limit: int | None = None,
    progress: bool = False,
) -> tuple[dict[tuple[int, str], dict], dict[tuple[int, str], float]]:
    """Our Table 2 rows: the JPEG at each quality and each baseline model at the quality it was trained for.

    ``models`` are shipped names or release files; returns ``(ours, cpu_hours)`` keyed by
    ``(quality, "JPEG" | "Baseline")``, ready for :func:`table2_frame`. A later model of the same
    quality replaces an earlier one.
    """
    from otmlib.zoo import read_release

    ours: dict[tuple[int, str], dict] = {}
    cpu_hours: dict[tuple[int, str], float] = {}
    for q in qualities:
        ours[(q, "JPEG")] = evaluate(test_dir, q, "jpeg", limit=limit, progress=progress).summary()
    for name in models:
        info = read_release(name)
        q = info.quality
        ours[(q, "Baseline")] = evaluate(test_dir, q, model_restorer(name), limit=limit, progress=progress).summary()
        cpu_hours[(q, "Baseline")] = info.cpu_hours
    return ours, cpu_hours


def quality_sweep(
    images: str | Path | Mapping[str, np.ndarray],
    codings: Sequence[int | tuple[str, np.ndarray]],
    methods: Sequence[tuple[str, Restorer, Sequence[int] | None]],
    *,
    limit: int | None = None,
    progress: bool = True,
):
    """The luminance protocol of :func:`evaluate` over many codings at once (issue 19, "one model for every JPEG").

    ``images``: a folder (each image's luminance is used, unreadable ones skipped) or a mapping name -> 8-bit
    luminance. ``codings``: IJG qualities, or ``(label, table)`` pairs for other luminance tables. ``methods``:
    ``(name, restorer, qualities)``; a method runs on the IJG qualities it lists (None: on every coding), so a
    per-quality model is scored at its own quality only. The JPEG itself is always scored; each image is coded once
    per coding. Returns a pandas DataFrame, one row per (coding, method): ``n`` images, mean ``psnr``, ``ssim``,
    ``psnrb`` and the gains over the JPEG's (``gain_psnr``, ``gain_psnrb``).
    """
    import pandas as pd

    def luminances():
        if isinstance(images, Mapping):
            yield from list(images.values())[:limit]
            return
        for path in list_images(images)[:limit]:
            try:
                yield jpeg.luminance(load_image(path, exif=False, min_side=11))
            except ImageError:
                continue

    rows: dict[tuple[str, str], list[dict]] = {}
    total = min(len(images), limit or len(images)) if isinstance(images, Mapping) else None
    for y in tqdm(luminances(), total=total, desc="quality sweep", unit="img", disable=not progress):
        for c in codings:
            label, q, table = (f"Q{c}", c, None) if isinstance(c, int) else (c[0], None, np.asarray(c[1]))
            decoded, used = _code(y, q, table)
            for name, restorer, qs in [("JPEG", _identity, None), *methods]:
                if qs is None or q in qs:
                    rows.setdefault((label, name), []).append(_score_coded(y, decoded, used, restorer))
    out = []
    for (label, name), scores in rows.items():
        mean = {k: float(np.mean([s[k] for s in scores])) for k in ("psnr", "ssim", "psnrb")}
        out.append({"coding": label, "method": name, "n": len(scores), **mean})
    df = pd.DataFrame(out)
    jpeg_rows = df[df.method == "JPEG"].set_index("coding")
    df["gain_psnr"] = df.psnr - df.coding.map(jpeg_rows.psnr)
    df["gain_psnrb"] = df.psnrb - df.coding.map(jpeg_rows.psnrb)
    return df


# Published single models for every JPEG quality, BSDS500 test, grey, the Table 2 protocol: quality ->
# (PSNR, PSNR-B) dB, as the any-quality issue (19) quotes them: DnCNN-3 (Zhang et al. 2017); QGAC (Ehrlich et al.
# 2020, PSNR only).
SINGLE_MODEL_PEERS: dict[str, dict[int, tuple[float, float | None]]] = {
    "DnCNN-3": {10: (29.21, 28.80), 20: (31.53, 30.79), 30: (32.90, 31.97), 40: (33.85, 32.80)},
    "QGAC": {10: (29.46, None), 20: (31.73, None), 30: (33.07, None), 40: (34.01, None)},
}


# Table 2 of the paper as printed: (quality, approach) -> (PSNR dB, SSIM, PSNR-B dB)
PAPER_TABLE2: dict[tuple[int, str], tuple[float, float, float]] = {
    (5, "JPEG"): (25.36, 0.6764, 22.91), (5, "ARCNN"): (26.72, 0.7256, 26.48),
    (5, "TNRD"): (26.81, 0.7279, 26.65), (5, "DDCN"): (26.98, 0.7333, 26.76),
    (5, "Baseline"): (27.12, 0.7406, 26.87),
    (10, "JPEG"): (27.80, 0.7875, 25.10), (10, "ARCNN"): (29.10, 0.8198, 28.73),
    (10, "TNRD"): (29.16, 0.8225, 28.81), (10, "DDCN"): (29.59, 0.8381, 29.18),
    (10, "Baseline"): (29.56, 0.8352, 29.10),
    (20, "JPEG"): (30.05, 0.8671, 27.22), (20, "ARCNN"): (31.28, 0.8854, 30.55),
    (20, "TNRD"): (31.41, 0.8889, 30.83), (20, "DDCN"): (31.88, 0.8996, 31.10),
    (20, "Baseline"): (31.89, 0.8977, 31.04),
}


def table2_frame(ours: dict[tuple[int, str], dict], cpu_hours: dict[tuple[int, str], float] | None = None):
    """The paper's printed rows beside ours, as a pandas DataFrame (one row per quality x approach).

    ``ours`` maps ``(quality, name)`` to an :meth:`EvalReport.summary`-like dict; ``cpu_hours``
    maps the same keys to the training CPU-hours behind a row (trained rows only). ``edge_ratio``
    (ours only: the paper does not print it) is the mean block-edge ratio of the outputs.
    """
    import pandas as pd

    rows = [dict(quality=q, approach=a, source="paper", psnr=v[0], ssim=v[1], psnrb=v[2], n=200, cpu_hours=None,
                 edge_ratio=None) for (q, a), v in PAPER_TABLE2.items()]
    for (q, name), s in ours.items():
        rows.append(dict(quality=q, approach=name, source="ours", psnr=s["psnr"], ssim=s["ssim"],
                         psnrb=s["psnrb"], n=s["n"], cpu_hours=(cpu_hours or {}).get((q, name)),
                         edge_ratio=s.get("edge_ratio")))
    return pd.DataFrame(rows).sort_values(["quality", "source", "approach"], kind="stable").reset_index(drop=True)
