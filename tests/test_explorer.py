"""The noise explorer's logic (notebook 06), headless, on a tiny random Generator."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from otmlib import jpeg
from otmlib.explorer import NoiseExplorer, crop, interpolate_noise, to_png, unique_path, zoom
from otmlib.metrics import psnr
from otmlib.models import Generator, GeneratorConfig
from otmlib.restore import restore_luma

# ------------------------------------------------------------------------- interpolate_noise


def _pair(sigma: float = 1.0, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return sigma * torch.randn(1, 1, n, n, generator=g), sigma * torch.randn(1, 1, n, n, generator=g)


@pytest.mark.parametrize("mode", ["variance", "slerp", "linear"])
def test_endpoints_are_the_two_samples(mode):
    z0, z1 = _pair()
    torch.testing.assert_close(interpolate_noise(z0, z1, 0.0, mode), z0)
    torch.testing.assert_close(interpolate_noise(z0, z1, 1.0, mode), z1)


@pytest.mark.parametrize("sigma", [1.0, 2.5])
@pytest.mark.parametrize("mode", ["variance", "slerp"])
def test_variance_is_preserved_along_the_path(mode, sigma):
    z0, z1 = _pair(sigma)
    for t in (0.1, 0.25, 0.5, 0.75, 0.9):
        std = interpolate_noise(z0, z1, t, mode).std().item()
        assert std == pytest.approx(sigma, rel=0.01), (mode, t, std)


def test_linear_interpolation_shrinks_the_noise():
    # (1-t)^2 + t^2 = 1/2 at t = 0.5: std sigma / sqrt(2), the reason not to use it
    z0, z1 = _pair(2.0)
    std = interpolate_noise(z0, z1, 0.5, "linear").std().item()
    assert std == pytest.approx(2.0 / math.sqrt(2.0), rel=0.01)


def test_variance_path_by_hand():
    z0, z1 = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, -1.0])
    # t = 1/3: cos(pi/6) = sqrt(3)/2, sin(pi/6) = 1/2
    want = torch.tensor([math.sqrt(3) / 2, 0.5, math.sqrt(3) - 0.5])
    torch.testing.assert_close(interpolate_noise(z0, z1, 1 / 3), want)


def test_slerp_by_hand():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(interpolate_noise(e1, e2, 0.5, "slerp"), torch.tensor([h, h]))
    # 60 degrees apart, unit length: the midpoint is the unit vector at 30 degrees
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])
    mid = interpolate_noise(a, b, 0.5, "slerp")
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(3) / 2, 0.5]))


def test_identical_endpoints_stay_put():
    z, _ = _pair()
    for mode in ("variance", "slerp", "linear"):
        torch.testing.assert_close(interpolate_noise(z, z.clone(), 0.5, mode), z)


def test_interpolate_rejects_bad_input():
    z0, z1 = _pair(n=4)
    with pytest.raises(ValueError, match="t must lie"):
        interpolate_noise(z0, z1, 1.5)
    with pytest.raises(ValueError, match="mode"):
        interpolate_noise(z0, z1, 0.5, "cubic")
    with pytest.raises(ValueError, match="shape"):
        interpolate_noise(z0, z1[..., :2], 0.5)


# ------------------------------------------------------------------------- crops and PNGs


def test_crop_by_hand():
    a = np.arange(100).reshape(10, 10)
    np.testing.assert_array_equal(crop(a, 0.5, 0.5, 4), a[3:7, 3:7])
    np.testing.assert_array_equal(crop(a, 0.0, 1.0, 4), a[0:4, 6:10])  # shifted inside, not shrunk
    assert crop(a, 0.5, 0.5, 50).shape == (10, 10)  # clipped to the image
    rgb = np.zeros((12, 20, 3), np.uint8)
    assert crop(rgb, 0.2, 0.8, 6).shape == (6, 6, 3)
    with pytest.raises(ValueError):
        crop(a, 0.5, 0.5, 0)


def test_zoom_and_png_round_trip():
    a = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(zoom(a, 2), [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    back = np.asarray(Image.open(io.BytesIO(to_png(a, 3))))
    np.testing.assert_array_equal(back, zoom(a, 3))
    with pytest.raises(ValueError):
        to_png(a.astype(np.float32))


def test_unique_path(tmp_path):
    assert unique_path(tmp_path, "f") == tmp_path / "f.png"
    (tmp_path / "f.png").write_bytes(b"x")
    (tmp_path / "f_2.png").write_bytes(b"x")
    assert unique_path(tmp_path, "f") == tmp_path / "f_3.png"


# ------------------------------------------------------------------------- NoiseExplorer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    # out_init_gain 1: a random G whose output visibly depends on z (the default starts near x')
    G = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, out_init_gain=1.0)).eval()
    B = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)).eval()
    from skimage import data

    gt = data.camera()[200:240, 180:232]  # 40 x 52: not a multiple of 8 on purpose
    comp = jpeg.compress(gt, 10)
    return G, B, gt, comp


def _explorer(tiny, **kw):
    G, B, gt, comp = tiny
    return NoiseExplorer(G, comp.pixels, baseline=B, ground_truth=gt, qtable=comp.luma_table, name="cam", **kw)


def test_candidate_of_one_seed_is_restore_luma(tiny):
    G, _, _, comp = tiny
    ex = _explorer(tiny)
    for s in (0, 7):
        np.testing.assert_array_equal(ex.candidate(s), restore_luma(G, comp.pixels, [s])[0])
        np.testing.assert_array_equal(ex.candidate(s, s, 0.4), ex.candidate(s))
    assert not np.array_equal(ex.candidate(0), ex.candidate(7)), "z must change the candidate"


def test_candidate_between_seeds_by_hand(tiny):
    G, _, _, comp = tiny
    ex = _explorer(tiny)
    x = torch.from_numpy(comp.pixels.astype(np.float32))[None, None]
    za, zb = G.sample_noise(x, seed=3), G.sample_noise(x, seed=4)
    z = math.cos(0.3 * math.pi / 2) * za + math.sin(0.3 * math.pi / 2) * zb
    with torch.no_grad():
        want = G(x, z)[0, 0].clamp(0, 255).round().to(torch.uint8).numpy()
    got = ex.candidate(3, 4, 0.3)
    assert np.abs(got.astype(int) - want).max() <= 1  # tiled vs direct: float rounding only
    assert (got == want).mean() > 0.99
    end = ex.candidate(3, 4, 1.0)
    assert ex.current_params == (3, 4, 1.0)
    assert np.abs(end.astype(int) - ex.candidate(4)).max() <= 1


def test_noise_and_candidates_are_cached(tiny):
    ex = _explorer(tiny, cache_size=2)
    assert ex.noise(5) is ex.noise(5)
    a = ex.candidate(1, 2, 0.5)
    assert ex.candidate(1, 2, 0.5) is a
    ex.candidate(3)
    ex.candidate(4)  # evicts (1, 2, 0.5)
    assert len(ex._candidates) == 2
    np.testing.assert_array_equal(ex.candidate(1, 2, 0.5), a)


def test_panels_shapes_and_keys(tiny):
    G, B, gt, comp = tiny
    ex = _explorer(tiny)
    full = ex.panels(0, 1, 0.5)
    assert list(full) == ["ground truth", "JPEG", "baseline", "one-to-many"]
    assert all(v.shape == gt.shape and v.dtype == np.uint8 for v in full.values())
    np.testing.assert_array_equal(full["baseline"], restore_luma(B, comp.pixels)[0])
    crops = ex.panels(0, 1, 0.5, cy=0.2, cx=0.9, size=16)
    assert all(v.shape == (16, 16) for v in crops.values())
    np.testing.assert_array_equal(crops["JPEG"], crop(comp.pixels, 0.2, 0.9, 16))
    bare = NoiseExplorer(G, comp.pixels).panels(0, size=8)
    assert list(bare) == ["JPEG", "one-to-many"]
    pngs = ex.render(0, 1, 0.5, cy=0.5, cx=0.5, size=16, factor=3)
    assert np.asarray(Image.open(io.BytesIO(pngs["one-to-many"]))).shape == (48, 48)


def test_gallery(tiny):
    ex = _explorer(tiny)
    g = ex.gallery([0, 1, 2])
    assert list(g) == ["ground truth", "JPEG", "baseline", "z seed 0", "z seed 1", "z seed 2"]
    np.testing.assert_array_equal(g["z seed 2"], ex.candidate(2))


def test_stats_and_describe(tiny):
    _, _, gt, comp = tiny
    ex = _explorer(tiny)
    with pytest.raises(RuntimeError):
        ex.stats()
    c = ex.candidate(2, 5, 0.5)
    s = ex.stats()
    assert s["psnr"] == pytest.approx(psnr(gt, c))
    assert 0.0 <= s["interval_share"] <= 1.0
    assert "seeds 2 and 5" in ex.describe() and "PSNR" in ex.describe()
    # the JPEG itself lies inside all of its own intervals
    ex.current = comp.pixels
    assert ex.stats()["interval_share"] == 1.0


def test_save_favourite_never_overwrites(tiny, tmp_path):
    ex = _explorer(tiny)
    with pytest.raises(RuntimeError):
        ex.save_favourite(tmp_path)
    first = ex.candidate(0, 1, 0.25)
    p1 = ex.save_favourite(tmp_path / "favs")
    assert p1.name == "favourite_cam_seed0-1_t0.25.png"
    np.testing.assert_array_equal(np.asarray(Image.open(p1)), first)
    before = p1.read_bytes()
    ex.candidate(9)
    ex.current_params = (0, 1, 0.25)  # same name as the first file, other pixels
    p2 = ex.save_favourite(tmp_path / "favs")
    assert p2 != p1 and p2.name == "favourite_cam_seed0-1_t0.25_2.png"
    assert p1.read_bytes() == before
    np.testing.assert_array_equal(np.asarray(Image.open(p2)), ex.candidate(9))


def test_explorer_rejects_wrong_models_and_images(tiny):
    G, B, gt, comp = tiny
    with pytest.raises(ValueError, match="one-to-many"):
        NoiseExplorer(B, comp.pixels)
    with pytest.raises(ValueError, match="uint8"):
        NoiseExplorer(G, comp.pixels.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        NoiseExplorer(G, comp.pixels, ground_truth=gt[:-1])


def test_alpha_slider_goes_from_the_l2_parent_to_the_model():
    from otmlib.models import add_noise_branch

    torch.manual_seed(0)
    base = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)).eval()
    model = add_noise_branch(base, 0.5, seed=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dec = (np.random.default_rng(0).random((40, 48)) * 255).astype(np.uint8)
    ex = NoiseExplorer(model, dec, l2_parent=base)
    full = ex.candidate(0).copy()
    ex.set_alpha(0.0)
    at_zero = [ex.candidate(s) for s in (0, 1)]
    ref = restore_luma(base, dec)[0]
    assert all(np.abs(a.astype(int) - ref).max() <= 1 for a in at_zero)  # the baseline, whatever z
    assert "alpha 0.00" in ex.describe()
    ex.set_alpha(1.0)
    assert np.array_equal(ex.candidate(0), full)
    with pytest.raises(ValueError, match="l2_parent"):
        NoiseExplorer(model, dec).set_alpha(0.5)


def test_strength_slider_gives_a_table_reading_model_the_scaled_table(tiny):
    from otmlib.models import add_table_conditioning

    G, B, gt, comp = tiny
    H = add_table_conditioning(G).eval()
    with torch.no_grad():
        H.table_film.mlp[-1].weight.normal_(0, 0.2)  # a conditioning that does something
    ex = NoiseExplorer(H, comp.pixels, qtable=comp.luma_table, name="cam")
    assert ex.reads_table
    one = ex.candidate(0)
    np.testing.assert_array_equal(one, restore_luma(H, comp.pixels, [0], qtable=comp.luma_table)[0])
    ex.set_strength(3.0)
    three = ex.candidate(0)
    np.testing.assert_array_equal(three, restore_luma(H, comp.pixels, [0], qtable=comp.luma_table * 3.0)[0])
    assert not np.array_equal(one, three)
    with pytest.raises(ValueError, match="positive"):
        ex.set_strength(0)
    with pytest.raises(ValueError, match="pass qtable"):
        NoiseExplorer(H, comp.pixels)
    plain = _explorer(tiny)
    assert not plain.reads_table
    with pytest.raises(ValueError, match="reads the quantisation table"):
        plain.set_strength(2.0)
