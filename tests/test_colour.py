"""Colour (issue 18): JFIF YCbCr, 4:2:0 training pairs, the chroma model's step and restoration, the colour
protocol (RGB metrics and colour shift), each against an independent reference or a hand case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from otmlib import jpeg
from otmlib.data import DataConfig, JpegPatchDataset, code_image
from otmlib.metrics import blocking_effect_factor, rgb_metrics
from otmlib.models import Generator, GeneratorConfig
from otmlib.train import TrainConfig, Trainer

CHROMA_GEN = GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)


def _rgb(seed: int = 0, shape=(48, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_jfif_matches_pillows_conversion_and_inverts():
    rgb = _rgb()
    ours = jpeg.rgb_to_jfif(rgb)
    pillow = np.asarray(Image.fromarray(rgb).convert("YCbCr")).astype(np.float64)
    assert np.abs(ours - pillow).max() <= 1.0  # Pillow converts in fixed point and truncates
    assert np.abs(ours - pillow).mean() < 0.6
    np.testing.assert_allclose(jpeg.jfif_to_rgb(ours), rgb, atol=1e-9)
    t = torch.from_numpy(rgb.astype(np.float64).transpose(2, 0, 1)[None])
    np.testing.assert_allclose(jpeg.rgb_to_jfif(t)[0].numpy().transpose(1, 2, 0), ours, atol=1e-9)
    np.testing.assert_allclose(jpeg.jfif_to_rgb(jpeg.rgb_to_jfif(t)).numpy(), t.numpy(), atol=1e-9)
    # MATLAB's studio-range YCbCr of the same RGB: Y and chroma through the exact linear maps
    m = jpeg.rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(jpeg.jfif_y_to_matlab(ours[..., 0]), m[..., 0], atol=1e-9)
    for c in (1, 2):  # MATLAB's coefficients are printed to 3 decimals
        np.testing.assert_allclose(jpeg.jfif_chroma_to_matlab(ours[..., c]), m[..., c], atol=2e-4)


def test_rgb_metrics_against_scikit_image_and_by_hand():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = _rgb(1)
    out = np.clip(ref.astype(int) + np.random.default_rng(2).integers(-9, 10, ref.shape), 0, 255).astype(np.uint8)
    m = rgb_metrics(ref, out)
    assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, out, data_range=255))
    ssim = structural_similarity(ref.astype(float), out.astype(float), data_range=255, channel_axis=2,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert m["ssim"] == pytest.approx(ssim)
    mse = np.mean((ref.astype(float) - out) ** 2)
    bef = np.mean([blocking_effect_factor(out[..., c].astype(float)) for c in range(3)])
    assert m["psnrb"] == pytest.approx(10 * math.log10(255**2 / (mse + bef)))
    assert rgb_metrics(ref, ref)["psnr"] == math.inf
    with pytest.raises(ValueError, match="H, W, 3"):
        rgb_metrics(ref[..., 0], out[..., 0])


def test_420_training_pairs_code_chroma_at_half_resolution(chelsea):
    im420 = code_image("c", chelsea, 10, True, "4:2:0")
    assert im420.gt.shape == (3, 300, 451) and np.array_equal(im420.gt, chelsea.transpose(2, 0, 1))
    np.testing.assert_array_equal(im420.qtable[1], jpeg.ijg_table(10, chroma=True))
    np.testing.assert_array_equal(im420.coded.transpose(1, 2, 0), jpeg.compress(chelsea, 10, "4:2:0").pixels)
    # the file those pixels came from says 4:2:0 (Pillow reads the layout from the file's own header)
    info = jpeg.read_jpeg_info(__import__("io").BytesIO(jpeg.encode(chelsea, 10, "4:2:0")))
    assert info.subsampling == "4:2:0" and info.components == 3
    with pytest.raises(ValueError, match="subsampling"):
        DataConfig(colour=True, subsampling="4:2:2")
    s = JpegPatchDataset([im420], DataConfig(patch=32, colour=True, subsampling="4:2:0"))[0]
    assert s["x"].shape == s["jpeg"].shape == (3, 32, 32)


def test_chroma_mode_needs_colour_data():
    with pytest.raises(ValueError, match="data.colour"):
        TrainConfig(mode="chroma")
    with pytest.raises(ValueError, match="for mode chroma"):  # RGB models and L_j assume 8x8 blocks everywhere
        TrainConfig(mode="baseline", data=DataConfig(colour=True, subsampling="4:2:0"))
    cfg = TrainConfig(mode="chroma", data=DataConfig(colour=True, subsampling="4:2:0"))
    assert cfg.gen.channels == 3 and not cfg.gen.noise


def test_chroma_step_learns_cb_cr_only_and_validates_on_rgb(chelsea, tmp_path):
    from skimage import data

    train = [code_image("a", data.astronaut()[:160, :160], 10, True, "4:2:0"),
             code_image("c", data.coffee()[:160, :160], 10, True, "4:2:0")]
    val = [code_image("v", chelsea[:96, :128], 10, True, "4:2:0")]
    cfg = TrainConfig(mode="chroma", gen=CHROMA_GEN, data=DataConfig(patch=32, colour=True, subsampling="4:2:0"),
                      batch_size=4, steps=2, bf16=False, log_every=1, val_every=2, lr=1e-3, out=str(tmp_path / "c"))
    t = Trainer(cfg, train, val, progress=False)
    t.fit(1)
    assert any("l2_chroma" in r for r in t.read_log())
    # the loss reaches the Cb and Cr outputs only: the deconvolution's Y filters get no gradient
    t.G.zero_grad()
    x = torch.rand(2, 3, 32, 32) * 255
    from otmlib.steps import chroma_step
    chroma_step(t, x, x.clone())
    g = t.G.deconv.weight.grad.abs().sum(dim=(0, 2, 3))  # (in, out=3, k, k) -> per output channel
    assert g[0] == 0 and g[1] > 0 and g[2] > 0
    t.fit(2)
    v = [r for r in t.read_log() if "val_psnr" in r][-1]
    assert abs(v["val_psnr"] - v["val_psnr_jpeg"]) < 1.0 and v["val_psnr_jpeg"] == pytest.approx(rgb_metrics(
        val[0].gt.transpose(1, 2, 0), val[0].coded.transpose(1, 2, 0))["psnr"])


def _identity_chroma() -> Generator:
    """A chroma G whose residual is zero (deconvolution zeroed): it returns its input, Cb/Cr as decoded."""
    import dataclasses

    G = Generator(dataclasses.replace(CHROMA_GEN, channels=3)).eval()
    with torch.no_grad():
        G.deconv.weight.zero_()
        G.deconv.bias.zero_()
    return G


def test_restore_chroma_with_a_zero_residual_keeps_the_decoded_colours(chelsea):
    from otmlib.restore import _with_luma, restore_chroma

    G = _identity_chroma()
    comp = jpeg.compress(chelsea, 10, "4:2:0")
    x = torch.from_numpy(jpeg.rgb_to_jfif(comp.pixels).astype(np.float32).transpose(2, 0, 1)[None])
    with torch.no_grad():
        assert torch.allclose(G(x), x, atol=1e-3), "the zeroed G is not the identity"
    cbcr = restore_chroma(G, comp.pixels)
    ycc = jpeg.rgb_to_jfif(comp.pixels)
    np.testing.assert_allclose(cbcr[0], ycc[..., 1], atol=2e-3)
    out = _with_luma(comp.pixels, None, cbcr=cbcr)
    assert np.abs(out.astype(int) - comp.pixels).max() <= 1
    with pytest.raises(ValueError, match="colour"):
        restore_chroma(Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)), comp.pixels)


def test_colour_protocol_scores_the_jpeg_and_measures_colour_shift(chelsea, tmp_path):
    from otmlib.evaluate import evaluate_colour, score_colour_image

    Image.fromarray(chelsea).save(tmp_path / "c.png")
    Image.fromarray(chelsea[:, :, 0]).save(tmp_path / "g.png")  # grey: scored as R = G = B
    rep = evaluate_colour(tmp_path, 10, progress=False)
    assert rep.n == 2 and rep.protocol == "colour"
    comp = jpeg.compress(chelsea, 10, "4:2:0")
    assert rep.scores[0].psnr == pytest.approx(rgb_metrics(chelsea, comp.pixels)["psnr"])
    a, b = jpeg.rgb_to_jfif(comp.pixels), jpeg.rgb_to_jfif(chelsea)
    assert rep.scores[0].colour_shift == pytest.approx(max(abs(a[..., c].mean() - b[..., c].mean()) for c in (1, 2)))
    s = rep.summary()
    assert s["colour_shift_max"] >= s["colour_shift_mean"] > 0
    # a restorer that answers the original with Cr raised by 3 levels, on a photo kept away from 0 and 255 (no
    # clipping): in RGB that is R +1.402 * 3 = 4.21 and G -0.714 * 3 = -2.14, which rounding to 8 bits makes
    # exactly +4 and -2 at every pixel, so the shift measured is 0.5 * 4 + 0.418688 * 2 = 2.8374 levels of Cr
    muted = (chelsea // 2 + 64).astype(np.uint8)
    def redder(rgb):
        ycc = jpeg.rgb_to_jfif(muted)
        ycc[..., 2] += 3
        return jpeg.to_uint8(jpeg.jfif_to_rgb(ycc))
    assert score_colour_image(muted, 10, redder)["colour_shift"] == pytest.approx(0.5 * 4 + 0.418688 * 2, abs=1e-4)


def test_cli_colour_evaluation_and_chroma_checks(chelsea, tmp_path, capsys):
    from otmlib.cli import main

    Image.fromarray(chelsea).save(tmp_path / "c.png")
    assert main(["evaluate", "--colour", "--data", str(tmp_path), "-q", "10", "--no-progress"]) == 0
    assert "colour: RGB, 4:2:0" in capsys.readouterr().out
    assert main(["evaluate", "--chroma", "x", "--data", str(tmp_path), "-q", "10"]) == 2
    assert "--colour" in capsys.readouterr().err
    assert main(["evaluate", "--colour", "--chroma", "baseline-q10", "--data", str(tmp_path), "-q", "10",
                 "--no-progress"]) == 2
    assert "not a chroma model" in capsys.readouterr().err


def _coded_file(img, quality, tmp_path, subsampling="4:2:0"):
    p = tmp_path / f"c{quality}-{subsampling.replace(':', '')}.jpg"
    p.write_bytes(jpeg.encode(img, quality, subsampling))
    return p


@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4"])
def test_a_decoded_colour_jpeg_lies_in_its_own_intervals_in_all_three_channels(chelsea, tmp_path, subsampling):
    """Read with jpeglib: each channel against its own table at its own resolution (chroma on the subsampled
    plane, 2x2 means for 4:2:0). At Q10 every coefficient of chelsea (no RGB clipping) is inside, to 1e-6: the
    rounding of the decoder's RGB moves a coefficient far less than Q/2. (At Q90 about 0.3% fall outside by up
    to 1.4 Q: there the intervals are narrower than what 8-bit RGB rounding and upsampling move.)"""
    from otmlib.restore import Consistency

    path = _coded_file(chelsea, 10, tmp_path, subsampling)
    cons = Consistency.from_file(path)
    assert cons.chroma_factor == (2 if subsampling == "4:2:0" else 1)
    ycc = torch.from_numpy(jpeg.rgb_to_jfif(jpeg.decode(path.read_bytes())).transpose(2, 0, 1).copy())[None]
    assert float(jpeg.interval_excess(ycc[:, :1], cons.k, cons.qtable).max()) < 1e-6
    for c, k in zip((1, 2), cons.kc):
        plane = jpeg.chroma_means(ycc[:, c:c + 1], cons.chroma_factor)
        assert k.shape[2:4] == (plane.shape[-2] // 8, plane.shape[-1] // 8)
        assert float(jpeg.interval_excess(plane, k, cons.cqtable).max()) < 1e-6


def test_chroma_projection_moves_each_cell_by_a_constant_into_the_intervals(chelsea, tmp_path):
    from otmlib.restore import Consistency

    cons = Consistency.from_file(_coded_file(chelsea, 10, tmp_path))
    ycc = jpeg.rgb_to_jfif(chelsea)  # the original: inside by definition, but give it a colour cast of +12 Cb
    cbcr = np.stack([ycc[..., 1] + 12, ycc[..., 2]]).astype(np.float32)  # as restore_chroma gives them
    out = cons.project_chroma(cbcr)
    for c in range(2):
        plane = jpeg.chroma_means(torch.from_numpy(out[c])[None, None], 2)
        k = cons.kc[c]
        assert float(jpeg.interval_excess(plane, k, cons.cqtable).max()) < 1e-3  # float32: 1e-5 levels of rounding
        d = out[c] - cbcr[c]
        h, w = (k.shape[2] * 16, k.shape[3] * 16)
        cells = d[:h, :w].reshape(h // 2, 2, w // 2, 2)
        assert np.allclose(cells, cells[:, :1, :, :1], rtol=0, atol=1e-4)  # one correction per 2x2 cell
        assert np.all(d[h:] == 0) and np.all(d[:, w:] == 0)  # partial edge blocks untouched
    assert np.abs(out[0] - cbcr[0]).mean() > 5  # the cast is mostly taken back
    np.testing.assert_allclose(cons.project_chroma(out), out, rtol=0, atol=1e-4)  # a projection: idempotent


def test_restoring_a_colour_file_with_a_chroma_model_projects_its_chroma(chelsea, tmp_path):
    from otmlib.restore import Consistency, restore_file

    path = _coded_file(chelsea, 10, tmp_path)
    G = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)).eval()
    C = _identity_chroma()
    with torch.no_grad():
        C.deconv.bias[1] = 20 / 127.5  # a chroma model that adds 20 levels of Cb everywhere
    raw, _ = restore_file(G, path, consistent=False, chroma=C)
    proj, _ = restore_file(G, path, consistent=True, chroma=C)
    cons = Consistency.from_file(path)
    def excess(rgb):
        cb = torch.from_numpy(jpeg.rgb_to_jfif(rgb)[..., 1])[None, None]
        return float(jpeg.interval_excess(jpeg.chroma_means(cb, 2), cons.kc[0], cons.cqtable).mean())
    assert excess(raw.candidates[0]) > 1 and excess(proj.candidates[0]) < 0.05


def test_export_scores_a_chroma_model_on_the_colour_protocol_and_its_card_shows_it(chelsea, tmp_path, capsys):
    from otmlib.cards import render_card
    from otmlib.cli import main
    from otmlib.zoo import read_release

    train = [code_image("c", chelsea[:128, :128], 10, True, "4:2:0")]
    cfg = TrainConfig(mode="chroma", gen=CHROMA_GEN, data=DataConfig(patch=32, colour=True, subsampling="4:2:0"),
                      batch_size=2, steps=2, bf16=False, out=str(tmp_path / "run"))
    t = Trainer(cfg, train, progress=False)
    t.fit()
    t.save()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(chelsea).save(imgs / "c.png")
    out = tmp_path / "chroma.safetensors"
    assert main(["export", str(t.ckpt_path), "-o", str(out), "--evaluate", str(imgs)]) == 0
    info = read_release(out)
    assert info.mode == "chroma"
    rows = [s for s in info.scores.values() if s.get("protocol") == "colour"]
    assert [(s["luma"], s["chroma"]) for s in rows] == [("baseline-q10", "this"), ("jpeg", "this"), ("baseline-q10", "none")]
    assert all(s["n"] == 1 for s in rows)
    jpeg_psnr = rgb_metrics(chelsea, jpeg.compress(chelsea, 10, "4:2:0").pixels)["psnr"]
    assert all(s["psnr_jpeg"] == pytest.approx(jpeg_psnr, abs=1e-4) for s in rows)
    card = render_card("chroma-test", out)
    assert card.count("colour protocol: RGB, 4:2:0") == 3 and card.count("--chroma chroma-test") == 2


def test_a_chroma_model_restores_420_files_and_leaves_444_ones_with_a_note(chelsea, tmp_path, capsys):
    from otmlib.cli import main
    from otmlib.restore import restore_file
    from otmlib.zoo import export_generator

    G = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)).eval()
    C = _identity_chroma()
    with torch.no_grad():
        C.deconv.bias[1] = 20 / 127.5  # +20 levels of Cb: easy to see whether it was applied
    f420, f444 = _coded_file(chelsea, 10, tmp_path, "4:2:0"), _coded_file(chelsea, 10, tmp_path, "4:4:4")
    def cb_gain(res, path):
        out, dec = res.candidates[0], jpeg.decode(path.read_bytes())
        return float(jpeg.rgb_to_jfif(out)[..., 1].mean() - jpeg.rgb_to_jfif(dec)[..., 1].mean())
    r420, n420 = restore_file(G, f420, consistent=False, chroma=C)
    r444, n444 = restore_file(G, f444, consistent=False, chroma=C)
    assert cb_gain(r420, f420) > 10 and "chroma_kept" not in n420
    assert abs(cb_gain(r444, f444)) < 0.5 and n444["chroma_kept"] == "a 4:4:4 file"
    # far from the chroma model's quality (Q10's model harms Q60 and Q90 files): kept too
    f90 = _coded_file(chelsea, 90, tmp_path, "4:2:0")
    r90, n90 = restore_file(G, f90, consistent=False, chroma=C, chroma_quality=10)
    assert abs(cb_gain(r90, f90)) < 0.5 and "chroma model's is 10" in n90["chroma_kept"]
    assert "chroma_kept" not in restore_file(G, f420, consistent=False, chroma=C, chroma_quality=10)[1]
    # the command says so, once
    ck = {"G": C.state_dict(), "step": 1, "wall": 1.0, "config": TrainConfig(
        mode="chroma", gen=CHROMA_GEN, data=DataConfig(colour=True, subsampling="4:2:0")).to_dict()}
    cfile = export_generator(ck, tmp_path / "c.safetensors", data_description="", data_sha256="")
    assert main(["restore", str(f444), "-o", str(tmp_path / "o"), "--model", "baseline-q10",
                 "--chroma", str(cfile)]) == 0
    with pytest.raises(ValueError, match="not a chroma model"):  # a 3-channel RGB baseline is not one
        from otmlib.zoo import load_chroma_model
        rgb_ck = dict(ck, config=TrainConfig(mode="baseline", gen=CHROMA_GEN, data=DataConfig(colour=True)).to_dict())
        load_chroma_model(export_generator(rgb_ck, tmp_path / "rgb.safetensors", data_description="", data_sha256=""))
    assert capsys.readouterr().err.count("chroma is kept as decoded") == 1
