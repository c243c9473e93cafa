"""The noise explorer behind ``notebooks/06_noise_explorer.ipynb``: walking through ``z`` space.

The one-to-many network ``y = G(x', z)`` (paper Sec. 3.2) gives one candidate per noise sample
``z ~ N(0, sigma^2)``. This module holds everything the notebook's widgets do, as plain functions
and one class, so that it is tested headless (``tests/test_explorer.py``):

- :func:`interpolate_noise`: a path between two noise samples that stays a plausible sample of
  ``N(0, sigma^2)`` (variance-preserving or spherical), not the variance-shrinking straight line.
- :class:`NoiseExplorer`: one decoded JPEG, the model, an optional baseline and ground truth;
  candidates for ``(seed_a, seed_b, t)`` with the noise of each seed drawn once and cached, zoomed
  crops of every panel, PNG bytes for image widgets, and "save favourite" that never overwrites.
"""

from __future__ import annotations

import io
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from otmlib.metrics import psnr, psnr_b
from otmlib.models import Generator, restore_tiled
from otmlib.restore import interval_share, restore_luma, texture_ratio
from otmlib.utils import as_batch, to_uint8_image
from otmlib.viz import crop_box

__all__ = ["INTERPOLATIONS", "interpolate_noise", "crop", "zoom", "to_png", "unique_path", "NoiseExplorer"]

INTERPOLATIONS = ("variance", "slerp", "linear")


def interpolate_noise(z0: Tensor, z1: Tensor, t: float, mode: str = "variance") -> Tensor:
    r"""A point ``t`` in [0, 1] on a path from noise ``z0`` (t = 0) to ``z1`` (t = 1).

    ``mode``:

    - ``"variance"`` (default): :math:`z_t = \cos(t\pi/2)\, z_0 + \sin(t\pi/2)\, z_1`. For
      independent :math:`z_0, z_1 \sim N(0, \sigma^2)` every :math:`z_t` is again
      :math:`N(0, \sigma^2)`, because :math:`\cos^2 + \sin^2 = 1`: the network sees noise of the
      kind it was trained on all along the path.
    - ``"slerp"``: spherical interpolation of the flattened vectors along the great circle,
      :math:`\frac{\sin((1-t)\Omega)}{\sin\Omega} z_0 + \frac{\sin(t\Omega)}{\sin\Omega} z_1` with
      :math:`\Omega` their angle. Two high-dimensional Gaussian draws are almost orthogonal
      (:math:`\Omega \approx \pi/2`), where slerp *is* the ``"variance"`` path.
    - ``"linear"``: :math:`(1-t) z_0 + t z_1`, for comparison only. Its variance is
      :math:`((1-t)^2 + t^2)\sigma^2`, half of :math:`\sigma^2` at t = 0.5: mid-way the noise is
      too weak (a standard deviation of :math:`\sigma/\sqrt2`), unlike anything seen in training.

    Identical endpoints give that point for every ``t`` (the path has no length); the
    ``"variance"`` formula alone would scale it by up to :math:`\sqrt2`.
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"mode must be one of {INTERPOLATIONS}, got {mode!r}")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 differ in shape: {tuple(z0.shape)} vs {tuple(z1.shape)}")
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must lie in [0, 1], got {t}")
    if torch.equal(z0, z1):
        return z0.clone()
    if mode == "linear":
        return (1.0 - t) * z0 + t * z1
    if mode == "variance":
        return math.cos(t * math.pi / 2) * z0 + math.sin(t * math.pi / 2) * z1
    a, b = z0.flatten().double(), z1.flatten().double()
    cos_omega = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-30))
    omega = math.acos(min(1.0, max(-1.0, cos_omega)))
    if math.sin(omega) < 1e-6:  # (anti-)parallel: the great circle is undefined, go straight
        return (1.0 - t) * z0 + t * z1
    w0 = math.sin((1.0 - t) * omega) / math.sin(omega)
    w1 = math.sin(t * omega) / math.sin(omega)
    return w0 * z0 + w1 * z1


def crop(arr: np.ndarray, cy: float, cx: float, size: int) -> np.ndarray:
    """The ``size`` x ``size`` square of ``arr`` (H, W[, C]) centred at relative position (cy, cx).

    ``cy``, ``cx`` in [0, 1] are fractions of the height and width (resolution-independent, so one
    slider fits every image); the square is shifted, not shrunk, to stay inside the image, and
    ``size`` is clipped to the shorter side (:func:`otmlib.viz.crop_box`).
    """
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    top, left, s = crop_box(arr.shape[:2], int(size), (float(cy), float(cx)))
    return arr[top : top + s, left : left + s]


def zoom(arr: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer ``factor``: every pixel becomes a square block."""
    if factor < 1:
        raise ValueError(f"zoom factor must be a positive integer, got {factor}")
    return arr.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else arr


def to_png(arr: np.ndarray, factor: int = 1) -> bytes:
    """PNG bytes of an 8-bit image (grey or RGB), zoomed by ``factor``: an ``ipywidgets.Image`` value."""
    from PIL import Image

    if arr.dtype != np.uint8:
        raise ValueError(f"to_png expects uint8 pixels, got {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(zoom(arr, factor))).save(buf, format="PNG")
    return buf.getvalue()


def unique_path(directory: str | Path, stem: str, suffix: str = ".png") -> Path:
    """``directory/stem.png``, or ``stem_2.png``, ``stem_3.png``, ... : the first name not taken."""
    directory = Path(directory)
    path, n = directory / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}_{n}{suffix}"
    return path


class NoiseExplorer:
    """Candidates of a one-to-many ``model`` for one decoded JPEG, along paths in ``z`` space.

    Args:
        model: a one-to-many :class:`~otmlib.models.Generator` (``noise=True``), 1 channel.
        decoded: the decoded JPEG's luminance, (H, W) uint8.
        baseline: optional baseline G (``noise=False``); its output is computed once.
        ground_truth: optional original luminance (H, W) uint8, when it is known.
        qtable: optional 8x8 quantisation table of the JPEG, for the interval share (eq. 5).
        name: a short name of the image, used in saved file names.
        mode: the interpolation, see :func:`interpolate_noise`.
        tile: tile side for :func:`~otmlib.models.restore_tiled` (bounded memory on large images).
        cache_size: how many candidates to keep (moving a slider back is then instant).
        l2_parent: optional L2 baseline ``model`` was warm-started from (:func:`otmlib.zoo.load_l2_parent`):
            enables :meth:`set_alpha`, the fidelity <-> naturalness slider (ESRGAN's network interpolation).

    ``noise(seed)`` is exactly the ``z`` that :func:`otmlib.restore.restore_luma` draws for that
    seed, so ``candidate(s, s, t)`` equals ``restore_luma(model, decoded, [s])[0]``.
    """

    def __init__(
        self,
        model: Generator,
        decoded: np.ndarray,
        *,
        baseline: Generator | None = None,
        ground_truth: np.ndarray | None = None,
        qtable: np.ndarray | None = None,
        name: str = "image",
        mode: str = "variance",
        tile: int = 512,
        cache_size: int = 64,
        l2_parent: Generator | None = None,
    ) -> None:
        if not model.cfg.noise:
            raise ValueError("NoiseExplorer needs a one-to-many model (noise=True); got a baseline")
        if model.cfg.channels != 1:
            raise ValueError("NoiseExplorer works on luminance: pass a 1-channel model")
        if decoded.ndim != 2 or decoded.dtype != np.uint8:
            raise ValueError(f"decoded must be (H, W) uint8 luminance, got {decoded.shape} {decoded.dtype}")
        if ground_truth is not None and ground_truth.shape != decoded.shape:
            raise ValueError(f"ground truth {ground_truth.shape} and JPEG {decoded.shape} differ in shape")
        if mode not in INTERPOLATIONS:
            raise ValueError(f"mode must be one of {INTERPOLATIONS}, got {mode!r}")
        self.model = model.eval()  # both models are put in eval mode: BatchNorm uses its running statistics
        self._full_model = self.model
        self._l2_parent = l2_parent.eval() if l2_parent is not None else None
        self.alpha = 1.0
        self.strength = 1.0  # a model that reads the table is given qtable x strength (set_strength)
        if model.cfg.table_cond and qtable is None:
            raise ValueError("this model reads the JPEG's quantisation table: pass qtable= (the file's table)")
        self.decoded = decoded
        self.ground_truth = ground_truth
        self.qtable = qtable
        self.name = name
        self.mode = mode
        self.tile = tile
        self.cache_size = cache_size
        self.device = next(model.parameters()).device
        self._x = as_batch(decoded, device=self.device)
        self._noise: dict[int, Tensor] = {}
        self._candidates: OrderedDict[tuple[int, int, float, str], np.ndarray] = OrderedDict()
        self.baseline_output = restore_luma(baseline.eval(), decoded, tile=tile)[0] if baseline is not None else None
        self.current: np.ndarray | None = None  # the last candidate computed: what save_favourite writes
        self.current_params: tuple[int, int, float] | None = None

    def noise(self, seed: int) -> Tensor:
        """``z`` for ``seed`` (drawn once, then cached): ``model.sample_noise`` on the model's device."""
        seed = int(seed)
        if seed not in self._noise:
            self._noise[seed] = self.model.sample_noise(self._x, seed=seed)
        return self._noise[seed]

    def candidate(self, seed_a: int, seed_b: int | None = None, t: float = 0.0) -> np.ndarray:
        """``G(x', z_t)``, ``z_t`` the interpolation between the seeds' noise, as (H, W) uint8.

        ``seed_b=None`` means ``seed_a`` (just that seed's candidate). Becomes :attr:`current`.
        """
        seed_a = int(seed_a)
        seed_b = seed_a if seed_b is None else int(seed_b)
        t = float(t)
        key = (seed_a, seed_b, round(t, 6), self.mode, self.alpha, self.strength)
        out = self._candidates.get(key)
        if out is None:
            z = interpolate_noise(self.noise(seed_a), self.noise(seed_b), t, self.mode)
            table = (torch.as_tensor(np.asarray(self.qtable, dtype=np.float32) * self.strength, device=self.device)
                     if self.model.cfg.table_cond else None)
            y = restore_tiled(self.model, self._x, tile=self.tile, z=z, qtable=table)
            out = to_uint8_image(y[0, 0].float())
            self._candidates[key] = out
            while len(self._candidates) > self.cache_size:
                self._candidates.popitem(last=False)
        else:
            self._candidates.move_to_end(key)
        self.current, self.current_params = out, (seed_a, seed_b, t)
        return out

    def set_alpha(self, alpha: float) -> None:
        """Interpolate the model toward its L2 parent: 0 = the baseline's answer (for every z), 1 = the model.

        Candidates are then computed with the interpolated weights (``alpha`` joins the cache key).
        """
        from otmlib.models import interpolate_generators

        alpha = float(alpha)
        if alpha != 1.0 and self._l2_parent is None:
            raise ValueError("set_alpha needs the model's L2 parent: pass l2_parent= (otmlib.zoo.load_l2_parent)")
        if alpha != self.alpha:
            self.model = (self._full_model if alpha == 1.0
                          else interpolate_generators(self._l2_parent, self._full_model, alpha).eval())
            self.alpha = alpha

    @property
    def reads_table(self) -> bool:
        """Whether the model reads the quantisation table, so that :meth:`set_strength` means something."""
        return bool(self.model.cfg.table_cond)

    def set_strength(self, strength: float) -> None:
        """Give a model that reads the table (issue 19) the file's table times ``strength`` (1: the file's own;
        above 1 it restores as if more was lost). ``strength`` joins the cache key."""
        strength = float(strength)
        if not strength > 0:
            raise ValueError(f"strength must be positive, got {strength}")
        if strength != 1.0 and not self.reads_table:
            raise ValueError("set_strength needs a model that reads the quantisation table (table_cond)")
        self.strength = strength

    crop = staticmethod(crop)

    def panels(
        self,
        seed_a: int,
        seed_b: int | None = None,
        t: float = 0.0,
        cy: float = 0.5,
        cx: float = 0.5,
        size: int | None = None,
    ) -> dict[str, np.ndarray]:
        """What the comparison shows: ground truth (if known), JPEG, baseline (if given), candidate.

        Each is cropped to ``size`` around (cy, cx) (see :func:`crop`); ``size=None`` keeps the
        whole image. Keys: ``"ground truth"``, ``"JPEG"``, ``"baseline"``, ``"one-to-many"``.
        """
        full: dict[str, np.ndarray] = {}
        if self.ground_truth is not None:
            full["ground truth"] = self.ground_truth
        full["JPEG"] = self.decoded
        if self.baseline_output is not None:
            full["baseline"] = self.baseline_output
        full["one-to-many"] = self.candidate(seed_a, seed_b, t)
        if size is None:
            return full
        return {k: crop(v, cy, cx, size) for k, v in full.items()}

    def render(
        self,
        seed_a: int,
        seed_b: int | None = None,
        t: float = 0.0,
        cy: float = 0.5,
        cx: float = 0.5,
        size: int | None = None,
        factor: int = 2,
    ) -> dict[str, bytes]:
        """:meth:`panels` as PNG bytes, enlarged ``factor`` times: the values of image widgets."""
        return {k: to_png(v, factor) for k, v in self.panels(seed_a, seed_b, t, cy, cx, size).items()}

    def gallery(self, seeds: list[int]) -> dict[str, np.ndarray]:
        """Whole images: ground truth (if known), JPEG, baseline (if given), one candidate per seed."""
        out = {k: v for k, v in self.panels(seeds[0]).items() if k != "one-to-many"}
        for s in seeds:
            out[f"z seed {s}"] = self.candidate(s)
        return out

    def stats(self) -> dict[str, float]:
        """Measurements of :attr:`current`: PSNR / PSNR-B / texture ratio against the ground truth
        (when known) and the share of DCT coefficients inside the JPEG's intervals (with ``qtable``).
        """
        if self.current is None:
            raise RuntimeError("no candidate yet: call candidate() or panels() first")
        out: dict[str, float] = {}
        if self.ground_truth is not None:
            out["psnr"] = psnr(self.ground_truth, self.current)
            out["psnr_b"] = psnr_b(self.ground_truth, self.current)
            out["texture_ratio"] = texture_ratio(self.current, self.ground_truth)
        if self.qtable is not None:
            out["interval_share"] = interval_share(self.current, self.decoded, self.qtable)
        return out

    def describe(self) -> str:
        """One line about :attr:`current` for a status label: its z and its :meth:`stats`."""
        if self.current_params is None:
            return "no candidate yet"
        a, b, t = self.current_params
        if a == b or t in (0.0, 1.0):
            z = f"z = seed {b if t == 1.0 else a}"
        else:
            z = f"z between seeds {a} and {b}, t = {t:.2f} ({self.mode})"
        s = self.stats()
        parts = [z + (f", alpha {self.alpha:.2f}" if self.alpha != 1.0 else "")]
        if "psnr" in s:
            parts.append(f"PSNR {s['psnr']:.2f} dB, PSNR-B {s['psnr_b']:.2f} dB, texture {s['texture_ratio']:.2f}")
        if "interval_share" in s:
            parts.append(f"{100 * s['interval_share']:.1f}% of DCT coefficients inside the JPEG's intervals")
        return " | ".join(parts)

    def save_favourite(self, directory: str | Path) -> Path:
        """Write :attr:`current` as a PNG into ``directory``; returns the path. Never overwrites.

        The name says where the candidate came from (``favourite_<name>_seed<a>-<b>_t<t>.png``);
        if it is taken, ``_2``, ``_3``, ... are appended. The file is opened in exclusive mode, so
        even a file created between the check and the write is not overwritten.
        """
        if self.current is None or self.current_params is None:
            raise RuntimeError("no candidate yet: call candidate() or panels() before saving")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        a, b, t = self.current_params
        stem = f"favourite_{self.name}_seed{a}-{b}_t{t:.2f}"
        data = to_png(self.current)
        while True:
            path = unique_path(directory, stem)
            try:
                with open(path, "xb") as f:
                    f.write(data)
                return path
            except FileExistsError:  # taken since unique_path looked: try the next name
                continue
