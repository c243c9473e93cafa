"""The one-to-many recipe: warm start with a z branch, alpha interpolation, the spread term, the GAN step's
frozen D and diagnostics, and the candidate measures (hand cases and independent formulas)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from otmlib.data import DataConfig, code_image
from otmlib.models import Generator, GeneratorConfig, add_noise_branch, interpolate_generators
from otmlib.restore import diversity, diversity_stats, local_std
from otmlib.steps import GanConfig, spread_loss
from otmlib.train import TrainConfig, Trainer

GEN = GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)


@pytest.fixture(scope="module")
def images(camera, chelsea):
    from skimage import data

    train = [code_image("camera", camera, 10, False), code_image("chelsea", chelsea, 10, False)]
    val = [code_image("coins", data.coins()[:96, :128], 10, False)]
    return train, val


def _trained_baseline() -> Generator:
    torch.manual_seed(3)
    G = Generator(GEN)
    with torch.no_grad():  # BN statistics and deconv away from their initial values
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        G.deconv.weight.mul_(5.0)
    return G.eval()


def test_noise_branch_with_zero_gain_is_the_baseline_for_every_z():
    G = _trained_baseline()
    x = torch.rand(2, 1, 24, 40) * 255
    lifted = add_noise_branch(G, 0.0).eval()
    for seed in (0, 1):
        assert torch.allclose(lifted(x, seed=seed), G(x), atol=1e-4)
    # a gain > 0: z moves the output, less for a smaller gain
    moved = []
    for gain in (0.01, 0.1):
        warm = add_noise_branch(G, gain).eval()
        moved.append((warm(x, seed=0) - warm(x, seed=1)).abs().mean().item())
    assert 0 < moved[0] < moved[1]
    with pytest.raises(ValueError, match="baseline"):
        add_noise_branch(warm)


def test_alpha_interpolation_ends_and_middle():
    G = _trained_baseline()
    gan = add_noise_branch(G, 0.1, seed=1).eval()
    with torch.no_grad():
        for p in gan.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(1, 1, 32, 32) * 255
    assert torch.allclose(interpolate_generators(G, gan, 0.0).eval()(x, seed=4), G(x), atol=1e-4)
    assert torch.equal(interpolate_generators(G, gan, 1.0).eval()(x, seed=4), gan(x, seed=4))
    half = interpolate_generators(G, gan, 0.5).state_dict()
    for name in ("image_branch.0.weight", "deconv.weight"):
        assert torch.allclose(half[name], 0.5 * (G.state_dict()[name] + gan.state_dict()[name]))
    w = G.cfg.width  # the fusion's noise half scales from 0, its image half from the identity
    assert torch.allclose(half["fuse.weight"][:, w:], 0.5 * gan.state_dict()["fuse.weight"][:, w:])
    assert torch.equal(half["noise_branch.0.weight"], gan.state_dict()["noise_branch.0.weight"])
    with pytest.raises(ValueError, match="alpha"):
        interpolate_generators(G, gan, 1.5)


def test_spread_loss_matches_a_hand_computation():
    torch.manual_seed(0)
    cands = torch.rand(3, 2, 1, 16, 16) * 50
    ref, x = torch.rand(2, 1, 16, 16) * 255, torch.rand(2, 1, 16, 16) * 255
    c, r, g = cands.double().numpy(), ref.double().numpy(), x.double().numpy()
    v = c.var(axis=0, ddof=1)  # (2, 1, 16, 16)
    e = (r - g) ** 2
    blocks = lambda a: a.reshape(2, 1, 2, 8, 2, 8).mean(axis=(3, 5))  # noqa: E731
    want = np.mean((np.log(blocks(v) + 1.0) - np.log(blocks(e) + 1.0)) ** 2)
    assert spread_loss(cands.double(), ref.double(), x.double(), 8, 1.0).item() == pytest.approx(want, rel=1e-10)
    # zero when the candidates spread exactly as far as the reference errs
    same = torch.stack([x + 3.0, x - 3.0])  # unbiased variance 18 everywhere
    assert spread_loss(same, x + math.sqrt(18.0), x).item() == pytest.approx(0.0, abs=1e-10)


def test_diversity_stats_hand_case():
    rng = np.random.default_rng(0)
    gt = np.zeros((64, 64))
    gt[:, 32:] = rng.integers(0, 255, (64, 32))  # right half textured, left half flat
    s = local_std(gt)
    # a 9x9 window centred in columns 0-27 sees only the flat half
    assert s[:, :28].max() == 0.0 and s[:, 28].min() > 3 and s[:, 40:].min() > 12
    a = np.zeros((64, 64))
    b = np.zeros((64, 64))
    b[:, 36:] = 4.0  # candidates differ only inside the textured half
    b[:, :28] = 1.0
    st = diversity_stats([a, b], gt)
    # per pixel the unbiased variance of (0, d) is d^2 / 2
    assert st["diversity_textured"] == pytest.approx(math.sqrt(np.mean((b[:, :][local_std(gt) > 12] ** 2) / 2)))
    assert st["diversity_flat"] == pytest.approx(math.sqrt(0.5))
    assert st["textured_flat"] == pytest.approx(st["diversity_textured"] / st["diversity_flat"])
    assert st["diversity"] == pytest.approx(diversity([a, b]))


def test_gan_config_is_checked():
    with pytest.raises(ValueError, match="candidates >= 2"):
        GanConfig(spread=1.0)
    with pytest.raises(ValueError, match="perceptual_on"):
        GanConfig(perceptual_on="median")
    with pytest.raises(ValueError, match="real_label"):
        GanConfig(real_label=0.3)


def test_train_config_copies_a_shared_generator_config():
    gen = GeneratorConfig(width=8)
    a = TrainConfig(mode="baseline", gen=gen)
    b = TrainConfig(mode="one-to-many", gen=gen)
    assert not a.gen.noise and b.gen.noise and gen.noise  # gen itself untouched (default True)
    assert TrainConfig.from_dict(b.to_dict()) == b


def _moments_cfg(out, init: str) -> TrainConfig:
    return TrainConfig(
        mode="one-to-many", gen=dataclasses.replace(GEN, noise=True), data=DataConfig(patch=32, seed=1),
        gan=GanConfig(candidates=2, perceptual_on="mean", mean_mse=1.0, spread=1.0, real_label=0.9, d_lr_ratio=0.5),
        backbone="efficientnet-lite0", batch_size=2, steps=4, epoch_samples=2, bf16=False, log_every=2,
        val_every=4, ckpt_every=2, out=str(out), init=init)


def test_moments_run_warm_starts_freezes_d_logs_diagnostics_and_resumes(images, tmp_path):
    from otmlib.zoo import export_generator, load_generator

    train, val = images
    parent = Trainer(TrainConfig(mode="baseline", gen=GEN, data=DataConfig(patch=32, seed=1), batch_size=2,
                                 steps=2, bf16=False, out=str(tmp_path / "base"), log_every=1, val_every=2),
                     train, val, progress=False)
    parent.fit()
    cfg = _moments_cfg(tmp_path / "otm", str(parent.ckpt_path))
    t = Trainer(cfg, train, val, progress=False)
    entry = t.init_from(cfg.init)
    assert entry["added_noise_branch"] == {"z_init_gain": 0.1}
    assert t.G_ref is not None and not any(p.requires_grad for p in t.G_ref.parameters())
    # D's weights get gradients from D's own step only: G's step must not reach them
    hits = []
    for p in t.D.parameters():
        p.register_hook(lambda g: hits.append(1))
    t.fit(2)
    n_d_params = len(list(t.D.parameters()))
    assert len(hits) == 2 * n_d_params  # steps 0 (no D: first epoch) and 1: real and fake passes, once each
    assert t.optD.param_groups[0]["lr"] == pytest.approx(0.5 * t.optG.param_groups[0]["lr"])
    t.fit(4)
    log = t.read_log()
    diag = [r for r in log if "grad_lp" in r]
    assert diag and all(k in diag[-1] for k in ("d_real", "d_fake", "d_acc_real", "d_acc_fake", "grad_ln",
                                                "grad_lj", "grad_spread", "grad_mse_mean", "spread"))
    val_rec = [r for r in log if "val_div_all" in r][-1]
    assert val_rec["val_div_all"] > 0 and "val_div_over_rmse" in val_rec and val_rec["val_texture_ratio"] > 0
    assert 0.5 < val_rec["val_in_intervals"] <= 1
    assert val_rec["val_ref_rmse"] > 0 and "val_ref_rmse_textured" in val_rec and "val_ref_rmse_flat" in val_rec
    # resume: the frozen parent comes back from the checkpoint, and the run continues bit-identically
    two = Trainer(_moments_cfg(tmp_path / "otm2", str(parent.ckpt_path)), train, val, progress=False)
    two.init_from(cfg.init)
    two.fit(2)
    again2 = Trainer(_moments_cfg(tmp_path / "otm2", str(parent.ckpt_path)), train, val, progress=False)
    assert again2.resume() and again2.G_ref is not None
    again2.fit(4)
    assert all(torch.equal(a, b) for a, b in zip(t.G.state_dict().values(), again2.G.state_dict().values()))
    # the release file carries the L2 parent for alpha
    out = export_generator(torch.load(t.ckpt_path, weights_only=True), tmp_path / "otm.safetensors",
                           data_description="", data_sha256="")
    G, meta = load_generator(out)
    assert G.cfg.noise and "l2_parent" in meta


def test_kid_equals_torchmetrics_poly_mmd_on_one_subset():
    from torchmetrics.image.kid import poly_mmd

    from otmlib.measure import kid

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 16)), rng.normal(0.3, 1.2, size=(50, 16))
    # one subset holding every row: the subset draw only permutes, and MMD^2 is permutation-invariant
    want = poly_mmd(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert kid(a, b, subsets=1, subset_size=50) == pytest.approx(want, rel=1e-9)
    # two independent samples of one distribution: near 0 (unbiased), far below the shifted pair
    same = kid(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), subsets=5, subset_size=400)
    assert abs(same) < 0.1 * kid(a, b, subsets=1, subset_size=50)
    with pytest.raises(ValueError, match="at least 2"):
        kid(a[:1], b)


def test_tiles_cut_the_top_left_grid():
    from otmlib.measure import tiles

    img = np.arange(130 * 200).reshape(130, 200)
    t = tiles(img, 64)
    assert t.shape == (2 * 3, 64, 64)
    assert np.array_equal(t[4], img[64:128, 64:128])


def test_summarise_pools_diversity_by_pixels_and_gives_the_gap(camera):
    import pandas as pd

    from otmlib.measure import summarise

    rows = [
        {"image": "a", "method": "baseline", "psnr": 30.0, "mse": 4.0},
        {"image": "b", "method": "baseline", "psnr": 28.0, "mse": 16.0},
    ]
    # image a has 100 pixels, b 300: every region pools by pixels, "all" too
    for img, var, n, vt, nt, vf, nf in (("a", 4.0, 100, 9.0, 10, 1.0, 30), ("b", 1.0, 300, 1.0, 30, 0.25, 10)):
        for k in range(2):
            rows.append({"image": img, "method": "one-to-many", "psnr": 27.0 + k, "mse": 20.0, "var_all": var,
                         "n_all": n, "var_textured": vt, "n_textured": nt, "var_flat": vf, "n_flat": nf})
    s = summarise(pd.DataFrame(rows)).set_index("method")
    one = s.loc["one-to-many"]
    assert one["diversity"] == pytest.approx(math.sqrt((4 * 100 + 1 * 300) / 400))
    assert one["diversity_textured"] == pytest.approx(math.sqrt((9 * 10 + 1 * 30) / 40))
    assert one["diversity_flat"] == pytest.approx(math.sqrt((1 * 30 + 0.25 * 10) / 40))
    assert one["diversity_over_rmse"] == pytest.approx(one["diversity"] / math.sqrt(10.0))
    assert one["gap_db"] == pytest.approx(27.5 - 29.0)
    assert s.loc["one-to-many", "outputs"] == 4


def test_mode_seeking_term_is_logged_and_needs_two_candidates(images, tmp_path):
    with pytest.raises(ValueError, match="mode_seeking"):
        GanConfig(mode_seeking=1.0)
    train, val = images
    cfg = TrainConfig(mode="one-to-many", gen=GeneratorConfig(width=8, branch_units=1, agg_units=1),
                      data=DataConfig(patch=32, seed=1), gan=GanConfig(candidates=2, mode_seeking=1.0),
                      backbone="efficientnet-lite0", batch_size=2, steps=2, epoch_samples=2, bf16=False,
                      log_every=1, val_every=2, out=str(tmp_path / "ms"))
    t = Trainer(cfg, train, val, progress=False)
    t.fit()
    rec = [r for r in t.read_log() if "mode_seeking" in r][-1]
    assert rec["mode_seeking"] > 0 and rec["grad_mode_seeking"] > 0


def test_gan_health_figure_draws_every_panel_from_log_records():
    from otmlib.viz import _running_mean, gan_health_figure

    assert np.allclose(_running_mean([1, 2, 3, 4, 5, 6], 3), [1, 1.5, 2, 3, 4, 5])
    logs = [{"step": s, "grad_lp": 0.1, "grad_spread": 0.05, "d_real": 0.7, "d_fake": 0.3, "d_acc_real": 0.8,
             "d_acc_fake": 0.9} for s in range(50, 300, 50)]
    vals = [{"step": 100 * k, "val_psnr": 27.0, "val_div_all": 5.0, "val_div_textured": 7.0, "val_div_flat": 2.0,
             "val_ref_rmse": 9.5} for k in (1, 2)]
    fig = gan_health_figure({"a run": logs + vals, "empty": []})
    axes = fig.axes
    assert len(axes) == 8
    assert len(axes[0].lines) == 4 and len(axes[2].lines) == 2 and len(axes[3].lines) == 4


def test_r1_penalty_matches_its_formula_on_a_linear_d():
    """R1 = gamma/2 E|grad_x D(x)|^2 per [-1, 1] pixel: for a D linear in normalised pixels, |w|^2 gamma / 2."""
    import torch.nn as nn

    from otmlib.models import normalise

    class LinearD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.linspace(-1, 1, 16 * 16).view(1, 1, 16, 16))

        def forward(self, x):
            return (normalise(x) * self.w).flatten(1).sum(1)

    from otmlib.steps import r1_penalty

    D, gamma = LinearD(), 10.0
    x = (torch.rand(3, 1, 16, 16) * 255).requires_grad_(True)
    r1 = r1_penalty(D(x), x, gamma)
    # D = sum(w * normalised x): its gradient per normalised pixel is w, for every image
    assert r1.item() == pytest.approx(0.5 * gamma * D.w.pow(2).sum().item(), rel=1e-5)
    r1.backward()  # the penalty trains D: d/dw of gamma/2 |w|^2 = gamma w
    assert torch.allclose(D.w.grad, gamma * D.w.detach(), rtol=1e-4)


def test_r1_runs_in_the_gan_step(images, tmp_path):
    train, val = images
    cfg = TrainConfig(mode="one-to-many", gen=GeneratorConfig(width=8, branch_units=1, agg_units=1),
                      data=DataConfig(patch=32, seed=1), gan=GanConfig(r1=1.0), d_width=8,
                      backbone="efficientnet-lite0", batch_size=2, steps=2, epoch_samples=2, bf16=False,
                      log_every=1, val_every=2, out=str(tmp_path / "r1"))
    t = Trainer(cfg, train, val, progress=False)
    t.fit()
    rec = [r for r in t.read_log() if "r1" in r][-1]
    assert rec["r1"] > 0 and "d_real" in rec


def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
    from otmlib.losses import discriminator_fake_term, discriminator_real_term, discriminator_terms

    logits = torch.tensor([-2.0, 0.0, 3.0])
    p = torch.sigmoid(logits)
    want = -(0.9 * torch.log(p) + 0.1 * torch.log(1 - p)).mean()
    assert discriminator_real_term(logits, 0.9).item() == pytest.approx(want.item(), rel=1e-6)
    assert discriminator_fake_term(logits).item() == pytest.approx(-torch.log(1 - p).mean().item(), rel=1e-6)
    real, fake = discriminator_terms(logits, logits)
    assert real.item() == pytest.approx(-torch.log(p).mean().item(), rel=1e-6) and fake == discriminator_fake_term(logits)


@pytest.mark.parametrize("gan, d_updates", [
    (dict(d_every=2), 1),  # steps 1..3 (D from step 1): D updates at step 2 only
    (dict(d_steps=2), 6),  # twice each of steps 1, 2 and 3
])
def test_update_ratio_counts_d_steps(images, tmp_path, gan, d_updates):
    train, val = images
    base = dict(candidates=2, perceptual_on="one")
    cfg = TrainConfig(mode="one-to-many", gen=GeneratorConfig(width=8, branch_units=1, agg_units=1),
                      data=DataConfig(patch=32, seed=1), gan=GanConfig(**base, **gan),
                      backbone="efficientnet-lite0", batch_size=2, steps=4, epoch_samples=2, bf16=False,
                      log_every=1, val_every=100, out=str(tmp_path / "ratio"))
    t = Trainer(cfg, train, val, progress=False)
    calls, fakes = [], []
    step = t.optD.step
    t.optD.step = lambda *a, **k: (calls.append(t.step), step(*a, **k))[1]
    update = t.gan_step._d_update
    t.gan_step._d_update = lambda x, fake, rec: (fakes.append(fake.clone()), update(x, fake, rec))[1]
    t.fit()
    assert len(calls) == d_updates
    if gan.get("d_steps"):  # the two updates of a step see the two candidates (different z), not one twice
        assert not torch.equal(fakes[0], fakes[1])
    log = [r for r in t.read_log() if "grad_lp" in r]
    # D's outputs are logged on every step with D, updated or not
    assert [("d_real" in r) for r in log] == [False, True, True, True]
    assert all(("d" in r) == (r["step"] - 1 in calls) for r in log)  # a record names the step after it


def test_update_ratio_and_perceptual_choice_are_checked():
    with pytest.raises(ValueError, match="not both"):
        GanConfig(d_steps=2, d_every=2)
    with pytest.raises(ValueError, match=">= 1"):
        GanConfig(d_every=0)
    with pytest.raises(ValueError, match="'one' needs"):
        GanConfig(perceptual_on="one")


def test_perceptual_on_one_candidate_sees_the_first_candidate_only(images, tmp_path):
    """With L_p on "one", the perceptual term reads candidate 0 of each JPEG (a view of G's output), not the
    mean of the K (a new tensor) nor all of them."""
    train, val = images
    seen = {}
    for on in ("one", "mean", "each"):
        cfg = TrainConfig(mode="one-to-many", gen=GeneratorConfig(width=8, branch_units=1, agg_units=1),
                          data=DataConfig(patch=32, seed=1), gan=GanConfig(candidates=2, perceptual_on=on),
                          backbone="efficientnet-lite0", batch_size=2, steps=1, epoch_samples=100, bf16=False,
                          out=str(tmp_path / on))
        t = Trainer(cfg, train, val, progress=False)
        forward = t.perceptual.forward
        t.perceptual.forward = lambda y, x, f=forward, on=on: (seen.__setitem__(on, y), f(y, x))[1]
        t.fit()
    one = seen["one"]  # rows 0..B-1 of G's (2B, ...) output: candidate 0 of each JPEG
    assert one.shape[0] == 2 and one._base is not None and one._base.shape[0] == 4 and one.storage_offset() == 0
    assert seen["mean"].shape[0] == 2 and seen["mean"]._base is None
    assert seen["each"].shape[0] == 4


def test_init_from_a_baseline_takes_the_runs_sigma_of_z(images, tmp_path):
    train, val = images
    parent = Trainer(TrainConfig(mode="baseline", gen=GEN, data=DataConfig(patch=32, seed=1), batch_size=2,
                                 steps=1, bf16=False, out=str(tmp_path / "base")), train, val, progress=False)
    parent.fit()
    cfg = dataclasses.replace(_moments_cfg(tmp_path / "s3", str(parent.ckpt_path)),
                              gen=dataclasses.replace(GEN, noise=True, noise_sigma=3.0))
    t = Trainer(cfg, train, val, progress=False)
    t.init_from(cfg.init)
    assert t.G.cfg.noise_sigma == 3.0 and float(t._noise(torch.zeros(4, 1, 32, 32)).std()) == pytest.approx(3, rel=0.1)


def test_warm_start_takes_the_runs_sigma_of_z(tmp_path):
    G = _trained_baseline()
    new = add_noise_branch(G, 0.1, noise_sigma=3.0)
    assert new.cfg.noise_sigma == 3.0
    x = torch.rand(1, 1, 16, 16) * 255
    z1 = new.sample_noise(x, seed=5)
    assert float(z1.std()) == pytest.approx(3.0, rel=0.3)


def test_recipe_figure_draws_a_line_per_run_and_the_targets():
    import pandas as pd

    from otmlib.viz import recipe_figure

    t = pd.DataFrame({"run": ["a", "a", "b"], "step": [500, 1000, 500], "PSNR": [28.0, 27.5, 28.1],
                      "diversity / RMSE": [0.2, 0.3, 0.6], "textured / flat": [1.2, 1.5, 3.1]})
    fig = recipe_figure(t)
    div, tf, ps = fig.axes
    assert [ln.get_label() for ln in div.lines] == ["a", "b", "target"]
    assert list(div.lines[0].get_ydata()) == [0.2, 0.3] and list(tf.lines[1].get_ydata()) == [3.1]
    assert div.lines[2].get_ydata()[0] == 0.5 and tf.lines[2].get_ydata()[0] == 3.0 and len(ps.lines) == 2
