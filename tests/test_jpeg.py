"""otmlib.jpeg against independent references: Pillow/libjpeg, jpeglib (the file's own DCT
coefficients), scipy's DCT, scikit-image's rgb2ycbcr, and hand computations."""

from __future__ import annotations


import jpeglib
import numpy as np
import pytest
import scipy.fft
import torch
from PIL import Image
from skimage.color import rgb2ycbcr

from otmlib import jpeg


@pytest.mark.parametrize("quality", [1, 5, 10, 20, 50, 75, 95, 100])
def test_ijg_tables_match_what_libjpeg_writes(quality, chelsea, tmp_path):
    path = tmp_path / "c.jpg"
    path.write_bytes(jpeg.encode(chelsea, quality))
    info = jpeg.read_jpeg_info(path)
    assert np.array_equal(info.quant_tables[0], jpeg.ijg_table(quality))
    assert np.array_equal(info.quant_tables[1], jpeg.ijg_table(quality, chroma=True))
    qt = jpeglib.read_dct(str(path)).qt  # libjpeg's own reading of the DQT segment
    assert np.array_equal(qt[0], jpeg.ijg_table(quality))


def test_ijg_table_hand_values():
    # quality 50 is the Annex K table itself; quality 10 scales by 5000/10 = 500 %
    assert np.array_equal(jpeg.ijg_table(50), jpeg.IJG_LUMA)
    assert jpeg.ijg_table(10)[0, 0] == (16 * 500 + 50) // 100 == 80
    assert jpeg.ijg_table(100).max() == 1
    with pytest.raises(ValueError):
        jpeg.ijg_table(0)


def test_read_jpeg_info_layouts(chelsea, camera, tmp_path):
    cases = {"g.jpg": (camera, {}), "a.jpg": (chelsea, {"subsampling": "4:4:4"}),
             "b.jpg": (chelsea, {"subsampling": "4:2:2"}), "c.jpg": (chelsea, {})}
    for name, (img, kw) in cases.items():
        (tmp_path / name).write_bytes(jpeg.encode(img, 30, **kw))
    g = jpeg.read_jpeg_info(tmp_path / "g.jpg")
    assert (g.components, g.subsampling, g.mode, g.width, g.height) == (1, None, "L", 512, 512)
    assert jpeg.read_jpeg_info(tmp_path / "a.jpg").subsampling == "4:4:4"
    assert jpeg.read_jpeg_info(tmp_path / "b.jpg").subsampling == "4:2:2"
    c = jpeg.read_jpeg_info(tmp_path / "c.jpg")
    assert (c.components, c.subsampling, c.progressive) == (3, "4:2:0", False)
    Image.fromarray(camera).save(tmp_path / "p.jpg", quality=30, progressive=True)
    assert jpeg.read_jpeg_info(tmp_path / "p.jpg").progressive
    Image.fromarray(camera).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="x.png: not a JPEG"):
        jpeg.read_jpeg_info(tmp_path / "x.png")


def test_encode_decode_round_trip(camera, chelsea):
    for img in (camera, chelsea):
        c = jpeg.compress(img, 10)
        assert c.pixels.shape == img.shape and c.pixels.dtype == np.uint8
        assert 0 < np.abs(c.pixels.astype(int) - img).mean() < 20  # lossy, not garbage
    with pytest.raises(TypeError):
        jpeg.encode(camera.astype(np.float32), 10)


def test_ycbcr_matches_matlab_definition():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
    ours = jpeg.rgb_to_ycbcr(rgb)
    ref = rgb2ycbcr(rgb)  # scikit-image follows MATLAB's rgb2ycbcr
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    # hand values: black and white land on the studio-range ends
    np.testing.assert_allclose(jpeg.rgb_to_ycbcr(np.array([0, 0, 0])), [16, 128, 128])
    np.testing.assert_allclose(jpeg.rgb_to_ycbcr(np.array([255, 255, 255])), [235, 128, 128], atol=1e-9)
    np.testing.assert_allclose(jpeg.ycbcr_to_rgb(ours), rgb, atol=1e-9)


def test_to_uint8_rounds_half_away_from_zero_and_clips():
    x = np.array([0.5, 1.5, 2.5, 254.5, 300.0, -3.0, 7.49])
    assert jpeg.to_uint8(x).tolist() == [1, 2, 3, 255, 255, 0, 7]
    # against MATLAB's rule written out (round half away from zero, then saturate), at and near every .5
    x = np.concatenate([np.arange(-3, 259) + 0.5, np.random.default_rng(0).uniform(-10, 270, 10_000)])
    x = np.concatenate([x, np.nextafter(x, -np.inf), np.nextafter(x, np.inf)])
    matlab = np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, 255)
    np.testing.assert_array_equal(jpeg.to_uint8(x), matlab.astype(np.uint8))


def test_colour_conversion_keeps_the_shape_of_any_stack():
    """rgb_to_ycbcr / ycbcr_to_rgb flatten to (N, 3) for speed; every leading shape must come back."""
    rgb = np.random.default_rng(1).integers(0, 256, (2, 5, 7, 3))
    ycc = jpeg.rgb_to_ycbcr(rgb)
    assert ycc.shape == rgb.shape and jpeg.rgb_to_ycbcr(rgb[0, 0, 0]).shape == (3,)
    np.testing.assert_allclose(ycc[1, 2], jpeg.rgb_to_ycbcr(rgb[1, 2]))
    np.testing.assert_allclose(jpeg.ycbcr_to_rgb(ycc), rgb, atol=1e-9)


def test_luminance_is_rounded_matlab_y(chelsea, camera):
    y = jpeg.luminance(chelsea)
    assert y.dtype == np.uint8 and y.shape == chelsea.shape[:2]
    assert np.abs(y.astype(float) - rgb2ycbcr(chelsea)[..., 0]).max() <= 0.5
    assert jpeg.luminance(camera) is camera or np.array_equal(jpeg.luminance(camera), camera)


def test_dct_matrix_is_orthonormal():
    d = jpeg.dct_matrix(dtype=torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64))


def test_block_dct_matches_scipy_per_block():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(2, 3, 24, 40))
    ours = jpeg.block_dct(torch.tensor(x)).numpy()
    assert ours.shape == (2, 3, 3, 5, 8, 8)
    for bi in range(3):
        for bj in range(5):
            ref = scipy.fft.dctn(x[..., 8 * bi : 8 * bi + 8, 8 * bj : 8 * bj + 8], axes=(-2, -1), norm="ortho")
            np.testing.assert_allclose(ours[:, :, bi, bj], ref, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (3, 2, 37, 53), (2, 3, 8, 8)])
def test_dct_round_trip(shape, dtype):
    torch.manual_seed(0)
    x = torch.rand(shape, dtype=dtype) * 255 - 128  # level-shifted pixels, as C(.) sees them
    rec = jpeg.block_idct(jpeg.block_dct(x))
    h, w = shape[-2:]
    assert rec.shape[-2:] == (h + (-h % 8), w + (-w % 8))
    assert (rec[..., :h, :w] - x).abs().max().item() < 1e-4
    # the padding repeats the last row/column, as libjpeg's encoder does
    assert torch.equal(jpeg.pad_to_blocks(x)[..., h:, :w], x[..., h - 1 :, :].expand_as(jpeg.pad_to_blocks(x)[..., h:, :w]))


def _file_coefficients(img: np.ndarray, quality: int, tmp_path):
    """The decoded pixels and the quantised DCT indices stored in the file (read by jpeglib)."""
    path = tmp_path / f"q{quality}.jpg"
    path.write_bytes(jpeg.encode(img, quality))
    k_file = torch.tensor(jpeglib.read_dct(str(path)).Y, dtype=torch.float64)[None, None]
    dec = torch.tensor(np.asarray(Image.open(path)), dtype=torch.float64)[None, None]
    return dec, k_file


@pytest.mark.parametrize("quality", [5, 10, 20, 50])
def test_decoded_jpeg_lies_inside_its_own_intervals(camera, quality, tmp_path):
    dec, k_file = _file_coefficients(camera, quality, tmp_path)
    q = jpeg.ijg_table(quality)
    lo, hi = jpeg.coefficient_bounds(k_file, q)
    c = jpeg.coefficients(dec)
    # No tolerance: pixel rounding moves a coefficient by well under Q/2; only blocks the
    # decoder clipped at 0 or 255 can leave, which is rare.
    inside = ((c >= lo) & (c <= hi)).double().mean().item()
    assert inside >= 0.99
    # the indices recovered from pixels are the file's own
    assert (jpeg.quantised_indices(dec, q) == k_file).double().mean().item() >= 0.999
    # and the original (what the encoder saw) lies inside them too: eq. (5)
    orig = jpeg.coefficients(torch.tensor(camera, dtype=torch.float64)[None, None])
    assert ((orig >= lo - 1e-9) & (orig <= hi + 1e-9)).double().mean().item() >= 0.99


def test_jpeg_loss_zero_inside_positive_outside_and_gradient_points_back(camera, tmp_path):
    dec, k_file = _file_coefficients(camera[:128, :128], 10, tmp_path)
    q = jpeg.ijg_table(10)
    k = jpeg.quantised_indices(dec, q)
    assert jpeg.jpeg_loss(dec, k, q).item() == 0.0
    assert jpeg.jpeg_loss(dec, k_file, q).item() < 1e-2  # clipped-block stragglers only

    # the unrounded decoder output sits on the lattice Q k; push every block's (1, 2)
    # coefficient 2 Q away from it, i.e. 1.5 Q outside its interval
    qt = torch.as_tensor(q, dtype=torch.float64)
    lattice = jpeg.block_idct(qt * k) + 128.0
    assert jpeg.jpeg_loss(lattice, k, q).item() < 1e-20
    bump = torch.zeros_like(k)
    bump[..., 1, 2] = 2.0 * float(q[1, 2])
    outside = (lattice + jpeg.block_idct(bump)).requires_grad_(True)
    loss = jpeg.jpeg_loss(outside, k, q)
    # the excess is 2Q - Q/2 = 1.5 Q on one of 64 coefficients per block (hand computation)
    expected = (1.5 * float(q[1, 2])) ** 2 / 64
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, outside)
    towards_inside = (lattice - outside).detach()
    assert (-grad * towards_inside).sum().item() > 0  # descent direction points back inside
    stepped = outside.detach() - 10.0 * grad
    assert jpeg.jpeg_loss(stepped, k, q).item() < loss.item()


def test_jpeg_loss_weights_and_reductions():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 16, 16) * 255
    q = torch.full((8, 8), 16.0)
    k = jpeg.quantised_indices(x, q)
    y = x + torch.randn_like(x) * 40
    per = jpeg.jpeg_loss(y, k, q, reduction="none")
    assert per.shape == (2,) and (per > 0).all()
    w = torch.tensor([1.0, 0.0])  # e.g. the second patch is misaligned with the coding grid
    assert jpeg.jpeg_loss(y, k, q, weight=w).item() == pytest.approx(per[0].item() / 2)
    assert jpeg.jpeg_loss(y, k, q, reduction="sum").item() == pytest.approx(per.sum().item())
    # one table per image broadcasts like a shared one
    qn = q.expand(2, 8, 8)
    torch.testing.assert_close(jpeg.jpeg_loss(y, k, qn, reduction="none"), per)
    with pytest.raises(ValueError):
        jpeg.jpeg_loss(y, k, torch.ones(4, 4))


def test_interval_functions_use_complete_blocks_only():
    x = torch.rand(1, 1, 37, 53) * 255
    assert jpeg.coefficients(x).shape == (1, 1, 4, 6, 8, 8)
