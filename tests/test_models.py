"""G, D, shift-and-average and tiled inference (otmlib.models) on tiny networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from otmlib.models import (
    Discriminator,
    Generator,
    GeneratorConfig,
    PreActResidualUnit,
    count_flops_per_pixel,
    fold_shift_and_average,
    grow_aggregation,
    restore_tiled,
    replicate_pad,
    shift_and_average,
    widen_units,
)
from otmlib.models import _tile_spans, _tile_windows


def tiny(**kw) -> GeneratorConfig:
    return GeneratorConfig(**{"width": 8, "branch_units": 1, "agg_units": 1, **kw})


def warmed_up(cfg: GeneratorConfig, seed: int = 0) -> Generator:
    """A G in eval mode whose BatchNorm running statistics are not the trivial (0, 1)."""
    torch.manual_seed(seed)
    G = Generator(cfg).train()
    with torch.no_grad():
        for _ in range(3):
            G(torch.rand(2, cfg.channels, 48, 48) * 255)
    return G.eval()


def test_defaults_are_spec_values():
    cfg = GeneratorConfig()
    assert (cfg.channels, cfg.width, cfg.branch_units, cfg.agg_units) == (1, 64, 3, 6)
    assert (cfg.kernel, cfg.stride, cfg.noise_sigma) == (4, 2, 1.0)
    assert cfg.shift_and_average and cfg.noise
    with pytest.raises(ValueError):
        GeneratorConfig(kernel=5, stride=2)  # (k - s) odd: no exact H <-> H/s padding


@pytest.mark.parametrize("noise", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(37, 53), (64, 64)])
def test_generator_keeps_shape(noise, channels, size):
    torch.manual_seed(0)
    G = Generator(tiny(channels=channels, noise=noise))
    x = torch.rand(2, channels, *size) * 255
    y = G(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("stride,kernel", [(2, 4), (3, 5)])
@pytest.mark.parametrize("noise", [False, True])
def test_folding_shift_and_average_keeps_the_function(stride, kernel, noise):
    """Box mean after the deconvolution == one larger deconvolution (its filter the box-smeared one)."""
    G = warmed_up(tiny(stride=stride, kernel=kernel, noise=noise))
    with torch.no_grad():  # a filter far from the constant-input constraint, so the box matters
        G.deconv.weight.normal_(0, 0.5)
        G.deconv.bias.fill_(0.1)
    F_ = fold_shift_and_average(G).eval()
    assert not F_.cfg.shift_and_average and F_.cfg.deconv_kernel == kernel + stride - 1
    assert F_.deconv.weight.shape[-1] == kernel + stride - 1
    for size in [(37, 53), (48, 48), (8, 13)]:
        x = torch.rand(2, 1, *size) * 255
        with torch.no_grad():
            a, b = G(x, seed=3), F_(x, seed=3)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-3)
        G.cfg.shift_and_average = False  # and the box did matter: without it the output differs
        with torch.no_grad():
            assert (G(x, seed=3) - a).abs().max() > 1.0
        G.cfg.shift_and_average = True
    with pytest.raises(ValueError, match="no shift-and-average"):
        fold_shift_and_average(F_)


@pytest.mark.parametrize("noise", [False, True])
def test_growing_the_aggregation_keeps_the_function(noise):
    """Units added as identities: same output, more units, and each new unit does learn (its last conv is free)."""
    G = warmed_up(tiny(noise=noise, agg_units=2))
    H = grow_aggregation(G, 4).eval()
    assert H.cfg.agg_units == 4 and sum(isinstance(m, PreActResidualUnit) for m in H.aggregate) == 4
    x = torch.rand(2, 1, 37, 45) * 255
    with torch.no_grad():
        torch.testing.assert_close(H(x, seed=1), G(x, seed=1), rtol=0, atol=1e-4)
    for unit in list(H.aggregate)[2:4]:
        assert not unit.body[5].weight.any()  # an identity: x + 0
        with torch.no_grad():
            unit.body[5].weight.normal_(0, 0.1)
    with torch.no_grad():  # the new units are in the path: changing them changes the output
        assert (H(x, seed=1) - G(x, seed=1)).abs().max() > 0.1
    with pytest.raises(ValueError, match="adds units"):
        grow_aggregation(G, 2)


@pytest.mark.parametrize("noise", [False, True])
def test_widening_the_units_keeps_the_function(noise):
    """New filters in each unit's first conv, read through zeros: the same output in eval and in
    training mode (where BN uses batch statistics), and the new filters are in the path."""
    G = warmed_up(tiny(noise=noise, agg_units=2))
    H = widen_units(G, 20)
    assert H.cfg.inner_width == 20 and "inner width 20" in H.cfg.describe()
    units = [m for m in H.modules() if isinstance(m, PreActResidualUnit)]
    assert len(units) == (2 if noise else 1) + 2
    for u in units:
        assert u.body[2].weight.shape == (20, 8, 3, 3) and u.body[5].weight.shape == (8, 20, 3, 3)
        assert u.body[2].weight[8:].abs().sum() > 0  # new filters are random, not zero (they must differ)
        assert not u.body[5].weight[:, 8:].any()
    x = torch.rand(2, 1, 37, 45) * 255
    with torch.no_grad():
        torch.testing.assert_close(H.eval()(x, seed=1), G.eval()(x, seed=1), rtol=0, atol=1e-4)
        torch.testing.assert_close(H.train()(x, seed=1), G.train()(x, seed=1), rtol=0, atol=1e-4)
        for u in units:
            u.body[5].weight[:, 8:].normal_(0, 0.1)
        assert (H.eval()(x, seed=1) - G.eval()(x, seed=1)).abs().max() > 0.1
    with pytest.raises(ValueError, match="adds filters"):
        widen_units(H, 16)
    with pytest.raises(ValueError):
        GeneratorConfig(inner_width=0)


def test_residual_unit_is_identity_plus_branch():
    torch.manual_seed(0)
    unit = PreActResidualUnit(4).eval()
    x = torch.randn(1, 4, 6, 6)
    body = unit.body
    expect = x + body[5](body[4](body[3](body[2](body[1](body[0](x.clone()))))))
    torch.testing.assert_close(unit(x), expect)
    assert [type(m) for m in body] == [nn.BatchNorm2d, nn.ReLU, nn.Conv2d] * 2  # pre-activation order


# ----------------------------------------------------------------------------- shift-and-average


@pytest.mark.parametrize("stride,kernel,padding", [(2, 4, 1), (3, 6, 0)])
def test_shift_and_average_makes_constant_input_constant(stride, kernel, padding):
    torch.manual_seed(1)
    deconv = nn.ConvTranspose2d(3, 2, kernel, stride, padding)
    with torch.no_grad():
        deconv.weight.normal_()  # arbitrary weights: the tap sums differ per phase
        y = deconv(torch.full((1, 3, 9, 9), 0.7))
    m = kernel + stride  # incomplete taps and shifted-in rows stay within this margin
    inner = y[..., m:-m, m:-m]
    # without the strategy: periodic with period = stride, and not constant
    torch.testing.assert_close(inner[..., stride:, :], inner[..., :-stride, :])
    torch.testing.assert_close(inner[..., :, stride:], inner[..., :, :-stride])
    assert (inner.amax(dim=(2, 3)) - inner.amin(dim=(2, 3))).min() > 1e-2
    # with it: constant for every channel
    out = shift_and_average(y, stride)
    assert out.shape == y.shape
    inner = out[..., m:-m, m:-m]
    assert (inner - inner[..., :1, :1]).abs().max() < 1e-5
    # ... at the mean of the s^2 phases of the periodic output
    phases = y[..., m : m + stride, m : m + stride].mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(inner[..., :1, :1], phases)


@pytest.mark.parametrize("stride", [2, 3])
def test_shift_and_average_border_replicates_first_row_and_column(stride):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 5, 7)
    a = x.numpy()
    expect = np.zeros_like(a)
    for i in range(5):
        for j in range(7):
            for dy in range(stride):
                for dx in range(stride):
                    expect[..., i, j] += a[..., max(i - dy, 0), max(j - dx, 0)]
    expect /= stride * stride
    np.testing.assert_allclose(shift_and_average(x, stride).numpy(), expect, rtol=1e-5, atol=1e-6)
    assert shift_and_average(x, 1) is x


@pytest.mark.parametrize("kernel,stride", [(4, 2), (5, 3), (6, 2)])
def test_generator_upsampling_has_no_border_frame(kernel, stride):
    torch.manual_seed(3)
    G = Generator(tiny(kernel=kernel, stride=stride))
    with torch.no_grad():
        G.deconv.weight.normal_()
        G.deconv.bias.normal_()
        f = torch.full((1, 8, 5, 6), 0.3)
        out = G._upsample(f)
        assert out.shape == (1, 1, 5 * stride, 6 * stride)
        assert (out - out[..., :1, :1]).abs().max() < 1e-5  # constant up to the image border
        G.cfg.shift_and_average = False
        raw = G._upsample(f)
        assert (raw - raw[..., :1, :1]).abs().max() > 1e-2  # the test can fail without the strategy


@pytest.mark.parametrize("strategy", [True, False])
def test_generator_constant_in_constant_out(strategy):
    G = warmed_up(tiny(shift_and_average=strategy))
    with torch.no_grad():
        G.deconv.weight.normal_(std=0.2)  # a deconv that has not learnt the tap-sum constraint
        x = torch.full((1, 1, 96, 96), 140.0)
        y = G(x, z=torch.full_like(x, 0.5))
    inner = y[..., 32:-32, 32:-32]
    spread = (inner.max() - inner.min()).item()
    if strategy:
        assert spread < 1e-3
    else:
        assert spread > 1e-1
        grid = inner[..., 2:, :] - inner[..., :-2, :]  # the period-2 grid of Fig. 8(a)
        assert grid.abs().max() < 1e-3


# ----------------------------------------------------------------------------- noise


def test_seeds_and_explicit_z():
    G = warmed_up(tiny())
    x = torch.rand(2, 1, 24, 40) * 255
    with torch.no_grad():
        a, b, c = G(x, seed=1), G(x, seed=1), G(x, seed=2)
        z = G.sample_noise(x, seed=1)
        assert torch.equal(a, b)
        assert (a - c).abs().mean() > 1e-2
        assert torch.equal(G(x, z), a)
        assert torch.equal(G(x, generator=torch.Generator().manual_seed(1)), a)
        assert torch.equal(G(x, z[:1]), G(x, z[:1].expand(2, -1, -1, -1)))  # one z for the batch
    with pytest.raises(ValueError):
        G(x, torch.zeros(2, 1, 24, 41))
    with pytest.raises(ValueError):
        G.sample_noise(x, seed=1, generator=torch.Generator())


def test_noise_distribution_and_channels():
    G = Generator(tiny(channels=3, noise_sigma=2.0))
    z = G.sample_noise(torch.zeros(4, 3, 64, 64), seed=0)
    assert z.shape == (4, 3, 64, 64)
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 2.0) < 0.05


def test_baseline_has_no_noise_branch_and_rejects_z():
    torch.manual_seed(0)
    base, otm = Generator(tiny(noise=False)), Generator(tiny())
    names = [n for n, _ in base.named_parameters()]
    assert not any(n.startswith(("noise_branch", "fuse")) for n in names)
    assert any(n.startswith("noise_branch") for n, _ in otm.named_parameters())
    x = torch.rand(1, 1, 16, 16) * 255
    with pytest.raises(ValueError, match="baseline"):
        base(x, torch.zeros_like(x))
    base.eval()
    torch.testing.assert_close(base(x, seed=3), base(x))  # nothing to draw: seed is ignored


# ----------------------------------------------------------------------------- D


@pytest.mark.parametrize("size", [64, 96])
def test_discriminator_logits_and_gradient_to_G(size):
    torch.manual_seed(0)
    G, D = Generator(tiny()), Discriminator(1, width=8)
    x = torch.rand(2, 1, size, size) * 255
    logits = D(G(x, seed=0))
    assert logits.shape == (2,)
    logits.sum().backward()
    for p in (G.image_branch[0].weight, G.noise_branch[0].weight, G.fuse.weight, G.deconv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_discriminator_structure_follows_table_1():
    D = Discriminator(3)
    convs = [m for m in D.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2] * 4
    assert isinstance(D.features[-1], nn.Conv2d)  # no BN / LeakyReLU after the last conv
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.features) == 7
    assert D(torch.rand(1, 3, 16, 24) * 255).shape == (1,)


# ----------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("n,tile,overlap", [(200, 64, 32), (300, 64, 32), (4000, 512, 32), (70, 64, 16)])
def test_tile_spans_aligned_and_windows_sum_to_one(n, tile, overlap):
    spans = _tile_spans(n, tile, overlap, 8)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a % 8 == 0 for a, _ in spans)
    assert all(a2 < b1 and b1 - a2 >= min(overlap, n) for (_, b1), (a2, _) in zip(spans, spans[1:]))
    total = torch.zeros(n)
    for (a, b), w in zip(spans, _tile_windows(spans, n)):
        total[a:b] += w
        assert w.min() >= 0
    torch.testing.assert_close(total, torch.ones(n))


@pytest.mark.parametrize("noise", [True, False])
def test_restore_tiled_matches_plain_forward(noise):
    G = warmed_up(tiny(noise=noise))
    x = torch.rand(1, 1, 200, 300) * 255
    kw = {"seed": 5} if noise else {}
    with torch.no_grad():
        ref = G(x, **kw)
    out = restore_tiled(G, x, tile=64, overlap=32, **kw)
    assert out.shape == x.shape
    err = (out - ref).abs()
    assert err.max() < 1.0 and err.mean() < 0.05  # grey levels, on ~7-level corrections
    seams = (restore_tiled(G, x, tile=64, overlap=0, **kw) - ref).abs()
    assert seams.max() > 5 * err.max()  # blending is what removes the tile seams
    whole = restore_tiled(G, x, tile=512, **kw)  # one tile: the same computation
    torch.testing.assert_close(whole, ref, rtol=1e-5, atol=1e-3)


def test_restore_tiled_rejects_bad_arguments():
    G = warmed_up(tiny(noise=False))
    x = torch.rand(1, 1, 40, 40) * 255
    with pytest.raises(ValueError):
        restore_tiled(G, x, tile=64, overlap=40)
    with pytest.raises(ValueError):
        restore_tiled(G, x, z=torch.zeros_like(x))


# ----------------------------------------------------------------------------- cost


@pytest.mark.parametrize("noise,inner", [(True, None), (False, None), (False, 12)])
def test_flops_match_counted_convolutions(noise, inner):
    cfg = tiny(noise=noise, branch_units=2, agg_units=3, inner_width=inner)
    G = Generator(cfg)
    counted = []

    def hook(m, inp, out):
        if isinstance(m, nn.ConvTranspose2d):  # each input pixel scatters k^2 taps per output channel
            margin = G._up_margin
            h, w = inp[0].shape[-2] - 2 * margin, inp[0].shape[-1] - 2 * margin
            counted.append(h * w * m.in_channels * m.out_channels * math.prod(m.kernel_size))
        else:
            counted.append(out[0].numel() * m.in_channels * math.prod(m.kernel_size))

    for m in G.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        G(torch.rand(1, 1, 32, 48) * 255)
    assert count_flops_per_pixel(cfg) == pytest.approx(sum(counted) / (32 * 48))
    assert count_flops_per_pixel(GeneratorConfig()) == pytest.approx(224000)


@pytest.mark.parametrize("channels_last", [False, True])
def test_replicate_pad_is_torchs_forward_and_backward(channels_last):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pad = (2, 1, 0, 3)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = torch.compile(replicate_pad)(a, pad), F.pad(b, pad, mode="replicate")  # the compiled path
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12)
