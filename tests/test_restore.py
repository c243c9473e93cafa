"""`otm restore` and the restoration library on real files: formats, colour, bad input, no overwrite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from otmlib import jpeg
from otmlib.cli import main
from otmlib.evaluate import evaluate
from otmlib.models import Generator, GeneratorConfig
from otmlib.restore import diversity, estimate_ijg_quality, interval_share, restore_image, texture_ratio
from otmlib.train import TrainConfig
from otmlib.zoo import export_generator


def make_release(path, noise: bool):
    """Release weights of a small untrained G (random init, but a real file like a shipped one)."""
    torch.manual_seed(0)
    cfg = TrainConfig(mode="one-to-many" if noise else "baseline",
                      gen=GeneratorConfig(width=8, branch_units=1, agg_units=1, out_init_gain=1.0))
    G = Generator(cfg.gen)
    ck = {"config": cfg.to_dict(), "G": G.state_dict(), "step": 0, "wall": 0.0, "backbone": "none"}
    return export_generator(ck, path, data_description="none (test)", data_sha256="")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"otm": make_release(d / "tiny-otm.safetensors", True), "base": make_release(d / "tiny-base.safetensors", False)}


@pytest.fixture
def photos(tmp_path, camera, chelsea):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(camera[:100, :120]).save(d / "grey.jpg", quality=10)
    Image.fromarray(chelsea).save(d / "colour.jpg", quality=10)
    Image.fromarray(chelsea[:64, :80]).save(d / "progressive.jpg", quality=10, progressive=True)
    Image.fromarray(camera[:64, :64]).save(d / "restart.jpg", quality=10, restart_marker_blocks=2)
    return d


def test_candidates_for_every_kind_of_jpeg(models, photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["restore", str(photos), "-o", str(out), "--model", str(models["otm"]), "-n", "2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 8 and "colour_tiny-otm_seed0.png" in names and "restart_tiny-otm_seed1.png" in names
    a = np.asarray(Image.open(out / "colour_tiny-otm_seed0.png"))
    b = np.asarray(Image.open(out / "colour_tiny-otm_seed1.png"))
    assert a.shape == (300, 451, 3) and not np.array_equal(a, b)  # two different candidates
    assert np.asarray(Image.open(out / "grey_tiny-otm_seed0.png")).shape == (100, 120)


def test_no_overwrite_without_force(models, photos, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["restore", str(photos / "grey.jpg"), "-o", str(out), "--model", str(models["base"]), "--quiet"]
    assert main(args) == 0
    target = out / "grey_tiny-base.png"
    before = target.read_bytes()
    target.write_bytes(b"mine")
    assert main(args) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert target.read_bytes() == b"mine"
    assert main(args + ["--force"]) == 0 and target.read_bytes() == before


def test_bad_inputs_are_one_line_each_and_the_batch_goes_on(models, photos, tmp_path, camera, capsys):
    data = (photos / "grey.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (photos / "notimage.jpg").write_text("hello")
    (photos / "empty.jpg").write_bytes(b"")
    Image.new("CMYK", (32, 32)).save(photos / "cmyk.jpg")
    Image.fromarray(np.full((32, 32), 1000, np.uint16)).save(photos / "deep.png")
    Image.fromarray(camera[:40, :40]).save(photos / "plain.png")
    out = tmp_path / "out"
    rc = main(["restore", str(photos), "-o", str(out), "--model", str(models["base"]), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("otm: ")]
    for name in ("truncated.jpg", "notimage.jpg", "empty.jpg", "cmyk.jpg", "deep.png", "plain.png"):
        assert sum(name in ln for ln in lines) == 1, (name, err)
    assert "--quality" in next(ln for ln in lines if "plain.png" in ln)
    assert "restored 4 of 10" in err
    assert len(list(out.iterdir())) == 4  # the good ones were written, nothing half-written
    assert main(["restore", str(photos / "plain.png"), "-o", str(out), "--model", str(models["base"]),
                 "--quality", "10", "--quiet"]) == 0


def test_huge_image_refused_by_limit(models, tmp_path, camera, capsys):
    Image.fromarray(camera).save(tmp_path / "big.jpg", quality=10)
    rc = main(["restore", str(tmp_path / "big.jpg"), "-o", str(tmp_path / "o"), "--model", str(models["base"]),
               "--max-pixels", "100000", "--quiet"])
    assert rc == 1 and "over the" in capsys.readouterr().err


def test_wrong_weights_file(tmp_path, photos, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    assert main(["restore", str(photos / "grey.jpg"), "-o", str(tmp_path / "o"), "--model", str(bad)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_colour_restoration_keeps_chroma(models, chelsea):
    from otmlib.zoo import load_generator

    G, _ = load_generator(models["base"])
    dec = jpeg.compress(chelsea, 10, subsampling="4:4:4").pixels
    out = restore_image(G, dec).candidates[0]
    cc_in, cc_out = jpeg.rgb_to_ycbcr(dec)[..., 1:], jpeg.rgb_to_ycbcr(out)[..., 1:]
    assert np.abs(cc_in - cc_out).mean() < 1.0  # chroma untouched up to 8-bit rounding


def test_evaluate_with_weights_path(models, tmp_path, camera):
    Image.fromarray(camera[:64, :96]).save(tmp_path / "a.png")
    Image.fromarray(camera[100:164, :96]).save(tmp_path / "b.png")
    rep = evaluate(tmp_path, 10, str(models["base"]), progress=False)
    assert rep.n == 2 and np.isfinite(rep.mean("psnr"))


def test_measures_hand_cases(camera):
    dec = jpeg.compress(camera, 10)
    assert interval_share(dec.pixels, dec.pixels, dec.luma_table) == 1.0
    # +10 grey levels move every block's DC by 8 * 10 = 80 = Q[0,0]: outside (> Q/2), the rest stay
    assert interval_share(dec.pixels + 10.0, dec.pixels, dec.luma_table) == pytest.approx(63 / 64)
    assert texture_ratio(camera, camera) == 1.0
    assert texture_ratio(dec.pixels, camera) < 1.0  # JPEG at Q10 loses detail
    assert diversity([camera, camera]) == 0.0
    assert diversity([np.zeros((4, 4)), np.full((4, 4), 2.0)]) == 1.0
    assert estimate_ijg_quality(jpeg.ijg_table(37))[0] == 37
