"""Where training and evaluation images come from: BSDS500 (downloaded, local, or ../shared),
else scikit-image's bundled photos. Every choice is reported, never made silently.

Order of preference for :func:`resolve_bsds500`:
1. an explicit folder (``--data DIR``), then the ``OTM_DATA`` environment variable;
2. ``../shared/data/BSDS500`` beside the checkout (this project's machines);
3. ``~/.cache/otm/BSDS500`` (what :func:`download_bsds500` writes);
4. nothing: the caller falls back to :func:`sample_images` and says so.

Downloads are verified file by file against the SHA-256 manifest shipped in
``otmlib/resources/bsds500_manifest.tsv`` (the same 500 files as the BSR release).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

BSDS500_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"
BSDS500_TAR_PREFIX = "BSR/BSDS500/data/images/"
SPLITS = ("train", "val", "test")
CACHE = Path(os.environ.get("OTM_CACHE", Path.home() / ".cache" / "otm"))
# ../shared/data beside the checkout (this project's machines); OTM_SHARED_DATA overrides (tests: a user's machine)
_REPO_SHARED = Path(os.environ.get("OTM_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@dataclass(frozen=True)
class ManifestEntry:
    file: str  # "train/100075.jpg"
    sha256: str
    nbytes: int
    width: int
    height: int


def bsds500_manifest() -> list[ManifestEntry]:
    """The 500 BSDS500 images with their SHA-256 (train 200, val 100, test 200)."""
    text = resources.files("otmlib.resources").joinpath("bsds500_manifest.tsv").read_text()
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return [ManifestEntry(r["file"], r["sha256"], int(r["bytes"]), int(r["width"]), int(r["height"])) for r in rows]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_bsds500(root: Path, splits: tuple[str, ...] = SPLITS) -> list[str]:
    """Problems found under ``root`` (missing or altered files); an empty list means verified."""
    problems = []
    for e in bsds500_manifest():
        if e.file.split("/")[0] not in splits:
            continue
        p = root / e.file
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.stat().st_size != e.nbytes or sha256_file(p) != e.sha256:
            problems.append(f"{p}: checksum differs from the BSDS500 release")
    return problems


@dataclass(frozen=True)
class DataSource:
    """A resolved image folder, or the sample fallback, with a sentence saying which."""

    root: Path | None
    kind: str  # "explicit", "env", "shared", "cache", "samples"
    message: str

    @property
    def is_samples(self) -> bool:
        return self.root is None


def resolve_bsds500(explicit: str | Path | None = None) -> DataSource:
    """Find BSDS500 (see the module docstring for the order). Never downloads."""
    if explicit is not None:
        root = Path(explicit)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder (pass a BSDS500 folder or an image folder)")
        return DataSource(root, "explicit", f"using images from {root}")
    if os.environ.get("OTM_DATA"):
        root = Path(os.environ["OTM_DATA"])
        if not root.is_dir():
            raise FileNotFoundError(f"OTM_DATA={root}: no such folder")
        return DataSource(root, "env", f"using images from OTM_DATA={root}")
    for kind, root in (("shared", _REPO_SHARED / "BSDS500"), ("cache", CACHE / "BSDS500")):
        if (root / "test").is_dir():
            return DataSource(root, kind, f"using BSDS500 from {root}")
    return DataSource(
        None,
        "samples",
        "BSDS500 not found (no --data, no OTM_DATA, nothing in ../shared/data or "
        f"{CACHE / 'BSDS500'}); falling back to scikit-image's bundled sample photos. "
        "Run `otm data download` (online) for the real data set.",
    )


def download_bsds500(dest: Path | None = None, url: str = BSDS500_URL, keep_archive: bool = False) -> Path:
    """Download the BSR release, extract its 500 images to ``dest`` and verify every checksum.

    Raises ``ConnectionError`` with a clear message when offline; a partial download never
    lands in ``dest`` (extraction goes to a temporary folder that is renamed at the end).
    """
    dest = Path(dest or CACHE / "BSDS500")
    if (dest / "test").is_dir() and not verify_bsds500(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = Path(tmp) / "BSR_bsds500.tgz"
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(archive, "wb") as f:
                total = int(r.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="BSDS500") as bar:
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        f.write(chunk)
                        bar.update(len(chunk))
        except OSError as e:
            raise ConnectionError(
                f"could not download BSDS500 from {url} ({e}). Offline? Pass a local copy with "
                "--data DIR or OTM_DATA, or use the bundled sample photos."
            ) from None
        staging = Path(tmp) / "BSDS500"
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if not (m.isfile() and m.name.startswith(BSDS500_TAR_PREFIX) and m.name.endswith(".jpg")):
                    continue
                rel = m.name[len(BSDS500_TAR_PREFIX) :]
                if rel.split("/")[0] not in SPLITS or ".." in rel:
                    continue
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        problems = verify_bsds500(staging)
        if problems:
            raise ValueError("downloaded BSDS500 failed verification:\n  " + "\n  ".join(problems[:10]))
        if keep_archive:
            shutil.copy2(archive, dest.parent / archive.name)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    return dest


def sample_images() -> dict[str, "object"]:
    """scikit-image's bundled photos (name -> uint8 array), the offline fallback set."""
    import numpy as np
    from skimage import data

    names = ("astronaut", "camera", "chelsea", "coffee", "rocket", "brick", "grass", "gravel",
             "coins", "moon", "page", "text")
    out = {}
    for n in names:
        fn = getattr(data, n, None)
        if fn is None:
            continue
        try:
            out[n] = np.ascontiguousarray(fn())
        except Exception:  # noqa: BLE001 - some samples need an optional download (pooch)
            continue
    return out


def benchmark_image(set_name: str, stem: str) -> tuple["object", str]:
    """An image of a benchmark set by file stem, e.g. ("BSDS500/test", "6046") or ("Set14", "baboon").

    Looks under ``OTM_DATA``'s parent sets, ``../shared/data`` and the cache; returns
    ``(uint8 array, where)``. Offline with none of these, a bundled scikit-image photo stands in
    and ``where`` says so (figures then show a different image than the paper's).
    """
    from otmlib.imageio import IMAGE_SUFFIXES, load_image

    roots = [Path(os.environ["OTM_DATA"]).parent] if os.environ.get("OTM_DATA") else []
    roots += [_REPO_SHARED, CACHE]
    for root in roots:
        for suffix in IMAGE_SUFFIXES:
            p = root / set_name / f"{stem}{suffix}"
            if p.is_file():
                return load_image(p), str(p)
    samples = sample_images()
    name = sorted(samples)[sum(map(ord, stem)) % len(samples)]
    return samples[name], f"scikit-image '{name}' (standing in for {set_name}/{stem}: not found offline)"
