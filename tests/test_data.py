"""Training patches: alignment with the coding grid, determinism, data resolution and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from otmlib import datasets, jpeg
from otmlib.data import (
    DataConfig, JpegPatchDataset, StreamSampler, code_image, load_coded, rescale, sample_coded, split_files,
)


@pytest.fixture(scope="module")
def coded(camera, chelsea):
    return [code_image("camera", camera, 10, False), code_image("chelsea", chelsea, 10, False)]


def _loss_against_own_jpeg(s) -> float:
    q = s["q"][None].double()
    k = jpeg.quantised_indices(s["jpeg"][None].double(), q)
    return jpeg.jpeg_loss(s["x"][None].double(), k, q).item()


def test_aligned_patches_lie_in_their_intervals_misaligned_do_not(coded):
    ds = JpegPatchDataset(coded, DataConfig(patch=64, seed=3))
    by_flag = {True: [], False: []}
    for i in range(160):
        s = ds[i]
        assert s["x"].shape == s["jpeg"].shape == (1, 64, 64) and s["q"].shape == (1, 8, 8)
        by_flag[bool(s["aligned"])].append(_loss_against_own_jpeg(s))
    aligned, misaligned = np.array(by_flag[True]), np.array(by_flag[False])
    assert len(aligned) > 40 and len(misaligned) > 40
    # an aligned ground-truth patch is a plausible original of its JPEG patch (eq. 5) up to
    # the rare clipped coefficient; a misaligned one's blocks are not the coder's
    assert np.median(aligned) == 0.0
    assert np.median(misaligned) > 0.5
    assert aligned.mean() < 0.1 * misaligned.mean()


def test_transposed_patches_carry_the_transposed_table(coded):
    ds = JpegPatchDataset(coded, DataConfig(patch=32, aligned_fraction=1.0, seed=1))
    tables = {tuple(ds[i]["q"][0, 0, :2].tolist()) for i in range(40)}
    q = jpeg.ijg_table(10)
    assert tables == {(q[0, 0], q[0, 1]), (q[0, 0], q[1, 0])}
    for i in range(40):  # every augmented aligned patch stays inside its (transformed) intervals
        assert _loss_against_own_jpeg(ds[i]) < 1.0


def test_samples_are_a_function_of_seed_and_index(coded):
    a = JpegPatchDataset(coded, DataConfig(patch=32, seed=7))
    b = JpegPatchDataset(coded, DataConfig(patch=32, seed=7))
    c = JpegPatchDataset(coded, DataConfig(patch=32, seed=8))
    for i in (0, 5, 123456):
        assert torch.equal(a[i]["x"], b[i]["x"])
    assert not all(torch.equal(a[i]["x"], c[i]["x"]) for i in range(5))
    it = iter(StreamSampler(start=10, rank=1, world=2))
    assert [next(it) for _ in range(3)] == [21, 23, 25]


def test_colour_patches(chelsea):
    im = code_image("c", chelsea, 10, True)
    assert im.gt.shape == (3, 300, 451) and im.qtable.shape == (3, 8, 8)
    s = JpegPatchDataset([im], DataConfig(patch=32, colour=True))[0]
    assert s["x"].shape == (3, 32, 32) and s["q"].shape == (3, 8, 8)


def test_bad_configs_and_files(coded, tmp_path, camera):
    with pytest.raises(ValueError, match="multiple of 8"):
        JpegPatchDataset(coded, DataConfig(patch=30))
    with pytest.raises(ValueError, match="test is for evaluation only"):
        split_files(tmp_path, ("train", "test"), 0)
    for i in range(4):
        Image.fromarray(camera).save(tmp_path / f"{i}.png")
    (tmp_path / "9_broken.png").write_bytes(b"\x89PNG nope")
    train, held = split_files(tmp_path, ("train",), 1)
    assert len(held) == 1 and len(train) == 4
    images, failures = load_coded(train, DataConfig(patch=32), progress=False)
    assert len(images) == 3 and len(failures) == 1 and "9_broken.png" in failures[0]


def test_scales_add_shrunk_copies_coded_whole(tmp_path, camera):
    from skimage.transform import resize

    Image.fromarray(camera).save(tmp_path / "cam.png")
    cfg = DataConfig(patch=32, quality=10)
    images, failures = load_coded([tmp_path / "cam.png"], cfg, progress=False, scales=(1.0, 0.5, 0.05))
    assert not failures
    # 0.05 gives 26x26, under patch + 8 = 40: left out
    assert [(im.name, im.gt.shape) for im in images] == [("cam.png", (1, 512, 512)), ("cam.png@0.5", (1, 256, 256))]
    half = images[1]
    # an independent resampler (scikit-image, Gaussian anti-aliasing) agrees with Pillow's Lanczos
    ref = resize(camera.astype(np.float64), (256, 256), anti_aliasing=True, preserve_range=True)
    mse = np.mean((half.gt[0].astype(np.float64) - ref) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35  # measured 40.5; without anti-aliasing (nearest) 28.5
    assert abs(half.gt.mean() - camera.mean()) < 1.0  # shrinking keeps the mean brightness
    # coded whole at its own size: the stored JPEG is the shrunk image's own JPEG
    np.testing.assert_array_equal(half.coded[0], jpeg.compress(half.gt[0], 10).pixels)
    assert rescale(camera, 1.0) is camera
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="shrinking only"):
            rescale(camera, bad)


def test_scales_in_the_offline_fallback_and_the_training_config():
    from otmlib.train import TrainConfig

    cfg = DataConfig(patch=64, scales=(1.0, 0.75))
    train, val = sample_coded(cfg)
    plain, _ = sample_coded(DataConfig(patch=64))
    assert [im.name for im in train if "@" not in im.name] == [im.name for im in plain]
    assert {im.name.split("@")[1] for im in train if "@" in im.name} == {"0.75"}
    assert all("@" not in im.name for im in val)  # validation stays at native size
    tc = TrainConfig.from_dict({"data": {"scales": [1.0, 0.75]}})
    assert tc.data.scales == (1.0, 0.75)


def test_resolution_order_and_offline_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("OTM_DATA", raising=False)
    monkeypatch.setattr(datasets, "_REPO_SHARED", tmp_path / "nowhere")
    monkeypatch.setattr(datasets, "CACHE", tmp_path / "cache")
    src = datasets.resolve_bsds500()
    assert src.is_samples and "falling back" in src.message
    monkeypatch.setenv("OTM_DATA", str(tmp_path))
    assert datasets.resolve_bsds500().kind == "env"
    assert datasets.resolve_bsds500(tmp_path).kind == "explicit"
    with pytest.raises(FileNotFoundError, match="no such folder"):
        datasets.resolve_bsds500(tmp_path / "missing")


def test_download_offline_says_what_to_do(tmp_path):
    with pytest.raises(ConnectionError, match="--data DIR or OTM_DATA"):
        datasets.download_bsds500(tmp_path / "b", url="http://127.0.0.1:9/BSR_bsds500.tgz")
    assert not (tmp_path / "b").exists()  # nothing half-written


def test_manifest_verifies_shared_copy(shared_data):
    root = shared_data / "BSDS500"
    assert datasets.verify_bsds500(root) == []
    assert len(datasets.bsds500_manifest()) == 500


def test_manifest_detects_tampering(tmp_path):
    entry = datasets.bsds500_manifest()[0]
    (tmp_path / entry.file).parent.mkdir(parents=True)
    (tmp_path / entry.file).write_bytes(b"x" * entry.nbytes)
    problems = datasets.verify_bsds500(tmp_path, splits=(entry.file.split("/")[0],))
    assert any("checksum differs" in p for p in problems) and any("missing" in p for p in problems)


def test_workers_give_the_same_batches(coded):
    from torch.utils.data import DataLoader

    ds = JpegPatchDataset(coded, DataConfig(patch=32, seed=2))
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=4, sampler=StreamSampler(start=6), num_workers=workers)
        it = iter(loader)
        batches.append([next(it)["x"] for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_cli_data_commands(shared_data, capsys):
    from otmlib.cli import main

    assert main(["data", "verify", str(shared_data / "BSDS500")]) == 0
    assert "all 500 files match" in capsys.readouterr().out
