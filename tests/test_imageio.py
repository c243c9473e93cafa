"""Bad input gets an ImageError that names the file; good input comes back as 8-bit arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from otmlib import jpeg
from otmlib.imageio import ImageError, list_images, load_image


def test_grey_colour_and_alpha(tmp_path, camera, chelsea):
    Image.fromarray(camera).save(tmp_path / "g.png")
    Image.fromarray(chelsea).save(tmp_path / "c.jpg", quality=90)
    rgba = np.dstack([chelsea, np.full(chelsea.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert load_image(tmp_path / "g.png").shape == camera.shape
    assert load_image(tmp_path / "c.jpg").shape == chelsea.shape
    a = load_image(tmp_path / "a.png")
    assert np.array_equal(a, chelsea)  # alpha dropped, colour untouched


def test_exif_orientation_is_honoured(tmp_path, chelsea):
    im = Image.fromarray(chelsea)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.jpg", quality=90, exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (chelsea.shape[1], chelsea.shape[0], 3)
    assert load_image(tmp_path / "r.jpg", exif=False).shape == chelsea.shape


@pytest.mark.parametrize(
    "name, make, match",
    [
        ("missing.jpg", None, "no such file"),
        ("empty.jpg", lambda p: p.write_bytes(b""), "empty file"),
        ("text.jpg", lambda p: p.write_text("hello, not a jpeg"), "not an image"),
        ("trunc.jpg", "truncated", "truncated or corrupt"),
        ("cmyk.jpg", lambda p: Image.new("CMYK", (32, 32)).save(p), "CMYK"),
        ("deep.png", lambda p: Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(p), "16-bit"),
    ],
)
def test_bad_files_name_the_file(tmp_path, camera, name, make, match):
    path = tmp_path / name
    if make == "truncated":
        data = jpeg.encode(camera, 50)
        path.write_bytes(data[: len(data) // 2])
    elif make is not None:
        make(path)
    with pytest.raises(ImageError, match=match) as err:
        load_image(path)
    assert name in str(err.value)


def test_size_limits(tmp_path, camera):
    Image.fromarray(camera[:5, :9]).save(tmp_path / "tiny.png")
    with pytest.raises(ImageError, match="smaller than 11"):
        load_image(tmp_path / "tiny.png", min_side=11)
    Image.fromarray(camera).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="over the .* limit"):
        load_image(tmp_path / "big.png", max_pixels=100_000)


def test_list_images(tmp_path, camera):
    with pytest.raises(ImageError, match="no such folder"):
        list_images(tmp_path / "nope")
    with pytest.raises(ImageError, match="holds no images"):
        list_images(tmp_path)
    Image.fromarray(camera).save(tmp_path / "b.png")
    Image.fromarray(camera).save(tmp_path / "a.JPG")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
