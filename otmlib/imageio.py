"""Reading images safely: every failure is an :class:`ImageError` that names the file and the fix.

What is accepted, and how:

- 8-bit grey (``L``, ``1``) -> (H, W) uint8; 8-bit colour (``RGB``, ``P``, ``YCbCr``) -> (H, W, 3)
  uint8. An alpha channel (``RGBA``, ``LA``, ``PA``) is dropped: restoration works on the colour.
- EXIF orientation is applied (phones store rotated pixels plus a tag).
- Refused with a one-line reason: a missing file, a non-image, a truncated or corrupt file, CMYK
  (its inversion conventions differ between writers, so any conversion could silently change
  colours), 16-bit or float pixels, zero-size images, images under ``min_side`` pixels, and images
  over ``max_pixels`` (Pillow's decompression-bomb guard, raised on purpose).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: a 12 MP photo passes with room; a bomb does not

_GREY = {"L", "1"}
_COLOUR = {"RGB", "P", "YCbCr", "RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class ImageError(ValueError):
    """An image that cannot be used, with the file, the reason and what to do about it."""

    def __init__(self, path: str | Path, reason: str, fix: str = ""):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}" + (f" ({fix})" if fix else ""))


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name. Errors name the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageError(folder, "no such folder", "check the path, or run the data-prep notebook")
    if not folder.is_dir():
        raise ImageError(folder, "not a folder", "pass the folder that holds the images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageError(
            folder,
            "holds no images",
            f"expected files ending in {', '.join(IMAGE_SUFFIXES)}",
        )
    return files


def load_image(
    path: str | Path,
    *,
    exif: bool = True,
    min_side: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read an 8-bit image as uint8: (H, W) for grey, (H, W, 3) for colour. See the module doc."""
    path = Path(path)
    if not path.exists():
        raise ImageError(path, "no such file")
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(path, "is an empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        path,
                        f"is {w}x{h} = {w * h / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP limit",
                        "raise the limit (--max-pixels) if you trust the file",
                    )
                if w == 0 or h == 0:
                    raise ImageError(path, f"has zero size ({w}x{h})")
                im.load()
                if exif:
                    im = ImageOps.exif_transpose(im)
                return _to_array(im, path, min_side)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, "is not an image Pillow can read", "pass a JPEG, PNG, BMP or TIFF") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(path, "is too large to decode safely", "raise --max-pixels if you trust the file") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow reports truncation and bad markers so
        raise ImageError(path, f"is truncated or corrupt ({e})", "re-download or re-export it") from None


def _to_array(im: Image.Image, path: Path, min_side: int) -> np.ndarray:
    mode = im.mode
    if mode == "CMYK":
        raise ImageError(path, "is a CMYK image", "convert it to RGB first, e.g. in an image editor")
    if mode in _HIGH_DEPTH:
        raise ImageError(
            path,
            f"has {mode} pixels (16-bit or float); otm works on 8-bit images",
            "convert it to 8 bits per channel first",
        )
    if mode in _GREY or mode in {"LA", "La"}:
        arr = np.asarray(im.convert("L"))
    elif mode in _COLOUR:
        arr = np.asarray(im.convert("RGB"))
    else:
        raise ImageError(path, f"has pixel mode {mode!r}, which otm does not handle", "convert it to RGB")
    if min(arr.shape[:2]) < min_side:
        raise ImageError(
            path,
            f"is {arr.shape[1]}x{arr.shape[0]}, smaller than {min_side} pixels on a side",
        )
    return np.ascontiguousarray(arr)
