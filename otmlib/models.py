"""The two networks (paper Sec. 3.2, Fig. 3; Sec. 3.3.2, Table 1) and large-image inference.

- :class:`Generator`: the proposal component ``G(x', z)``, with the shift-and-average
  up-sampling of Sec. 3.2.2 (:func:`shift_and_average`). ``noise=False`` is the paper's
  "baseline" (the same network without the ``z`` branch).
- :class:`TableFiLM`: beyond the paper (issue 19), G reading the JPEG's quantisation table, so one
  model serves every quality (:func:`add_table_conditioning` adds it to a trained G).
- :class:`Discriminator`: ``D`` of Table 1, returning logits (the losses use the logits form).
- :func:`restore_tiled`: bounded-memory inference on a large image in blended, JPEG-aligned tiles.
- :func:`count_flops_per_pixel`: G's multiply-accumulates per pixel, for the speed benchmark.

Both networks take pixels in [0, 255] (float, N x C x H x W, C = 1 grey or 3 colour) and
normalise inside with :func:`normalise`, so callers never see the internal scale.
Numbers the paper's text lost are marked **(reconstructed)** as in ``docs/SPEC.md``.
"""

from __future__ import annotations

import math
import warnings
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PIXEL_MEAN",
    "PIXEL_SCALE",
    "normalise",
    "GeneratorConfig",
    "PreActResidualUnit",
    "shift_and_average",
    "fold_shift_and_average",
    "grow_aggregation",
    "widen_units",
    "add_noise_branch",
    "add_table_conditioning",
    "TableFiLM",
    "interpolate_generators",
    "Generator",
    "Discriminator",
    "restore_tiled",
    "count_flops_per_pixel",
]

JPEG_BLOCK = 8
_BASELINE_Z = "this Generator is the baseline (noise=False): it has no z branch, do not pass z"
PIXEL_MEAN = 127.5
PIXEL_SCALE = 127.5  # [0, 255] -> [-1, 1], the DCGAN convention D was designed for


def normalise(x: Tensor) -> Tensor:
    """Map pixels in [0, 255] to [-1, 1]: ``(x - 127.5) / 127.5`` (used by both G and D)."""
    return (x - PIXEL_MEAN) / PIXEL_SCALE


def _check_images(x: Tensor, channels: int, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{what} expects (N, {channels}, H, W) images in [0, 255], got shape {tuple(x.shape)}"
        )


def _he_uniform_(w: Tensor, fan_in: int, gain: float = math.sqrt(2.0)) -> None:
    # He et al. 2015 uniform: var = gain^2 / fan_in, with the fan each output really sees
    bound = gain * math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        w.uniform_(-bound, bound)


# --------------------------------------------------------------------------------------------
# Proposal component G (Sec. 3.2)
# --------------------------------------------------------------------------------------------


@dataclass
class GeneratorConfig:
    """Hyper-parameters of G (Sec. 3.2.1, Fig. 3). Defaults are SPEC's values."""

    channels: int = 1  # image channels: 1 grey (Y of YCbCr), 3 colour; z has as many
    width: int = 64  # filters of every layer but the last (reconstructed)
    branch_units: int = 3  # residual units in each branch (reconstructed)
    agg_units: int = 6  # residual units in the aggregation sub-network (reconstructed)
    kernel: int = 4  # filter size of the stride-s conv and deconv (reconstructed; Sec. 3.2.2 uses 4 in 1-D)
    stride: int = 2  # down/up-sampling factor (Sec. 3.2.1)
    shift_and_average: bool = True  # Sec. 3.2.2; False reproduces Fig. 8(a)
    deconv_kernel: int | None = None  # the deconv's filter size when not ``kernel`` (see fold_shift_and_average)
    noise: bool = True  # the z branch; False = the paper's "baseline" (Table 2)
    noise_sigma: float = 1.0  # std of z ~ N(0, sigma^2) (reconstructed)
    residual: bool = True  # predict x' + correction (ours: the paper is silent; trains much faster)
    out_init_gain: float = 0.1  # scales the last layer's He init so G starts near x' (ours)
    inner_width: int | None = None  # filters of each residual unit's first conv when not ``width`` (see widen_units)
    table_cond: bool = False  # read the JPEG's luminance quantisation table (issue 19, see TableFiLM; ours)

    def describe(self) -> str:
        """One line: G's size and how it upsamples (Sec. 3.2), as ``otm models`` prints it."""
        kd = self.deconv_kernel or self.kernel
        up = f"{kd}x{kd} stride-{self.stride} deconvolution" + (
            " + shift-and-average" if self.shift_and_average else " (no shift-and-average)")
        z = ", z branch" if self.noise else ""
        inner = f" (inner width {self.inner_width})" if self.inner_width not in (None, self.width) else ""
        table = ", conditioned on the file's quantisation table" if self.table_cond else ""
        return f"{self.branch_units + self.agg_units} residual units of width {self.width}{inner}{z}{table}, {up}"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {self.channels}")
        if self.stride < 1 or self.kernel < self.stride or (self.kernel - self.stride) % 2:
            # padding (k - s) / 2 must be an integer for the conv/deconv to map H <-> H / s exactly
            raise ValueError(
                f"need kernel >= stride >= 1 and kernel - stride even, got kernel={self.kernel}, "
                f"stride={self.stride}"
            )
        if self.deconv_kernel is not None and self.deconv_kernel < self.stride:
            raise ValueError(f"need deconv_kernel >= stride, got {self.deconv_kernel}")
        if self.inner_width is not None and self.inner_width < 1:
            raise ValueError(f"need inner_width >= 1, got {self.inner_width}")
        if self.width < 1 or self.branch_units < 0 or self.agg_units < 0 or self.noise_sigma <= 0:
            raise ValueError(f"invalid GeneratorConfig: {self}")


class PreActResidualUnit(nn.Module):
    """Pre-activation residual unit (He et al. 2016, "Identity mappings"; paper Sec. 3.2.1).

    ``x + conv(relu(bn(conv(relu(bn(x))))))`` with 3x3 convolutions and ``width`` filters; the
    first convolution has ``inner`` filters when given (a wider unit, Zagoruyko & Komodakis 2016).
    """

    def __init__(self, width: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or width
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, inner, 3, padding=1, bias=False),  # biases before a BN are redundant
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, width, 3, padding=1, bias=False),  # G's stream always ends in a BN
        )

    def forward(self, x: Tensor, film: Tensor | None = None) -> Tensor:
        """``film`` (N, 2, width): scale and shift of the unit's residual, ``x + (1 + g) body(x) + b``."""
        if film is None:
            return x + self.body(x)
        g, b = film[:, 0, :, None, None], film[:, 1, :, None, None]
        return x + self.body(x) * (1 + g.to(x.dtype)) + b.to(x.dtype)


def table_features(qtable: Tensor) -> Tensor:
    """A quantisation table (N, 8, 8), (N, 1, 8, 8) or (N, 64) of steps 1..255 -> (N, 64) features in [-1, 1]:
    ``log(q) / log(16) - 1`` (a step of 16 maps to 0; halving a step moves every feature by the same amount)."""
    q = qtable.reshape(qtable.shape[0], -1).float()
    if q.shape[1] != 64:
        raise ValueError(f"a quantisation table has 64 steps, got shape {tuple(qtable.shape)}")
    return torch.log(q.clamp_min(1.0)) / math.log(16.0) - 1.0


class TableFiLM(nn.Module):
    """Feature-wise modulation of G's residual units by the file's luminance quantisation table (issue 19, ours).

    The 64 steps (:func:`table_features`) go through a small MLP (64 -> 128 -> 128 -> 2 x width per unit) that
    gives every residual unit of the image branch and the aggregation a per-channel scale and shift of its
    residual (FiLM, Perez et al. 2018; QGAC conditions on the table likewise). The last layer starts at zero,
    so a G that gains the module computes exactly what it did (:func:`add_table_conditioning`). Why not the
    table as extra input planes: the table is one constant per image, so planes only shift the first layer's
    features; a scale per unit can turn the whole correction down where the file lost little.
    """

    def __init__(self, units: int, width: int, hidden: int = 128) -> None:
        super().__init__()
        self.units, self.width = units, width
        self.mlp = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, 2 * units * width))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, qtable: Tensor) -> Tensor:
        """(N, units, 2, width): each unit's (scale - 1, shift)."""
        return self.mlp(table_features(qtable)).float().view(-1, self.units, 2, self.width)


def replicate_pad(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """``F.pad(x, pad, mode="replicate")`` (left, right, top, bottom); under torch.compile, as two index selections.

    The same numbers forward and backward. torch.compile's CPU backend mis-strides the backward of
    ``replication_pad2d`` on channels-last tensors (torch 2.14: an assertion at run time), hence the index
    selections there; eagerly they are 10x slower than the pad (a 512x512 tile: 20 ms), hence F.pad.
    """
    if not torch.compiler.is_compiling():
        return F.pad(x, pad, mode="replicate")
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    rows = torch.arange(-top, h + bottom, device=x.device).clamp_(0, h - 1)
    cols = torch.arange(-left, w + right, device=x.device).clamp_(0, w - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def shift_and_average(x: Tensor, stride: int) -> Tensor:
    r"""Shift-and-average (paper Sec. 3.2.2, Fig. 4) of a stride-``s`` deconvolution output.

    The output is the mean of ``x`` and its ``s^2 - 1`` copies shifted right/down by
    ``(dy, dx)`` in :math:`\{0..s-1\}^2 \setminus \{(0,0)\}` pixels:

    .. math:: y_{i,j} = \frac{1}{s^2} \sum_{d_y=0}^{s-1} \sum_{d_x=0}^{s-1} x_{i-d_y,\, j-d_x}

    A stride-``s`` deconvolution of a constant input is periodic with period ``s`` in each axis,
    and every window above holds exactly one sample of each of the ``s^2`` phases, so the
    output is constant for *any* filter weights.

    Border: the output keeps the input's size; the ``s - 1`` rows (columns) shifted in at the
    top (left) are replicas of the first row (column), i.e. ``x`` is clamped:
    ``x_{i,j} := x_{max(i,0), max(j,0)}``. Replicating adds no dark/bright frame (zero padding
    would) and leaves a constant image constant. :class:`Generator` pads its features before the
    deconvolution and crops afterwards, so that none of these border rows reach its output.

    The mean of right/down shifts translates the output by ``(s - 1) / 2`` pixels (as in the
    paper's Fig. 4); the learned deconvolution filter absorbs that offset.
    """
    if stride <= 1:
        return x
    padded = replicate_pad(x, (stride - 1, 0, stride - 1, 0))
    # an s x s box mean at stride 1 is exactly the average of the s^2 shifted copies
    return F.avg_pool2d(padded, kernel_size=stride, stride=1)


def _branch(in_ch: int, cfg: GeneratorConfig) -> nn.Sequential:
    pad = (cfg.kernel - cfg.stride) // 2
    layers: list[nn.Module] = [nn.Conv2d(in_ch, cfg.width, cfg.kernel, cfg.stride, pad, bias=False)]
    layers += [PreActResidualUnit(cfg.width, cfg.inner_width) for _ in range(cfg.branch_units)]
    return nn.Sequential(*layers)


class Generator(nn.Module):
    r"""The proposal component ``y = G(x', z)`` (paper Sec. 3.2, Fig. 3).

    Image branch: stride-``s`` conv (``channels -> width``) and ``branch_units`` residual units
    at 1/s resolution; the noise branch is the same on ``z``. Their outputs are concatenated and
    mixed by a 1x1 conv back to ``width`` (reconstructed: mixing only, the residual units that
    follow supply the spatial context, at a quarter of a 3x3 conv's cost). Then ``agg_units``
    residual units, BN + ReLU (a pre-activation stack ends with one), a stride-``s``
    deconvolution (``width -> channels``) and :func:`shift_and_average`.

    Pixels in and out are in [0, 255]; inside, :func:`normalise` maps them to [-1, 1] and the
    last layer's output ``r`` is read as ``x' + 127.5 r`` (``residual=True``, ours) or
    ``127.5 + 127.5 r``. The output is not clamped (the losses need its gradient): clamp it to
    [0, 255] for display and metrics.

    Any input size: the input (and ``z``) is reflect-padded at the bottom/right only, up to a
    multiple of the stride, and the output cropped back. Padding only there keeps the
    stride grid aligned with the JPEG 8x8 grid at the top-left.

    Initialisation: He uniform (SPEC) with the true fan-in of each layer; the deconvolution's
    weights are further scaled by ``out_init_gain`` (ours) so an untrained residual G starts
    close to ``x'`` instead of adding noise of ~100 grey levels.
    """

    def __init__(self, cfg: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else GeneratorConfig()
        w, s, k = cfg.width, cfg.stride, cfg.kernel
        self.image_branch = _branch(cfg.channels, cfg)
        if cfg.noise:
            self.noise_branch = _branch(cfg.channels, cfg)
            self.fuse = nn.Conv2d(2 * w, w, 1, bias=False)
        agg: list[nn.Module] = [PreActResidualUnit(w, cfg.inner_width) for _ in range(cfg.agg_units)]
        agg += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        self.aggregate = nn.Sequential(*agg)
        if cfg.table_cond:
            self.table_film = TableFiLM(cfg.branch_units + cfg.agg_units, w)
        kd = cfg.deconv_kernel or k
        self.deconv = nn.ConvTranspose2d(w, cfg.channels, kd, s, padding=(k - s) // 2)
        # low-res feature pixels replicated on each side before the deconv, so that every kept
        # output pixel gets all its filter taps and its shifted copies (see _upsample)
        self._up_margin = math.ceil((kd - 1 - (k - s) // 2) / s)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _he_uniform_(m.weight, m.in_channels * m.kernel_size[0] * m.kernel_size[1])
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        k, s = self.cfg.deconv_kernel or self.cfg.kernel, self.cfg.stride
        # each deconv output pixel sees (k/s)^2 taps per input channel, not k^2
        _he_uniform_(self.deconv.weight, max(1, round(self.cfg.width * k * k / (s * s))))
        with torch.no_grad():
            self.deconv.weight.mul_(self.cfg.out_init_gain)
        nn.init.zeros_(self.deconv.bias)

    def sample_noise(
        self, shape_like: Tensor, seed: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``z ~ N(0, sigma^2)`` of shape (N, channels, H, W) like ``shape_like`` (Sec. 3.2).

        Reproducible from ``seed`` (a fresh ``torch.Generator`` on ``shape_like``'s device;
        CPU and CUDA streams differ) or from ``generator``; the global RNG when neither is given.
        """
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if seed is not None:
            generator = torch.Generator(device=shape_like.device).manual_seed(seed)
        n, _, h, w = shape_like.shape
        dtype = shape_like.dtype if shape_like.is_floating_point() else torch.float32
        z = torch.randn(
            (n, self.cfg.channels, h, w), generator=generator, device=shape_like.device, dtype=dtype
        )
        return z * self.cfg.noise_sigma

    def _upsample(self, f: Tensor) -> Tensor:
        """Deconvolution + shift-and-average of features ``f`` (N, width, h, w) -> (N, C, s h, s w).

        The features are replicate-padded by a few low-res pixels and the extra output cropped,
        so the deconvolution's incomplete border taps and the shifted-in border rows of
        :func:`shift_and_average` fall outside the image: constant features give an exactly
        constant output up to the image border, with no frame.
        """
        s, m = self.cfg.stride, self._up_margin
        h, w = f.shape[-2:]
        y = self.deconv(replicate_pad(f, (m, m, m, m)))
        if self.cfg.shift_and_average:
            y = shift_and_average(y, s)
        return y[..., s * m : s * (m + h), s * m : s * (m + w)]

    def forward(
        self,
        x: Tensor,
        z: Tensor | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        qtable: Tensor | None = None,
    ) -> Tensor:
        """Candidate ``y = G(x', z)`` in [0, 255] (unclamped), same shape as ``x`` (N, C, H, W).

        With the noise branch, ``z`` (N or 1, C, H, W) is drawn by :meth:`sample_noise` from
        ``seed`` / ``generator`` when not given. The baseline (``noise=False``) rejects ``z`` and
        ignores ``seed`` / ``generator`` (there is nothing to draw), so callers can treat both alike.
        ``qtable``: the luminance quantisation table of ``x``'s JPEG, (N or 1, 8, 8) steps, natural order;
        required by a G with ``table_cond`` (:class:`TableFiLM`), ignored by one without.
        """
        cfg = self.cfg
        _check_images(x, cfg.channels, "Generator")
        film = None
        if cfg.table_cond:
            if qtable is None:
                raise ValueError("this model reads the JPEG's quantisation table: pass qtable (the file's "
                                 "luminance table, 8x8 steps; otm restore reads it from the file)")
            qtable = torch.as_tensor(qtable, device=x.device)
            if qtable.ndim == 2:
                qtable = qtable[None]
            if qtable.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"qtable: {qtable.shape[0]} tables for {x.shape[0]} images")
            film = self.table_film(qtable).expand(x.shape[0], -1, -1, -1)
        if not cfg.noise and z is not None:
            raise ValueError(_BASELINE_Z)
        n, _, h, w = x.shape
        if cfg.noise:
            if z is None:
                z = self.sample_noise(x, seed=seed, generator=generator)
            elif z.ndim != 4 or z.shape[1:] != x.shape[1:] or z.shape[0] not in (1, n):
                raise ValueError(
                    f"z must have shape (N or 1, {cfg.channels}, {h}, {w}), got {tuple(z.shape)}"
                )
            elif z.shape[0] != n:
                z = z.expand(n, -1, -1, -1)
        s = cfg.stride
        pad = (0, -w % s, 0, -h % s)
        xn = normalise(x)
        f = _run_units(self.image_branch, _pad_bottom_right(xn, pad), film, 0)
        if cfg.noise:
            g = self.noise_branch(_pad_bottom_right(z.to(xn.dtype), pad))
            f = self.fuse(torch.cat([f, g], dim=1))
        r = self._upsample(_run_units(self.aggregate, f, film, cfg.branch_units))[..., :h, :w]
        return x + PIXEL_SCALE * r if cfg.residual else PIXEL_MEAN + PIXEL_SCALE * r


def fold_shift_and_average(G: Generator) -> Generator:
    r"""The same function as ``G`` without a shift-and-average step: the box mean folded into the deconv.

    Shift-and-average is a fixed linear filter after a linear layer, so the two compose into one
    stride-``s`` deconvolution with an ``(k + s - 1)``-tap filter,
    :math:`w'_{t} = \frac{1}{s^2} \sum_{d_y, d_x < s} w_{t_y - d_y,\, t_x - d_x}` (zero outside ``w``).
    The returned G computes the same output (to float rounding) but, trained further, its deconvolution
    is free to leave the constant-input constraint (paper Sec. 3.2.2), which the paper says a
    per-pixel loss learns by itself, and to make the 1-pixel steps a residual needs at 8x8 block
    edges, which an ``s x s`` box mean can only approximate.
    """
    cfg = G.cfg
    if not cfg.shift_and_average:
        raise ValueError("this generator has no shift-and-average step to fold")
    s, k = cfg.stride, cfg.deconv_kernel or cfg.kernel
    new = Generator(dataclasses.replace(cfg, shift_and_average=False, deconv_kernel=k + s - 1))
    state = {n: t for n, t in G.state_dict().items() if not n.startswith("deconv.")}
    w = G.deconv.weight.detach()
    folded = torch.zeros(*w.shape[:2], k + s - 1, k + s - 1, dtype=w.dtype, device=w.device)
    for dy in range(s):
        for dx in range(s):
            folded[..., dy : dy + k, dx : dx + k] += w / (s * s)
    state["deconv.weight"], state["deconv.bias"] = folded, G.deconv.bias.detach().clone()
    new.load_state_dict(state)
    return new.to(w.device)


def grow_aggregation(G: Generator, agg_units: int) -> Generator:
    """The same function as ``G`` with ``agg_units`` residual units in the aggregation sub-network.

    The added units go after ``G``'s own (before the final BN + ReLU) and start as identities: the
    last convolution of each is zero, so ``x + body(x) = x`` (as in "zero-init residual" training,
    Goyal et al. 2017). Trained further, they add capacity without first undoing what ``G`` learned.
    """
    cfg = G.cfg
    if agg_units <= cfg.agg_units:
        raise ValueError(f"grow_aggregation adds units: {agg_units} <= the {cfg.agg_units} G has")
    new = Generator(dataclasses.replace(cfg, agg_units=agg_units)).to(G.deconv.weight.device)
    old, state = G.state_dict(), new.state_dict()
    tail = cfg.agg_units  # index of the final BN in G.aggregate; it moves to agg_units in the new G
    for name, t in old.items():
        if name.startswith(f"aggregate.{tail}."):
            name = f"aggregate.{agg_units}." + name.split(".", 2)[2]
        state[name] = t.clone()
    for i in range(cfg.agg_units, agg_units):
        state[f"aggregate.{i}.body.5.weight"].zero_()
    new.load_state_dict(state)
    return new


def widen_units(G: Generator, inner_width: int) -> Generator:
    """The same function as ``G`` with ``inner_width`` filters in every residual unit's first conv.

    Each unit's first convolution keeps its filters and gets ``inner_width - w`` new ones (He uniform,
    as at initialisation), with a fresh BN (weight 1, bias 0, running mean 0, variance 1); the second
    convolution reads the new channels through zero weights, so every unit, and G, computes what it
    did, in training and in eval mode. Trained further, the new filters add capacity (and 2x the
    units' multiply-adds at double width) without first undoing what ``G`` learned.
    """
    cfg = G.cfg
    old_inner = cfg.inner_width or cfg.width
    if inner_width <= old_inner:
        raise ValueError(f"widen_units adds filters: {inner_width} <= the {old_inner} G's units have")
    device = G.deconv.weight.device
    new = Generator(dataclasses.replace(cfg, inner_width=inner_width)).to(device)
    state = new.state_dict()  # fresh: He-uniform new filters, BN (1, 0), running stats (0, 1)
    for name, t in G.state_dict().items():
        target = state[name]
        if target.shape == t.shape:
            state[name] = t.clone()
        elif name.endswith("body.5.weight"):  # second conv: (width, inner, 3, 3); new inputs read as 0
            target.zero_()
            target[:, :old_inner] = t
        else:  # first conv's filters (inner, width, 3, 3), the BN after it (inner,): old ones first
            target[:old_inner] = t
    new.load_state_dict(state)
    return new


def _run_units(seq: nn.Sequential, x: Tensor, film: Tensor | None, first: int) -> Tensor:
    """``seq(x)``, with residual unit ``i`` of it modulated by ``film[:, first + i]`` when given."""
    if film is None:
        return seq(x)
    i = first
    for m in seq:
        if isinstance(m, PreActResidualUnit):
            x, i = m(x, film[:, i]), i + 1
        else:
            x = m(x)
    return x


def add_table_conditioning(G: Generator) -> Generator:
    """The same function as ``G`` that also reads the file's quantisation table (:class:`TableFiLM`).

    Every tensor of ``G`` is copied; the new module's last layer is zero, so for every table the result
    computes exactly ``G``'s output until training moves it (issue 19: warm-start the any-quality model
    from a per-quality baseline).
    """
    if G.cfg.table_cond:
        raise ValueError("this generator already reads the quantisation table")
    new = Generator(dataclasses.replace(G.cfg, table_cond=True)).to(G.deconv.weight.device)
    state = new.state_dict()
    state.update({k: v.clone() for k, v in G.state_dict().items()})
    new.load_state_dict(state)
    return new


def _pad_bottom_right(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    if not any(pad):
        return x
    # reflect needs more rows than it pads; a 1-pixel-high input falls back to replicate
    mode = "reflect" if pad[1] < x.shape[-1] and pad[3] < x.shape[-2] else "replicate"
    return F.pad(x, pad, mode=mode)


# --------------------------------------------------------------------------------------------
# Measurement component D (Sec. 3.3.2, Table 1)
# --------------------------------------------------------------------------------------------


class Discriminator(nn.Module):
    """The naturalness network ``D`` of Table 1 (paper Sec. 3.3.2): DCGAN with depth doubled.

    Four conv units with 64, 128, 256, 512 filters, each a stride-1 3x3 conv then a stride-2
    4x4 conv (filter sizes reconstructed: our copy lost them; 4x4 keeps stride-2 maps exactly
    halved, as in DCGAN). Every conv but the network's last is followed by BatchNorm and
    LeakyReLU(``slope``). "Logistic regression on the last feature maps" is a global average
    pool and ``Linear(512, 1)``: linear in the features like the paper's classifier, but with
    spatially shared weights, so any patch of at least 16x16 pixels works. Returns raw logits
    (N,), ``D(y) = sigmoid(logit)``; input pixels in [0, 255], normalised as in G.
    """

    def __init__(self, channels: int = 1, width: int = 64, slope: float = 0.2) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {channels}")
        self.channels = channels
        self.slope = slope
        layers: list[nn.Module] = []
        c_in = channels
        widths = [width * 2**i for i in range(4)]
        for i, c in enumerate(widths):
            last = i == len(widths) - 1
            layers += [nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU(slope, True)]
            layers += [nn.Conv2d(c, c, 4, 2, 1, bias=False)]  # a bias here is the classifier's
            if not last:
                layers += [nn.BatchNorm2d(c), nn.LeakyReLU(slope, inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                _he_uniform_(m.weight, fan, gain=math.sqrt(2.0 / (1.0 + slope**2)))

    def forward(self, x: Tensor) -> Tensor:
        _check_images(x, self.channels, "Discriminator")
        f = self.features(normalise(x))
        return self.classifier(f.mean(dim=(2, 3))).squeeze(1)


# --------------------------------------------------------------------------------------------
# Inference on large images, and cost
# --------------------------------------------------------------------------------------------


def _tile_spans(n: int, tile: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """Spans [a, b) covering [0, n): origins multiples of ``align``, neighbours overlapping >= ``overlap``."""
    if n <= tile + align:
        return [(0, n)]
    step = max(align, (tile - overlap) // align * align)
    k = math.ceil((n - tile) / step) + 1
    spacing = (n - tile) / (k - 1)  # <= step, so the aligned origins are never more than step apart
    starts = sorted({int(i * spacing) // align * align for i in range(k)})
    return [(a, a + tile) for a in starts[:-1]] + [(starts[-1], n)]


def _tile_windows(spans: list[tuple[int, int]], n: int) -> list[Tensor]:
    """1-D blending weights per span, summing to 1 at every position.

    In an overlap of ``o`` pixels the weight ramps linearly across its middle half; its outer
    quarters get weight 0 from the tile whose edge they touch, where zero padding distorts most.
    """
    windows = []
    for i, (a, b) in enumerate(spans):
        pos = torch.arange(a, b, dtype=torch.float64) + 0.5
        wgt = torch.ones(b - a, dtype=torch.float64)
        if i > 0:
            o = spans[i - 1][1] - a
            m = o // 4
            wgt *= ((pos - a - m) / max(o - 2 * m, 1)).clamp(0, 1)
        if i < len(spans) - 1:
            o = b - spans[i + 1][0]
            m = o // 4
            wgt *= ((b - m - pos) / max(o - 2 * m, 1)).clamp(0, 1)
        windows.append(wgt)
    total = torch.zeros(n, dtype=torch.float64)
    for (a, b), wgt in zip(spans, windows):
        total[a:b] += wgt
    if bool((total <= 0).any()):  # only for pathological tile/overlap choices: fall back to a floor
        windows = [wgt.clamp_min(1e-3) for wgt in windows]
        total.zero_()
        for (a, b), wgt in zip(spans, windows):
            total[a:b] += wgt
    return [(wgt / total[a:b]).float() for (a, b), wgt in zip(spans, windows)]


def restore_tiled(
    model: Generator,
    x: Tensor,
    tile: int = 512,
    overlap: int = 32,
    *,
    z: Tensor | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    qtable: Tensor | None = None,
) -> Tensor:
    """``model(x)`` on a large image, one ``tile`` x ``tile`` tile at a time, under ``no_grad``.

    Neighbouring tiles overlap by at least ``overlap`` pixels and are blended with separable
    linear ramps (:func:`_tile_windows`), so no seam shows; tile origins are multiples of 8 and
    of the stride, so every tile sees the JPEG grid and G's stride grid as the whole image does.
    Memory: the input, one output-sized accumulator and one tile's activations. ``z`` is
    drawn once for the whole image (from ``seed`` / ``generator``) and sliced per tile, so a
    tiled result matches ``model(x, seed=...)``. Call ``model.eval()`` first: in training mode
    BatchNorm uses each tile's own statistics. Runs on the model's device, returns on ``x``'s.
    ``qtable``: the JPEG's luminance table, for a model that reads it (see :meth:`Generator.forward`).
    """
    cfg = model.cfg
    _check_images(x, cfg.channels, "restore_tiled")
    if not 0 <= overlap <= tile // 2:
        raise ValueError(f"need 0 <= overlap <= tile / 2, got tile={tile}, overlap={overlap}")
    if model.training:
        warnings.warn("restore_tiled on a model in training mode: BatchNorm will use per-tile statistics")
    # colour: 16, the chroma block of a 4:2:0 file (8 chroma pixels at half resolution)
    align = math.lcm(JPEG_BLOCK * (2 if cfg.channels == 3 else 1), cfg.stride)
    if tile < 2 * align:
        raise ValueError(f"tile must be at least {2 * align} pixels, got {tile}")
    if cfg.noise and z is None:
        z = model.sample_noise(x, seed=seed, generator=generator)
    elif not cfg.noise and z is not None:
        raise ValueError(_BASELINE_Z)
    device = next(model.parameters()).device
    n, _, h, w = x.shape
    rows, cols = _tile_spans(h, tile, overlap, align), _tile_spans(w, tile, overlap, align)
    wy, wx = _tile_windows(rows, h), _tile_windows(cols, w)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    with torch.no_grad():
        for (y0, y1), win_y in zip(rows, wy):
            for (x0, x1), win_x in zip(cols, wx):
                xt = x[..., y0:y1, x0:x1].to(device)
                zt = None if z is None else z[..., y0:y1, x0:x1].to(device)
                yt = model(xt, zt, qtable=qtable) if cfg.noise else model(xt, qtable=qtable)
                weight = (win_y[:, None] * win_x[None, :]).to(x.device)
                out[..., y0:y1, x0:x1] += yt.float().to(x.device) * weight
    return out


def count_flops_per_pixel(cfg: GeneratorConfig) -> float:
    """Analytic multiply-accumulates (MACs; 1 MAC = 2 FLOPs) of G per input pixel.

    Convolutions only (BN, ReLU, shift-and-average and padding are O(width) per pixel, under 1%).
    Everything but the deconvolution runs at 1/s^2 of the pixels.
    """
    w, c, k, s = cfg.width, cfg.channels, cfg.kernel, cfg.stride
    unit = 2 * w * (cfg.inner_width or w) * 9  # two 3x3 convs: width -> inner -> width
    branches = 2 if cfg.noise else 1
    per_low_res = branches * (c * w * k * k + cfg.branch_units * unit)
    per_low_res += (2 * w * w if cfg.noise else 0) + cfg.agg_units * unit
    kd = cfg.deconv_kernel or k
    per_low_res += w * c * kd * kd  # deconv: each low-res pixel scatters kd^2 taps per output channel
    return per_low_res / (s * s)


def add_noise_branch(G: Generator, z_init_gain: float = 0.1, seed: int = 0, noise_sigma: float = 1.0) -> Generator:
    """A one-to-many G that starts as the baseline ``G`` plus a new ``z`` branch (ESRGAN-style warm start).

    Every tensor of ``G`` is copied; the new noise branch gets a fresh He initialisation (from ``seed``)
    and the 1x1 fusion reads the image features through the identity and the noise features through
    He-uniform weights scaled by ``z_init_gain``. With ``z_init_gain = 0`` the result computes exactly
    ``G``'s function for every ``z``; a small gain lets ``z`` move the output from the first step, so
    gradients reach the new branch (a zero fusion would leave the branch with no gradient at all).
    ``noise_sigma`` is the std of the new model's z (:meth:`Generator.sample_noise`).
    """
    cfg = G.cfg
    if cfg.noise:
        raise ValueError("add_noise_branch needs a baseline G (noise=False); this one already has a z branch")
    if z_init_gain < 0:
        raise ValueError(f"z_init_gain must be >= 0, got {z_init_gain}")
    device = G.deconv.weight.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = Generator(dataclasses.replace(cfg, noise=True, noise_sigma=noise_sigma)).to(device)
    state = new.state_dict()
    for name, t in G.state_dict().items():
        state[name] = t.clone()
    w = cfg.width
    fuse = state["fuse.weight"]  # (w, 2w, 1, 1): image features first, then noise features
    with torch.no_grad():
        fuse[:, w:] *= z_init_gain
        fuse[:, :w] = torch.eye(w, dtype=fuse.dtype, device=fuse.device)[:, :, None, None]
    new.load_state_dict(state)
    return new


def interpolate_generators(G_l2: Generator, G_gan: Generator, alpha: float) -> Generator:
    r"""ESRGAN's network interpolation: :math:`\theta(\alpha) = (1 - \alpha)\,\theta_{L2} + \alpha\,\theta_{GAN}`.

    ``G_l2`` is the L2 baseline ``G_gan`` was warm-started from (:func:`add_noise_branch`). It is lifted
    to ``G_gan``'s network first: the same tensors, the fusion reading the image features through the
    identity and the noise features through zeros, and ``G_gan``'s own noise branch (so only the fusion's
    noise weights scale with alpha, and the branch's features are the trained ones). Every tensor (weights,
    biases, BN statistics) is then interpolated. ``alpha = 0`` gives the baseline's function for every z,
    ``alpha = 1`` the one-to-many G; in between, less or more of the detail the GAN adds (a fidelity <->
    naturalness slider). Values outside [0, 1] are refused.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = the L2 baseline, 1 = the one-to-many G), got {alpha}")
    if not G_l2.cfg.noise:
        lifted = add_noise_branch(G_l2, 0.0)
        state = lifted.state_dict()
        for name, t in G_gan.state_dict().items():
            if name.startswith("noise_branch."):
                state[name] = t.clone()
        lifted.load_state_dict(state)
        G_l2 = lifted
    if G_l2.cfg != G_gan.cfg:
        raise ValueError("interpolate_generators needs the one-to-many G's own baseline (the same network)")
    new = Generator(G_gan.cfg).to(G_gan.deconv.weight.device)
    a, b = G_l2.state_dict(), G_gan.state_dict()
    state = {}
    for name, t in b.items():
        if t.is_floating_point():
            state[name] = torch.lerp(a[name].to(t.dtype), t, alpha)
        else:  # BN's num_batches_tracked
            state[name] = t.clone()
    new.load_state_dict(state)
    return new.train(G_gan.training)
