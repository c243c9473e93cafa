"""One optimiser step of each training mode, called by :class:`otmlib.train.Trainer`'s loop.

- :func:`l2_step`: the per-pixel L2 baseline of Table 2.
- :func:`chroma_step`: the colour baseline's Cb/Cr restoration (issue 18).
- :class:`GanStep`: the one-to-many step of Sec. 3.4 (1. fix G, update D with eq. 3; 2. fix D, update G
  with eq. 7), with the switches of :class:`GanConfig` that make ``z`` matter and balance D, and the
  diagnostics that tell a healthy GAN from a collapsed one (logged every ``log_every`` steps).

The paper's recipe is ``GanConfig()`` (one candidate per JPEG, every term on it, D trained as G).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from otmlib import jpeg
from otmlib.losses import discriminator_fake_term, discriminator_real_term, naturalness_loss
from otmlib.models import PIXEL_SCALE

if TYPE_CHECKING:  # pragma: no cover
    from otmlib.train import Trainer

PERCEPTUAL_ON = ("each", "mean", "one")


@dataclass
class GanConfig:
    """How the one-to-many step departs from the paper's recipe (defaults: the paper's, Sec. 3.4).

    ``z`` does nothing when every candidate is pulled to the one ground truth (MR-GAN, Lee et al. 2019).
    The *moments* remedy draws ``candidates`` samples per JPEG, puts the reconstruction terms on their
    mean (which should be the per-pixel optimum, the L2 baseline's answer) and asks their spread to be
    the spread of plausible originals: in each ``spread_window`` block, the candidates' variance should
    equal the squared error the frozen L2 parent makes there (an L2 network returns the posterior mean,
    so its error is a sample of how far originals lie from that mean). Matching the two in log space
    weighs a flat sky (small error: little spread) as much as fur (large error: much spread).
    """

    candidates: int = 1  # K candidates of each JPEG per step (paper: 1)
    perceptual_on: str = "each"  # L_p on "each" candidate (paper), the "mean" of the K (MR-GAN) or "one" of them
    mean_mse: float = 0.0  # weight of the per-pixel MSE of the candidates' mean, in grey levels^2
    spread: float = 0.0  # weight of the log-variance matching term (0: off; needs candidates >= 2 and init)
    spread_window: int = 8  # block size of the local variance (8: the JPEG block)
    spread_floor: float = 1.0  # grey levels^2 added to both variances before the log (flat blocks)
    mode_seeking: float = 0.0  # weight of MSGAN's term on perceptual features (Mao et al. 2019; needs K >= 2)
    real_label: float = 1.0  # D's target for natural images; 0.9 = one-sided label smoothing (Salimans 2016)
    d_lr_ratio: float = 1.0  # D's learning rate / G's
    d_steps: int = 1  # D updates per iteration, on the same natural patches, update i on candidate i mod K
    d_every: int = 1  # update D on every d_every-th iteration only (G:D update ratio d_every:1)
    r1: float = 0.0  # gamma of the R1 penalty on natural patches, gamma/2 E|grad D|^2 per [-1, 1] pixel (Mescheder 2018)
    z_init_gain: float = 0.1  # fusion weights of a z branch added to a baseline parent (init_from)

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise ValueError(f"gan.candidates must be >= 1, got {self.candidates}")
        if self.perceptual_on not in PERCEPTUAL_ON:
            raise ValueError(f"gan.perceptual_on must be one of {PERCEPTUAL_ON}, got {self.perceptual_on!r}")
        if self.spread and self.candidates < 2:
            raise ValueError("gan.spread needs gan.candidates >= 2 (a spread of one candidate is 0)")
        if self.mode_seeking and self.candidates < 2:
            raise ValueError("gan.mode_seeking needs gan.candidates >= 2 (it compares two candidates)")
        if self.perceptual_on in ("mean", "one") and self.candidates < 2:
            raise ValueError(f"gan.perceptual_on {self.perceptual_on!r} needs gan.candidates >= 2")
        if self.d_steps < 1 or self.d_every < 1:
            raise ValueError(f"gan.d_steps and gan.d_every must be >= 1, got {self.d_steps} and {self.d_every}")
        if self.d_steps > 1 and self.d_every > 1:
            raise ValueError("set gan.d_steps (D more often than G) or gan.d_every (G more often than D), not both")
        if not 0.5 < self.real_label <= 1.0:
            raise ValueError(f"gan.real_label must be in (0.5, 1], got {self.real_label}")
        if self.d_lr_ratio <= 0 or self.r1 < 0 or self.mode_seeking < 0 or self.spread < 0 or self.mean_mse < 0 or self.spread_floor <= 0:
            raise ValueError(f"invalid GanConfig: {self}")
        if self.spread_window < 1:
            raise ValueError(f"gan.spread_window must be >= 1, got {self.spread_window}")


def _g_update(trainer: Trainer, name: str, loss: Tensor) -> float:
    """Check ``loss`` is finite, take one Adam step of G on it, update the moving average; its value."""
    trainer._check({name: loss})
    trainer.optG.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optG.step()
    if trainer.G_avg is not None:
        trainer.G_avg.update_parameters(trainer.G)
    return loss.item()


def _psnr_of_mse(mse: float) -> float:
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def l2_step(trainer: Trainer, x: Tensor, xj: Tensor, q: Tensor | None = None) -> dict[str, float]:
    """The baseline's step: per-pixel MSE of G(x') against x, one Adam step. ``q``: each JPEG's luminance
    table (N, 1, 8, 8), for a G that reads it (``table_cond``)."""
    with trainer._autocast():
        y = trainer.G_ddp(xj, qtable=q) if q is not None else trainer.G_ddp(xj)
    loss = _g_update(trainer, "l2", F.mse_loss(y.float(), x))
    return {"l2": loss, "psnr_batch": _psnr_of_mse(loss)}


def chroma_step(trainer: Trainer, x: Tensor, xj: Tensor) -> dict[str, float]:
    """The colour baseline's step (issue 18): G sees the decoded JPEG as JFIF YCbCr, the space the file codes
    (Y, sharp, guides; Cb/Cr carry the artifacts of their coarser table and, in 4:2:0 files, half resolution)
    and is scored by the per-pixel MSE of its Cb and Cr against the original's. Its Y output is not used:
    the luminance models restore Y."""
    ycc_x, ycc_j = jpeg.rgb_to_jfif(x), jpeg.rgb_to_jfif(xj)
    if trainer.cfg.channels_last:
        ycc_j = ycc_j.contiguous(memory_format=torch.channels_last)
    with trainer._autocast():
        y = trainer.G_ddp(ycc_j)
    loss = _g_update(trainer, "l2_chroma", F.mse_loss(y.float()[:, 1:], ycc_x[:, 1:]))
    return {"l2_chroma": loss, "psnr_chroma_batch": _psnr_of_mse(loss)}


def r1_penalty(real_logits: Tensor, x: Tensor, gamma: float) -> Tensor:
    r"""R1 (Mescheder et al. 2018): :math:`\frac{\gamma}{2} E \lVert \nabla_x D(x) \rVert^2` on natural images.

    ``real_logits`` = D(x) for pixels ``x`` in [0, 255] that require grad; the gradient is taken per
    normalised pixel (D sees ``(x - 127.5) / 127.5``), so gamma means what it does in [-1, 1] GAN code.
    The graph is kept (``create_graph``) so the penalty trains D.
    """
    (gx,) = torch.autograd.grad(real_logits.sum(), x, create_graph=True)
    return 0.5 * gamma * (gx.float() * PIXEL_SCALE).pow(2).flatten(1).sum(1).mean()


def _repeat(t: Tensor, K: int) -> Tensor:
    """``t`` stacked K times along the batch (the K candidates of each JPEG, candidate-major)."""
    return t.repeat(K, *([1] * (t.ndim - 1))) if K > 1 else t


def local_variance(v: Tensor, window: int) -> Tensor:
    """Mean of a per-pixel map ``v`` (N, C, H, W) over non-overlapping ``window`` x ``window`` blocks."""
    return F.avg_pool2d(v, window, window, ceil_mode=True) if window > 1 else v


def spread_loss(cands: Tensor, ref: Tensor, x: Tensor, window: int = 8, floor: float = 1.0) -> Tensor:
    r"""Log-variance matching of K candidates against a reference's local squared error.

    ``cands`` is (K, N, C, H, W); ``ref`` and ``x`` (N, C, H, W) in grey levels. With :math:`v` the
    unbiased variance over the K candidates and :math:`e = (ref - x)^2`, both averaged over each
    ``window`` block (:math:`\bar v`, :math:`\bar e`):

    .. math:: L_s = \operatorname{mean}\big(\log(\bar v + c) - \log(\bar e + c)\big)^2, \quad c = \text{floor}.
    """
    if cands.ndim != 5 or cands.shape[0] < 2:
        raise ValueError(f"spread_loss needs (K >= 2, N, C, H, W) candidates, got {tuple(cands.shape)}")
    v = local_variance(cands.var(dim=0, unbiased=True), window)
    e = local_variance((ref - x) ** 2, window)
    return ((torch.log(v + floor) - torch.log(e + floor)) ** 2).mean()


class GanStep:
    """Step 1 (D) and step 2 (G) of a one-to-many iteration, as configured by ``trainer.cfg.gan``."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer

    def _d_update(self, x: Tensor, fake: Tensor, rec: dict[str, float]) -> tuple[Tensor, Tensor, Tensor]:
        """One Adam step of D on natural patches ``x`` and candidates ``fake``; returns both logits and eq. (3)."""
        t, g = self.t, self.t.cfg.gan
        t.optD.zero_grad(set_to_none=True)
        xr = x.detach().requires_grad_(True) if g.r1 else x
        with t._autocast():
            real_logits = t.D(xr).float()
        real = discriminator_real_term(real_logits, g.real_label)
        if g.r1:
            r1 = r1_penalty(real_logits, xr, g.r1)
            rec["r1"] = r1.item()
            (0.5 * real + r1).backward()
        else:
            (0.5 * real).backward()
        with t._autocast():
            fake_logits = t.D(fake).float()
        fake_term = discriminator_fake_term(fake_logits)
        (0.5 * fake_term).backward()
        d_loss = 0.5 * (real.detach() + fake_term.detach())
        t._check({"d": d_loss})
        t._allreduce_grads(t.D)
        t.optD.step()
        return real_logits.detach(), fake_logits.detach(), d_loss

    def __call__(self, x: Tensor, xj: Tensor, q: Tensor, aligned: Tensor, diagnose: bool) -> dict[str, float]:
        t, cfg = self.t, self.t.cfg
        g = cfg.gan
        K, B = g.candidates, x.shape[0]
        k = jpeg.quantised_indices(xj, q)  # once per JPEG, shared by its K candidates
        with_d = t.step >= t.steps_per_epoch  # no D in the first epoch (Sec. 3.4)
        xk = _repeat(xj, K)
        z = t._noise(xk)
        qk = _repeat(q, K) if q.ndim > 2 else q  # one table for all, or one per JPEG
        table = {"qtable": qk} if cfg.gen.table_cond else {}  # for a G that reads it (any-quality)
        with t._autocast():
            y = t.G_ddp(xk, z, **table)
        rec: dict[str, float] = {}
        update_d = with_d and t.step % g.d_every == 0
        if update_d:  # step 1: fix G, update D with eq. (3): natural patches, then one candidate per JPEG,
            t.D.requires_grad_(True)  # each term back-propagated before the next forward (half the memory)
            for i in range(g.d_steps):
                real_logits, fake_logits, d_loss = self._d_update(x, y[(i % K) * B:(i % K + 1) * B].detach(), rec)
            rec["d"] = d_loss.item()
        elif with_d and diagnose:  # D not updated this iteration: its outputs, for the log only
            with torch.no_grad(), t._autocast():
                real_logits, fake_logits = t.D(x).float(), t.D(y[:B].detach()).float()
        if with_d and diagnose:
            rec.update(d_real=torch.sigmoid(real_logits).mean().item(),
                       d_fake=torch.sigmoid(fake_logits).mean().item(),
                       d_acc_real=(real_logits > 0).float().mean().item(),
                       d_acc_fake=(fake_logits < 0).float().mean().item())
        # step 2: fix D (no gradient into its weights), update G
        terms: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        yf = y.float()
        cands = yf.view(K, B, *yf.shape[1:])
        mean = cands.mean(0) if K > 1 else yf
        with t._autocast():
            if g.perceptual_on == "mean":
                terms["lp"] = t.perceptual(mean, x).float()
            elif g.perceptual_on == "one":  # the first candidate only; the others answer to L_n and L_j
                terms["lp"] = t.perceptual(y[:B], x).float()
            else:
                terms["lp"] = t.perceptual(y, _repeat(x, K)).float()
        weights["lp"] = cfg.weights.l1
        if with_d:
            t.D.requires_grad_(False)
            with t._autocast():
                terms["ln"] = naturalness_loss(t.D(y).float())
            t.D.requires_grad_(True)
            weights["ln"] = cfg.weights.l2
        terms["lj"] = jpeg.jpeg_loss(yf, _repeat(k, K), qk, weight=_repeat(aligned, K))
        weights["lj"] = cfg.weights.l3
        if g.mean_mse:
            terms["mse_mean"] = F.mse_loss(mean, x)
            weights["mse_mean"] = g.mean_mse
        if g.mode_seeking:  # MSGAN: 1 / (feature distance of two candidates / distance of their z)
            with t._autocast():
                f = t.perceptual.features(y[: 2 * B]).float()
            zf = z[: 2 * B].float()
            ratio = (f[:B] - f[B:]).abs().mean() / (zf[:B] - zf[B:]).abs().mean()
            terms["mode_seeking"] = 1.0 / (ratio + 1e-5)
            weights["mode_seeking"] = g.mode_seeking
        if g.spread:
            with torch.no_grad(), t._autocast():
                ref = t.G_ref(xj, **({"qtable": q} if cfg.gen.table_cond else {})).float()
            terms["spread"] = spread_loss(cands, ref, x, g.spread_window, g.spread_floor)
            weights["spread"] = g.spread
        t._check(terms)
        total = sum(weights[n] * v for n, v in terms.items())
        if diagnose:  # how hard each term pulls on G's output (the gradient it sends into y)
            for n, v in terms.items():
                (gy,) = torch.autograd.grad(weights[n] * v, y, retain_graph=True, allow_unused=True)
                rec[f"grad_{n}"] = 0.0 if gy is None else gy.float().norm().item()
            if K > 1:
                rec["spread_batch"] = cands.detach().var(0).mean().sqrt().item()
        t.optG.zero_grad(set_to_none=True)
        total.backward()
        t.optG.step()
        if t.G_avg is not None:
            t.G_avg.update_parameters(t.G)
        rec.update({n: v.item() for n, v in terms.items()}, total=total.item())
        return rec
