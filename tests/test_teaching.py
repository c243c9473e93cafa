"""Tests of otmlib.teaching, the notebooks' helpers, against hand computations and independent code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.fft import dctn

from otmlib import datasets, jpeg, teaching
from otmlib.data import DataConfig, JpegPatchDataset, code_image
from otmlib.evaluate import score_image
from otmlib.models import Generator, GeneratorConfig
from otmlib.restore import gradient_energy

# ITU T.81 Fig. A.6: position k of the zig-zag scan -> natural (row-major) index
T81_ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
]


# ------------------------------------------------------------------ data


@pytest.fixture
def no_bsds(monkeypatch, tmp_path):
    """Nothing to find: no OTM_DATA, empty ../shared and cache."""
    monkeypatch.delenv("OTM_DATA", raising=False)
    monkeypatch.setattr(datasets, "_REPO_SHARED", tmp_path / "shared")
    monkeypatch.setattr(datasets, "CACHE", tmp_path / "cache")


def test_find_data_falls_back_to_samples_and_says_so(no_bsds, capsys):
    src = teaching.find_data()
    assert src.is_samples
    assert "falling back" in capsys.readouterr().out


def test_find_data_offline_download_goes_on(no_bsds, monkeypatch, capsys):
    def offline(*a, **k):
        raise ConnectionError("could not download BSDS500 (test)")

    monkeypatch.setattr(teaching, "download_bsds500", offline)
    src = teaching.find_data(download=True)
    out = capsys.readouterr().out
    assert src.is_samples and "download failed" in out and "could not download" in out


def test_find_data_explicit_folder_and_missing_folder(tmp_path, capsys):
    assert teaching.find_data(str(tmp_path)).kind == "explicit"
    with pytest.raises(FileNotFoundError):
        teaching.find_data(str(tmp_path / "nope"))


def test_evaluation_and_training_images_from_a_plain_folder(tmp_path, camera, chelsea):
    Image.fromarray(camera[:80, :96]).save(tmp_path / "a.png")
    Image.fromarray(chelsea[:72, :88]).save(tmp_path / "b.png")
    Image.fromarray(camera[100:180, :96]).save(tmp_path / "c.png")
    src = datasets.resolve_bsds500(tmp_path)
    ims = teaching.evaluation_images(src, n=2)
    assert list(ims) == ["a", "b"]
    assert ims["a"].dtype == np.uint8 and ims["a"].shape == (80, 96)
    np.testing.assert_array_equal(ims["b"], jpeg.luminance(chelsea[:72, :88]))
    train, val, desc = teaching.training_images(src, quality=10, patch=32, val_holdout=1)
    assert [im.name for im in val] == ["a.png"] and [im.name for im in train] == ["b.png", "c.png"]
    assert train[0].gt.shape == (1, 72, 88) and "Q10" in desc


def test_sample_fallback_images(no_bsds):
    src = teaching.find_data()
    ims = teaching.evaluation_images(src, n=3)
    assert len(ims) == 3 and all(a.ndim == 2 and a.dtype == np.uint8 for a in ims.values())
    train, val, desc = teaching.training_images(src, quality=10, patch=32, max_images=4)
    assert len(train) == 4 and len(val) == 2 and "sample" in desc


# ------------------------------------------------------------------ 01


def test_zigzag_is_the_t81_scan():
    zz = teaching.zigzag()
    assert [int(r * 8 + c) for r, c in zz] == T81_ZIGZAG


def test_block_view_against_scipy_dct(camera):
    y = camera[:64, :64]
    comp = jpeg.compress(y, 10)
    v = teaching.block_view(y, comp.pixels, comp.luma_table, 3, 5)
    block = y[24:32, 40:48].astype(np.float64) - 128
    np.testing.assert_allclose(v.c_original, dctn(block, norm="ortho"), atol=1e-9)
    q = comp.luma_table
    np.testing.assert_allclose(v.c_jpeg, q * v.k)
    np.testing.assert_allclose(v.upper - v.lower, q)
    # the JPEG's own coefficients are within Q/2 of Q k; the original lies inside (eq. 5)
    c_dec = dctn(comp.pixels[24:32, 40:48].astype(np.float64) - 128, norm="ortho")
    assert np.all(np.abs(c_dec - v.c_jpeg) < q / 2)
    assert v.inside().all()
    np.testing.assert_array_equal(v.original, y[24:32, 40:48])


def test_block_coefficients_against_scipy():
    blocks = np.random.default_rng(2).integers(0, 256, (3, 8, 8))
    got = teaching.block_coefficients(blocks)
    for b, c in zip(blocks, got):
        np.testing.assert_allclose(c, dctn(b - 128.0, norm="ortho"), atol=1e-9)
    with pytest.raises(ValueError):
        teaching.block_coefficients(np.zeros((2, 4, 4)))


def test_most_detailed_block_finds_the_textured_one():
    img = np.full((32, 48), 120, np.uint8)
    rng = np.random.default_rng(0)
    img[16:24, 8:16] = rng.integers(0, 256, (8, 8))
    comp = jpeg.compress(img, 50)
    assert teaching.most_detailed_block(comp.pixels, comp.luma_table) == (2, 1)


def test_zero_share_by_hand():
    q = jpeg.ijg_table(10)
    flat_mid = np.full((16, 24), 128, np.uint8)  # every coefficient is 0
    np.testing.assert_array_equal(teaching.zero_share(flat_mid, q), np.ones((8, 8)))
    flat_bright = np.full((16, 24), 228, np.uint8)  # DC = 8 * 100 = 800, Q_00 = 80: k = 10
    share = teaching.zero_share(flat_bright, q)
    assert share[0, 0] == 0 and share.sum() == 63


def test_patch_report_aligned_inside_misaligned_not(camera):
    ds = JpegPatchDataset([code_image("camera", camera, 10, False)], DataConfig(patch=32, seed=3))
    rep = teaching.patch_report(ds, 24)
    al, mis = rep[rep.aligned], rep[~rep.aligned]
    assert len(al) > 3 and len(mis) > 3
    # aligned: inside up to the coder's integer DCT and the decoder's clipping of saturated pixels
    assert al.jpeg_loss.max() < 0.1 and al.inside.min() > 0.99 and al.jpeg_loss.median() < 1e-4
    # misaligned: the blocks are not the coder's; only a flat patch happens to fit
    assert mis.jpeg_loss.median() > 1 and mis.jpeg_loss.mean() > 100 * al.jpeg_loss.mean()
    assert mis.inside.mean() < al.inside.mean()


# ------------------------------------------------------------------ 02


def test_same_jpeg_blocks_really_share_their_jpeg(camera, chelsea):
    imgs = [camera[:200, :200], jpeg.luminance(chelsea)]
    s = teaching.same_jpeg_blocks(imgs, 10, min_nonzero=2)
    n = len(s.originals)
    assert n >= 5 and (s.k != 0).sum() >= 2 and s.searched == 25 * 25 + 37 * 56
    for b in s.originals[:: max(1, n // 8)]:  # independently: code each block as its own 8x8 image
        alone = jpeg.compress(b, 10)
        np.testing.assert_array_equal(alone.pixels, s.decoded)
        k = jpeg.quantised_indices(torch.tensor(alone.pixels, dtype=torch.float64)[None, None], s.q)
        np.testing.assert_array_equal(k[0, 0, 0, 0].numpy(), s.k)
    assert len({b.tobytes() for b in s.originals}) > 1  # different originals
    # Jensen: the mean is never rougher than the average original
    assert gradient_energy(s.mean) <= np.mean([gradient_energy(b) for b in s.originals]) + 1e-12
    # and it minimises the mean squared error over the originals
    o = s.originals.astype(np.float64)
    mse = lambda c: np.mean((o - c) ** 2)  # noqa: E731
    assert mse(s.mean) <= min(mse(b) for b in o)


def test_same_jpeg_blocks_falls_back_to_any_group():
    s = teaching.same_jpeg_blocks([np.full((16, 16), 128, np.uint8)], 10, min_nonzero=3)
    assert len(s.originals) == 4 and not s.k.any()


def test_loss_plot_records_and_draws():
    lp = teaching.LossPlot(("l2", "lp"), live=False)
    for s in (1, 2, 3):
        lp.on_log(None, {"step": s, "l2": 10.0 / s})
    assert lp.series("l2") == ([1, 2, 3], [10.0, 5.0, 10 / 3])
    fig = lp.figure()
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"


def test_generator_restorer_and_score_table(camera):
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False, out_init_gain=0.0))
    ident = teaching.generator_restorer(G)  # zero last layer + residual: G(x') = x'
    assert not G.training
    imgs = {"a": camera[:64, :80], "b": camera[200:264, 100:196]}
    df = teaching.score_table(imgs, 10, {"jpeg": lambda d, q: d, "G": ident})
    assert len(df) == 4 and set(df.method) == {"jpeg", "G"}
    for name, y in imgs.items():
        ref = score_image(y, 10, lambda d, q: d)
        for method in ("jpeg", "G"):
            row = df[(df.image == name) & (df.method == method)].iloc[0]
            assert row.psnr == pytest.approx(ref["psnr"]) and row.psnrb == pytest.approx(ref["psnrb"])


# ------------------------------------------------------------------ 04


def test_deconv_constant_1d_is_the_papers_example():
    w = np.array([1.0, 2.0, 3.0, 4.0])
    out = teaching.deconv_constant(w, c=2.0)
    np.testing.assert_allclose(out[0::2], 2 * (1 + 3))  # c (w1 + w3)
    np.testing.assert_allclose(out[1::2], 2 * (2 + 4))  # c (w2 + w4)
    np.testing.assert_allclose(teaching.deconv_constant(w, c=2.0, shift_and_average=True), 2 * 10 / 2)


def test_deconv_constant_2d_random_weights():
    w = np.random.default_rng(1).normal(size=(4, 4))
    plain = teaching.deconv_constant(w, c=3.0, n=6)
    assert plain.std() > 0.1
    np.testing.assert_allclose(plain[2:, :], plain[:-2, :], atol=1e-12)  # period 2 in each axis
    np.testing.assert_allclose(plain[:, 2:], plain[:, :-2], atol=1e-12)
    # each of the 4 output phases sums the taps of one phase of the filter
    phases = sorted(3.0 * w[a::2, b::2].sum() for a in range(2) for b in range(2))
    assert sorted(np.unique(plain.round(9))) == pytest.approx(phases)
    fixed = teaching.deconv_constant(w, c=3.0, n=6, shift_and_average=True)
    np.testing.assert_allclose(fixed, 3.0 * w.sum() / 4, atol=1e-12)


def test_grid_strength_by_hand(camera):
    cb = (np.indices((32, 40)).sum(axis=0) % 2) * 2 - 1
    assert teaching.grid_strength(100 + 7.0 * cb) == pytest.approx(7.0)
    stripes = np.where(np.arange(40) % 2, 5.0, -5.0)[None].repeat(32, 0)
    assert teaching.grid_strength(stripes + 50) == pytest.approx(5.0)
    assert teaching.grid_strength(np.full((9, 9), 3.0)) == 0
    assert teaching.grid_strength(camera) < 0.5  # natural content averages out over the phases


def test_candidate_stats(camera):
    y = camera[100:228, 100:228]
    comp = jpeg.compress(y, 10)
    same = teaching.candidate_stats(comp.pixels, y, comp.pixels, comp.luma_table)
    assert same["shift"] == 0 and same["contrast"] == pytest.approx(1.0) and same["inside"] > 0.99
    assert same["lj"] < 1e-3
    assert same["psnr"] == pytest.approx(score_image(y, 10, lambda d, q: d)["psnr"])
    brighter = np.clip(comp.pixels.astype(int) + 10, 0, 255).astype(np.uint8)
    moved = teaching.candidate_stats(brighter, y, comp.pixels, comp.luma_table)
    clipped = (comp.pixels > 245).mean()
    assert moved["shift"] == pytest.approx(10, abs=10 * clipped + 1e-9)
    assert moved["inside"] < same["inside"] and moved["lj"] > 1


def test_textured_box_finds_the_texture():
    img = np.full((96, 128), 100.0)
    img[40:56, 72:88] = np.random.default_rng(0).integers(0, 256, (16, 16))
    top, left, size = teaching.textured_box(img, 24)
    assert size == 24 and top % 8 == 0 and left % 8 == 0
    assert top <= 40 and top + size >= 56 and left <= 72 and left + size >= 88
    assert teaching.textured_box(img, 500) == (0, 0, 96)


@pytest.mark.slow
def test_train_small_variants(camera, chelsea):
    train = [code_image("camera", camera, 10, False), code_image("chelsea", chelsea, 10, False)]
    tr = teaching.train_small(train, steps=4, batch_size=2, width=8, d_width=8, l2=0.1, d_start=0.5)
    assert tr.step == 4 and not tr.G.training
    assert tr.D.features[0].out_channels == 8
    recs = [r for r in tr.read_log() if "lp" in r]
    assert "ln" not in recs[0] and "ln" in recs[-1]  # D joins after the first half
    lp_only = teaching.train_small(train, steps=3, batch_size=2, width=8, l2=0.0, l3=0.0,
                                   shift_and_average=False)
    assert lp_only.cfg.gen.shift_and_average is False
    assert all("d" not in r for r in lp_only.read_log())
    base = teaching.train_small(train, mode="baseline", steps=2, batch_size=2, width=8)
    assert base.D is None and any("l2" in r for r in base.read_log())
    folder = base.out
    assert (folder / "log.jsonl").exists() and not (folder / "last.pt").exists()
    del base
    import gc

    gc.collect()
    assert not folder.exists(), "the default output folder goes with the trainer"


@pytest.mark.slow
def test_ablation_runs_cache_and_measure(camera, chelsea):
    train = [code_image("camera", camera, 10, False), code_image("chelsea", chelsea, 10, False)]
    images = {"cam": camera[:64, :96], "cat": jpeg.luminance(chelsea)[:80, :64]}
    runs = teaching.AblationRuns(train, [], images, quality=10, steps=2, batch_size=2, width=8)
    a = runs.get(0.0, 0.0)
    assert runs.get(0, 0, True) is a  # cached, whatever the number types
    outs = runs.outputs(0.0, 0.0)
    assert set(outs) == {"cam", "cat"} and outs["cam"].shape == (64, 96) and outs["cam"].dtype == np.uint8
    df = runs.table({"Lp": (0.0, 0.0), "Lp, no S&A": (0.0, 0.0, False)})
    assert list(df.index) == ["Lp", "Lp, no S&A"] and not df.loc["Lp, no S&A", "shift_and_average"]
    expect = np.mean([teaching.candidate_stats(outs[n], images[n], c.pixels, c.luma_table)["psnr"]
                      for n, c in runs.coded.items()])
    assert df.loc["Lp", "psnr"] == pytest.approx(expect)
    assert runs.jpeg_stats()["shift"] == 0 and runs.jpeg_stats()["inside"] > 0.99


def test_choose_weight_by_hand():
    t = pd.DataFrame({"l3": [0.0, 0.01, 0.1, 1.0], "inside": [0.90, 0.985, 0.99, 0.995]})
    assert teaching.choose_weight(t, "l3", "inside", tol=0.01) == 0.01
    assert teaching.choose_weight(t, "l3", "inside", tol=0.001) == 1.0
    t.loc[3, "inside"] = np.nan
    assert teaching.choose_weight(t, "l3", "inside", tol=0.0) == 0.1
