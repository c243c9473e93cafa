"""One model for every JPEG (issue 19): coding with any table, per-patch coding, table conditioning, strength."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from otmlib import jpeg
from otmlib.data import DataConfig, JpegPatchDataset, VAL_QUALITIES, coded_versions, random_table, validation_versions
from otmlib.models import Generator, GeneratorConfig, PreActResidualUnit, add_table_conditioning, table_features


@pytest.mark.parametrize("q", [5, 50, 95])
def test_encode_with_table_decodes_like_the_ijg_quality(camera, q):
    a = jpeg.decode(jpeg.encode_with_table(camera, jpeg.ijg_table(q)))
    assert np.array_equal(a, jpeg.compress(camera, q).pixels)
    # the file carries the table it was given (natural order), also one no IJG quality writes
    t = jpeg.ijg_table(q).copy()
    t[0, 1], t[7, 7] = 3, 200
    with __import__("PIL.Image").Image.open(__import__("io").BytesIO(jpeg.encode_with_table(camera, t))) as im:
        assert np.array_equal(jpeg._info_from_image(im, "x").luma_table, t)


def test_encode_with_table_refuses_bad_tables(camera):
    for bad in (np.zeros((8, 8), int), np.full((8, 8), 256), np.ones((4, 4), int)):
        with pytest.raises(ValueError, match="8x8 steps in 1..255"):
            jpeg.encode_with_table(camera, bad)


def test_a_patch_coded_alone_has_the_whole_images_blocks(camera):
    """Every patch (on and off the 8x8 grid, at the image's edges too) equals the same crop of the whole image
    coded with the patch's table: the crop is found by matching the ground truth, not by re-deriving the RNG."""
    from numpy.lib.stride_tricks import sliding_window_view

    y = np.ascontiguousarray(camera[:120, :104])  # small: the brute-force search below stays cheap
    cfg = DataConfig(patch=32, qualities=(5, 95), table_jitter=0.5, aligned_fraction=0.3, augment=False)
    ds = JpegPatchDataset(coded_versions("cam", y, cfg), cfg)
    windows = sliding_window_view(y.astype(np.float32), (32, 32))
    seen_off_grid = 0
    for i in range(30):
        b = ds[i]
        x, q = b["x"][0].numpy(), b["q"][0].numpy().astype(np.int64)
        hits = np.argwhere((windows == x).all(axis=(2, 3)))
        assert len(hits) == 1
        top, left = hits[0]
        seen_off_grid += bool(top % 8 or left % 8)
        whole = jpeg.decode(jpeg.encode_with_table(y, q)).astype(np.float32)
        assert np.array_equal(b["jpeg"][0].numpy(), whole[top:top + 32, left:left + 32]), (i, top, left)
    assert seen_off_grid > 5


def test_random_table_draws_log_uniform_qualities_and_valid_tables():
    rng = np.random.default_rng(0)
    draws = [random_table(rng, (5, 95), 0.0) for _ in range(4000)]
    qs = np.array([q for _, q in draws])
    assert qs.min() >= 5 and qs.max() <= 95
    assert all(np.array_equal(t, jpeg.ijg_table(q)) for t, q in draws[:200])  # jitter 0: the IJG tables
    # log-uniform: P(q <= 10) = log(10.5 / 5) / log(95.5 / 5) with the rounding, about 0.25
    expected = math.log(10.5 / 5) / math.log(95.5 / 5)
    assert abs((qs <= 10).mean() - expected) < 0.03
    jittered = [random_table(rng, (5, 95), 1.0) for _ in range(200)]
    assert all(t.min() >= 1 and t.max() <= 255 and t.dtype == np.int64 for t, _ in jittered)
    assert np.mean([not np.array_equal(t, jpeg.ijg_table(q)) for t, q in jittered]) > 0.95


def test_quality_laws_share_the_patches_as_documented():
    """"scale": log-uniform in libjpeg's table scale (5000/Q below 50, 200 - 2Q above), so Q5-10 and Q90-95 get
    the same share, log(1000/476.2)/log(100) = log(21/10)/log(100) = 0.161 with the rounding to whole qualities;
    "mixed": half the patches each way."""
    from otmlib.data import ijg_scale, quality_of_scale

    assert ijg_scale(10) == 500 and ijg_scale(95) == 10 and ijg_scale(50) == 100
    assert all(abs(quality_of_scale(ijg_scale(q)) - q) < 1e-9 for q in (5, 37, 50, 80, 95))
    rng = np.random.default_rng(1)
    qs = np.array([random_table(rng, (5, 95), 0.0, "scale")[1] for _ in range(6000)])
    share = math.log(21 / 10) / math.log(100)
    assert qs.min() >= 5 and qs.max() <= 95
    assert abs((qs >= 90).mean() - share) < 0.02 and abs((qs <= 10).mean() - share) < 0.02
    qm = np.array([random_table(rng, (5, 95), 0.0, "mixed")[1] for _ in range(6000)])
    log_q = math.log(95.5 / 89.5) / math.log(95.5 / 5)  # the "quality" law's share of Q90-95
    assert abs((qm >= 90).mean() - (share + log_q) / 2) < 0.02
    with pytest.raises(ValueError, match="quality_law"):
        DataConfig(qualities=(5, 95), quality_law="uniform")


def test_validation_codes_every_held_out_image_at_every_quality(camera):
    cfg = DataConfig(patch=32, qualities=(5, 95))
    held = coded_versions("cam", camera[:64, :64], cfg)
    assert held[0].coded is None  # coded patch by patch in training
    val = validation_versions(held, cfg)
    assert [v.quality for v in val] == list(VAL_QUALITIES)
    for v in val:
        assert np.array_equal(v.coded[0], jpeg.compress(camera[:64, :64], v.quality).pixels)
        assert np.array_equal(v.qtable[0], jpeg.ijg_table(v.quality))


def test_table_features_are_log_steps():
    q = torch.tensor(jpeg.ijg_table(50), dtype=torch.float32)
    f = table_features(q[None])
    assert f.shape == (1, 64)
    assert torch.allclose(f[0], torch.log(q.flatten()) / math.log(16) - 1)
    assert float(table_features(torch.full((1, 8, 8), 16.0)).abs().max()) == 0.0
    with pytest.raises(ValueError, match="64 steps"):
        table_features(torch.ones(1, 7, 8))


def test_film_scales_and_shifts_a_units_residual():
    torch.manual_seed(0)
    unit = PreActResidualUnit(4).eval()
    x = torch.randn(2, 4, 5, 5)
    film = torch.randn(2, 2, 4)
    by_hand = x + unit.body(x) * (1 + film[:, 0, :, None, None]) + film[:, 1, :, None, None]
    assert torch.allclose(unit(x, film), by_hand)
    assert torch.equal(unit(x, torch.zeros(2, 2, 4)), unit(x))


def test_table_conditioning_starts_as_the_parent_and_then_reads_the_table():
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=2, noise=False)).eval()
    H = add_table_conditioning(G).eval()
    x = torch.rand(2, 1, 40, 48) * 255
    for q in (5, 50, 95):
        assert torch.equal(H(x, qtable=torch.tensor(jpeg.ijg_table(q), dtype=torch.float32)), G(x))
    with pytest.raises(ValueError, match="pass qtable"):
        H(x)
    with pytest.raises(ValueError, match="already reads"):
        add_table_conditioning(H)
    assert torch.equal(G(x, qtable=torch.ones(8, 8)), G(x))  # a G without it ignores the table
    with torch.no_grad():
        H.table_film.mlp[-1].weight.normal_(0, 0.1)
    t5, t95 = (torch.tensor(jpeg.ijg_table(q), dtype=torch.float32) for q in (5, 95))
    assert not torch.allclose(H(x, qtable=t5), H(x, qtable=t95))
    both = H(x, qtable=torch.stack([t5, t95]))  # one table per image
    assert torch.allclose(both[0], H(x[:1], qtable=t5)[0], atol=1e-4)
    assert torch.allclose(both[1], H(x[1:], qtable=t95)[0], atol=1e-4)


def test_init_from_a_baseline_adds_the_conditioning(tmp_path, camera):
    from otmlib.data import code_image
    from otmlib.train import TrainConfig, Trainer

    gen = GeneratorConfig(width=8, branch_units=1, agg_units=1)
    imgs = [code_image("camera", camera, 10, False)]
    parent = Trainer(TrainConfig(mode="baseline", gen=gen, data=DataConfig(patch=32), batch_size=2, steps=2,
                                 out=str(tmp_path / "a"), bf16=False, log_every=1, val_every=10**9), imgs,
                     progress=False)
    parent.fit()
    any_cfg = TrainConfig(mode="baseline", gen=GeneratorConfig(width=8, branch_units=1, agg_units=1, table_cond=True),
                          data=DataConfig(patch=32, qualities=(5, 95)), batch_size=2, steps=2, bf16=False,
                          out=str(tmp_path / "b"), log_every=1, val_every=10**9)
    t = Trainer(any_cfg, coded_versions("camera", camera, any_cfg.data), progress=False)
    entry = t.init_from(tmp_path / "a" / "last.pt")
    assert entry["added_table_conditioning"] is True
    x = torch.rand(1, 1, 32, 32) * 255
    parent.G.eval(), t.G.eval()
    assert torch.equal(t.G(x, qtable=torch.full((8, 8), 7.0)), parent.G(x))
    t.fit()  # trains on per-patch tables
    assert t.step == 2


def test_restore_file_gives_the_model_the_files_table_times_strength(tmp_path, camera, chelsea, monkeypatch):
    from otmlib import restore

    G = add_table_conditioning(Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False))).eval()
    seen = []
    real = restore.restore_luma

    def spy(G_, y, seeds=None, **kw):
        seen.append(np.asarray(kw["qtable"], dtype=np.float64))
        return real(G_, y, seeds, **kw)

    monkeypatch.setattr(restore, "restore_luma", spy)
    t = jpeg.ijg_table(30).copy()
    t[2, 3] = 77  # a table no IJG quality writes
    grey = tmp_path / "g.jpg"
    grey.write_bytes(jpeg.encode_with_table(camera[:64, :64], t))
    restore.restore_file(G, grey)
    restore.restore_file(G, grey, strength=2.0)
    assert np.array_equal(seen[0], t) and np.array_equal(seen[1], 2 * t)
    colour = tmp_path / "c.jpg"
    colour.write_bytes(jpeg.encode(chelsea[:64, :64], 30))
    restore.restore_file(G, colour)  # the colour path restores MATLAB-range Y: steps in its units
    assert np.allclose(seen[2], jpeg.ijg_table(30) * 219 / 255)
    png = tmp_path / "p.png"
    __import__("PIL.Image").Image.fromarray(camera[:64, :64]).save(png)
    restore.restore_file(G, png, quality=20)
    assert np.array_equal(seen[3], jpeg.ijg_table(20))
    with pytest.raises(ValueError, match="strength must be positive"):
        restore.restore_file(G, grey, strength=0)


def test_quality_sweep_scores_each_method_where_it_applies(tmp_path, camera):
    from PIL import Image

    from otmlib.evaluate import _identity, evaluate, quality_sweep

    for i, crop in enumerate([camera[:96, :128], camera[200:296, 100:228]]):
        Image.fromarray(crop).save(tmp_path / f"{i}.png")
    calls = []

    def spy(decoded, table):
        calls.append(np.asarray(table).copy())
        return decoded

    moz = jpeg.scaled_table(jpeg.ROBIDOUX_LUMA, 50)
    df = quality_sweep(tmp_path, [10, 40, ("mozjpeg Q50", moz)],
                       [("all", spy, None), ("q10 only", _identity, [10])], progress=False)
    got = {(r.coding, r.method) for r in df.itertuples()}
    assert got == {("Q10", "JPEG"), ("Q40", "JPEG"), ("mozjpeg Q50", "JPEG"), ("Q10", "all"), ("Q40", "all"),
                   ("mozjpeg Q50", "all"), ("Q10", "q10 only")}
    ref = evaluate(tmp_path, 40, "jpeg", progress=False).summary()
    row = df[(df.coding == "Q40") & (df.method == "JPEG")].iloc[0]
    assert row.psnr == pytest.approx(ref["psnr"]) and row.psnrb == pytest.approx(ref["psnrb"]) and row.n == 2
    assert np.allclose(df.gain_psnr, 0) and np.allclose(df.gain_psnrb, 0)  # every method here returns the JPEG
    # the restorer is handed each coding's own table
    assert any(np.array_equal(t, moz) for t in calls) and any(np.array_equal(t, jpeg.ijg_table(40)) for t in calls)
    # images given as luminance arrays score the same as the folder they came from
    lum = {f"{i}": np.asarray(Image.open(tmp_path / f"{i}.png")) for i in range(2)}
    again = quality_sweep(lum, [10, 40, ("mozjpeg Q50", moz)], [("all", spy, None), ("q10 only", _identity, [10])],
                          progress=False)
    assert np.allclose(again.sort_values(["coding", "method"]).psnr.values, df.sort_values(["coding", "method"]).psnr.values)


def test_robidoux_table_scales_like_libjpeg():
    # libjpeg: scale 5000 / q below 50, 200 - 2q above; (base x scale + 50) / 100, clipped to 1..255
    assert np.array_equal(jpeg.scaled_table(jpeg.ROBIDOUX_LUMA, 50), jpeg.ROBIDOUX_LUMA.clip(1, 255))
    assert jpeg.scaled_table(jpeg.ROBIDOUX_LUMA, 75)[0, 0] == (16 * 50 + 50) // 100 == 8
    assert jpeg.scaled_table(jpeg.ROBIDOUX_LUMA, 10)[7, 7] == 255
    assert np.array_equal(jpeg.scaled_table(jpeg.IJG_LUMA, 37), jpeg.ijg_table(37))


# ------------------------------------------------------------------ otm restore: the model per file, --strength
needs_any = pytest.mark.skipif("baseline-any" not in __import__("otmlib.zoo", fromlist=["shipped"]).shipped(),
                               reason="baseline-any does not ship in this checkout")


@needs_any
def test_restore_without_model_sends_far_qualities_to_the_any_quality_model(tmp_path, camera, capsys, monkeypatch):
    """The default (one-to-many-q10) sends far files to the any-quality model of its kind (one-to-many-any) when it
    ships, else to baseline-any; --alpha applies to a one-to-many fallback and is said not to apply to a baseline."""
    from PIL import Image

    from otmlib import cli, zoo
    from otmlib.cli import main

    for name, q in (("low", 10), ("high", 60)):
        Image.fromarray(camera[:64, :64]).save(tmp_path / f"{name}.jpg", quality=q)
    if "one-to-many-any" in zoo.shipped():
        out = tmp_path / "otm"
        assert main(["restore", str(tmp_path / "low.jpg"), str(tmp_path / "high.jpg"), "-o", str(out), "-n", "2",
                     "--alpha", "0.5"]) == 0
        err = capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [
            "high_one-to-many-any_a0.5_seed0.png", "high_one-to-many-any_a0.5_seed1.png",
            "low_one-to-many-q10_a0.5_seed0.png", "low_one-to-many-q10_a0.5_seed1.png"]
        assert "restored with one-to-many-any" in err and "does not apply" not in err
    # without the one-to-many for every quality: the any-quality baseline
    monkeypatch.setattr(cli, "ANY_QUALITY_ONE_TO_MANY", "no-such-model")
    out = tmp_path / "out"
    assert main(["restore", str(tmp_path / "low.jpg"), str(tmp_path / "high.jpg"), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["high_baseline-any.png", "low_one-to-many-q10_seed0.png"]
    assert "restored with baseline-any" in err and "high.jpg" in err and "--alpha" not in err
    alpha = tmp_path / "alpha"
    assert main(["restore", str(tmp_path / "high.jpg"), "-o", str(alpha), "--alpha", "0.5"]) == 0
    assert [p.name for p in alpha.iterdir()] == ["high_baseline-any.png"]
    assert "--alpha 0.5 does not apply to them" in capsys.readouterr().err
    # --model forces one model for all, and says that the far file is outside what it learnt
    forced = tmp_path / "forced"
    assert main(["restore", str(tmp_path / "high.jpg"), "-o", str(forced), "--model", "one-to-many-q10"]) == 0
    assert [p.name for p in forced.iterdir()] == ["high_one-to-many-q10_seed0.png"]
    assert "trained for quality 10" in capsys.readouterr().err


@needs_any
def test_strength_changes_what_the_any_quality_model_does(tmp_path, camera, capsys):
    from PIL import Image

    from otmlib.cli import main

    src = tmp_path / "x.jpg"
    Image.fromarray(camera[100:228, 100:228]).save(src, quality=40)
    outs = {}
    for s in ("1", "3"):
        d = tmp_path / f"s{s}"
        assert main(["restore", str(src), "-o", str(d), "--model", "baseline-any", "--strength", s, "--quiet",
                     "--no-project"]) == 0
        outs[s] = np.asarray(Image.open(d / "x_baseline-any.png")).astype(float)
    jpg = np.asarray(Image.open(src)).astype(float)
    # a larger table asks for more restoration: the output moves further from the JPEG
    assert np.abs(outs["3"] - jpg).mean() > np.abs(outs["1"] - jpg).mean()
    with pytest.raises(SystemExit):
        main(["restore", str(src), "-o", str(tmp_path / "bad"), "--strength", "0"])
    assert "expected a number in (0, 16]" in capsys.readouterr().err
    assert main(["restore", str(src), "-o", str(tmp_path / "b"), "--model", "baseline-q10", "--strength", "2"]) == 0
    assert "--strength 2 ignored" in capsys.readouterr().err


def test_a_one_to_many_model_that_reads_the_table(tmp_path, camera):
    """From an any-quality baseline: a z branch added, the table fed to G and to the frozen L2 parent, each patch
    at its own table; the candidates then depend on z and on the table, and the export restores like the run."""
    from skimage import data as skdata

    from otmlib.data import code_image
    from otmlib.evaluate import model_restorer
    from otmlib.steps import GanConfig
    from otmlib.train import TrainConfig, Trainer, load_checkpoint
    from otmlib.zoo import export_generator, load_generator

    gen = GeneratorConfig(width=8, branch_units=1, agg_units=1, table_cond=True)
    data = DataConfig(patch=32, qualities=(5, 95), quality_law="mixed")
    train = coded_versions("camera", camera, data)
    val = coded_versions("coins", skdata.coins()[:64, :64], data)
    base = Trainer(TrainConfig(mode="baseline", gen=gen, data=data, batch_size=2, steps=2, bf16=False,
                               out=str(tmp_path / "a"), log_every=1, val_every=10**9), train, progress=False)
    base.fit()
    cfg = TrainConfig(mode="one-to-many", gen=gen, data=data, backbone="efficientnet-lite0", d_width=8,
                      batch_size=2, steps=4, epoch_samples=4, bf16=False, out=str(tmp_path / "b"), log_every=1,
                      val_every=4, gan=GanConfig(candidates=2, perceptual_on="mean", mean_mse=1.0, spread=30.0))
    t = Trainer(cfg, train, validation_versions(val, data), progress=False)
    entry = t.init_from(tmp_path / "a" / "last.pt")
    assert "added_noise_branch" in entry and t.G_ref is not None and t.G_ref.cfg.table_cond
    t.fit()
    log = t.read_log()
    assert any("ln" in r and "spread" in r for r in log)  # D joined, the spread term ran
    last = [r for r in log if "val_psnr_q95" in r][-1]
    assert "val_div_all" in last and last["val_div_all"] > 0
    G = t.G.eval()
    x = torch.rand(1, 1, 32, 32) * 255
    a, b = G(x, seed=0, qtable=jpeg.ijg_table(10)), G(x, seed=1, qtable=jpeg.ijg_table(10))
    c = G(x, seed=0, qtable=jpeg.ijg_table(90))
    assert not torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="qtable"):
        G(x, seed=0)
    path = export_generator(load_checkpoint(t.ckpt_path), tmp_path / "m.safetensors", data_description="",
                            data_sha256="")
    G2, _ = load_generator(path)
    assert torch.equal(G2.eval()(x, seed=0, qtable=jpeg.ijg_table(10)), a)
    y = camera[:48, :48]
    assert model_restorer(str(path))(jpeg.compress(y, 30).pixels, jpeg.ijg_table(30)).shape == y.shape
