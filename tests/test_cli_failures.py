"""Issue 16, "Nothing lost, nothing silently wrong": each failure a probe of `otm` found, as a test.

Every test here failed on the code before its fix. Restores use the shipped ``baseline-q10`` on small
(64x64) JPEGs; training runs are a few steps of a width-8 G on three 96x96 images.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from otmlib.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def jpeg_at(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=10)
    return path


def restore(*args: str) -> int:
    return main(["restore", *args, "--model", "baseline-q10", "--quiet"])


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def otm_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("otm")]


# ------------------------------------------------------------------ 1. outputs of one command collide
def test_inputs_with_the_same_name_get_outputs_apart(tmp_path, camera, capsys):
    a = jpeg_at(tmp_path / "a" / "x.jpg", camera[:64, :64])
    b = jpeg_at(tmp_path / "b" / "x.jpg", camera[64:128, :64])
    c = jpeg_at(tmp_path / "b" / "x.jpeg", camera[128:192, :64])
    out = tmp_path / "out"
    assert restore(str(a), str(b), str(c), "-o", str(out), "--force") == 0
    err = capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["x-2_baseline-q10.png", "x-3_baseline-q10.png", "x_baseline-q10.png"], names
    assert "wrote 3 file(s)" in err  # the summary counts files that exist
    assert "x-2_baseline-q10" in err  # the renaming is said
    for src, name in ((a, "x"), (b, "x-2"), (c, "x-3")):  # each output is its own input's restoration
        alone = tmp_path / f"alone-{name}"
        assert restore(str(src), "-o", str(alone)) == 0
        assert np.array_equal(pixels(out / f"{name}_baseline-q10.png"), pixels(alone / "x_baseline-q10.png"))
    # the same command again names its outputs the same way (--force replaces them, nothing piles up)
    assert restore(str(a), str(b), str(c), "-o", str(out), "--force") == 0
    assert len(list(out.iterdir())) == 3


# ------------------------------------------------------------------ 2. two restores at once into one folder
def test_two_restores_at_once_never_lose_an_output(tmp_path, camera, monkeypatch, capsys):
    """Both pass the exists-check before either writes (a barrier holds them there): one must be refused."""
    import otmlib.restore

    a = jpeg_at(tmp_path / "a" / "x.jpg", camera[:64, :64])
    b = jpeg_at(tmp_path / "b" / "x.jpg", camera[64:128, :64])
    out = tmp_path / "out"
    out.mkdir()
    real = otmlib.restore.restore_file
    barrier = threading.Barrier(2, timeout=60)

    def restore_then_wait(*args, **kw):  # runs after the exists-check and before the write
        res = real(*args, **kw)
        barrier.wait()
        return res

    monkeypatch.setattr(otmlib.restore, "restore_file", restore_then_wait)
    rcs: dict[str, int] = {}
    threads = [threading.Thread(target=lambda s=s: rcs.__setitem__(str(s), restore(str(s), "-o", str(out))))
               for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    err = capsys.readouterr().err
    assert sorted(rcs.values()) == [0, 1], (rcs, err)  # one written, one refused: neither silently lost
    winner = next(Path(s) for s, rc in rcs.items() if rc == 0)
    monkeypatch.setattr(otmlib.restore, "restore_file", real)
    assert restore(str(winner), "-o", str(tmp_path / "alone")) == 0
    assert np.array_equal(pixels(out / "x_baseline-q10.png"), pixels(tmp_path / "alone" / "x_baseline-q10.png"))
    assert "appeared while it was being written" in err
    assert sorted(p.name for p in out.iterdir()) == ["x_baseline-q10.png"]  # no temporary files left


# ------------------------------------------------------------------ 3. two trainings at once into one folder
@pytest.fixture
def train_setup(tmp_path, camera, chelsea):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, img in enumerate((camera[:96, :96], camera[200:296, 200:296], chelsea[:96, :96])):
        Image.fromarray(img).save(imgs / f"{i}.png")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("gen: {width: 8, branch_units: 1, agg_units: 1}\ndata: {val_holdout: 1, patch: 32}\n"
                   "batch_size: 2\nlog_every: 1\nval_every: 100000\n")
    return cfg, imgs


def train_args(setup, out: Path, steps: int, *extra: str) -> list[str]:
    cfg, imgs = setup
    return ["train", "baseline", "--config", str(cfg), "--data", str(imgs), "--out", str(out),
            "--steps", str(steps), "--no-bf16", *extra]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.slow
def test_two_trainings_at_once_into_one_folder_one_is_refused(tmp_path, train_setup):
    """Two processes, released together by a file barrier after their imports: one trains, one is refused."""
    out = tmp_path / "run"
    go = tmp_path / "go"
    child = ("import sys, time, pathlib; import otmlib.cli, otmlib.train, otmlib.data\n"
             "pathlib.Path(sys.argv[1]).touch()\n"
             "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.01)\n"
             "sys.exit(otmlib.cli.main(sys.argv[3:]))\n")
    procs = [subprocess.Popen([sys.executable, "-c", child, str(tmp_path / f"ready{i}"), str(go),
                               *train_args(train_setup, out, 40)],
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"err{i}", "wb"))
             for i in range(2)]
    try:
        while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
            assert all(p.poll() is None for p in procs), [(tmp_path / f"err{i}").read_text() for i in range(2)]
        go.touch()
        rcs = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errs = [(tmp_path / f"err{i}").read_text() for i in range(2)]
    assert sorted(rcs) == [0, 2], (rcs, errs)
    refused = errs[rcs.index(2)]
    winner_pid = procs[rcs.index(0)].pid
    assert f"pid {winner_pid}" in refused and str(out) in refused, refused
    steps = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()
             if "l2" in json.loads(ln)]
    assert steps == list(range(1, 41))  # every step once
    assert not (out / "run.lock").exists()  # released on exit


def test_a_held_run_folder_is_refused_before_anything_changes(tmp_path, train_setup, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                  "started": "2024-01-01T00:00:00"}))
        assert main(train_args(train_setup, out, 2)) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    line = next(ln for ln in otm_lines(err) if "in use" in ln)
    assert f"pid {holder.pid}" in line and str(out) in line
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # no log, no data.json, lock left to its owner


def test_a_stale_lock_is_taken_over_and_the_lock_is_released(tmp_path, train_setup, capsys):
    out = tmp_path / "run"
    out.mkdir()
    pid = dead_pid()
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "x"}))
    assert main(train_args(train_setup, out, 2)) == 0
    assert f"taking over the lock of pid {pid}" in capsys.readouterr().err
    assert (out / "last.pt").exists() and not (out / "run.lock").exists()
    # released on an exception too: a second run without --resume is refused, and leaves no lock
    assert main(train_args(train_setup, out, 2)) == 2
    assert "already holds a run" in capsys.readouterr().err and not (out / "run.lock").exists()


def test_resume_removes_checkpoints_a_killed_save_left(tmp_path, train_setup, capsys):
    out = tmp_path / "run"
    assert main(train_args(train_setup, out, 2)) == 0
    leftover = out / f"last.pt.tmp{dead_pid()}"  # what a kill -9 during atomic_save leaves
    leftover.write_bytes(b"half a checkpoint")
    assert main(train_args(train_setup, out, 3, "--resume")) == 0
    assert not leftover.exists() and "removed" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["data.json", "last.pt", "log.jsonl"]


# ------------------------------------------------------------------ 4. damaged weights, non-finite outputs
def test_weights_with_nan_are_refused_at_load(tmp_path, camera, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from otmlib.zoo import resolve

    src = resolve("baseline-q10")
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[key].view(-1)[0] = float("nan")  # a valid header over damaged data
    bad = tmp_path / "damaged.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    src_jpg = jpeg_at(tmp_path / "x.jpg", camera[:64, :64])
    out = tmp_path / "out"
    for extra in ([], ["--no-project"]):
        rc = main(["restore", str(src_jpg), "-o", str(out), "--model", str(bad), "--quiet", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "damaged.safetensors" in err and "NaN" in err, err
        assert not out.exists()


def test_a_non_finite_output_is_never_written(tmp_path, camera, monkeypatch, capsys):
    """Finite weights that still overflow (or a G damaged in memory): refuse before the uint8 conversion."""
    import otmlib.zoo
    from otmlib.restore import restore_luma

    real = otmlib.zoo.load_generator

    def broken(*args, **kw):
        G, meta = real(*args, **kw)
        with torch.no_grad():
            next(p for p in G.parameters() if p.dim() == 1).fill_(float("inf"))
        return G, meta

    G, _ = broken("baseline-q10")
    with pytest.raises(ValueError, match="non-finite"):
        restore_luma(G, camera[:64, :64])
    monkeypatch.setattr(otmlib.zoo, "load_generator", broken)
    src = jpeg_at(tmp_path / "x.jpg", camera[:64, :64])
    out = tmp_path / "out"
    for extra in ([], ["--no-project"]):
        assert restore(str(src), "-o", str(out), *extra) == 1
        assert "non-finite" in capsys.readouterr().err
        assert not out.exists()  # nothing written (and no empty folder left)


# ------------------------------------------------------------------ 5. arguments checked up front
@pytest.mark.parametrize("argv", [
    ["restore", "X", "-o", "OUT", "-n", "0"],
    ["restore", "X", "-o", "OUT", "-n", "-1"],
    ["restore", "X", "-o", "OUT", "--tile", "0"],
    ["restore", "X", "-o", "OUT", "--tile", "-8"],
    ["restore", "X", "-o", "OUT", "--tile", "7"],
    ["restore", "X", "-o", "OUT", "--tile", "56"],  # under 64: the 32-pixel overlap does not fit
    ["restore", "X", "-o", "OUT", "--tile", "100"],  # not on the 8x8 grid
    ["restore", "X", "-o", "OUT", "--seed", str(2**64)],
    ["restore", "X", "-o", "OUT", "--seed", "-1"],
    ["restore", "X", "-o", "OUT", "--seed", str(2**64 - 1), "-n", "2"],  # the second candidate's seed
    ["restore", "X", "-o", "OUT", "--quality", "0"],
    ["evaluate", "--data", "X", "-q", "10", "--limit", "-1"],
    ["evaluate", "--data", "X", "-q", "10", "--limit", "0"],
    ["evaluate", "--data", "X", "-q", "10", "--seed", str(2**64)],
    ["evaluate", "--data", "X", "-q", "101"],
])
def test_bad_arguments_are_refused_by_the_parser(argv, tmp_path, camera, capsys):
    src = jpeg_at(tmp_path / "x.jpg", camera[:64, :64])
    argv = [str(src) if a == "X" and argv[0] == "restore" else str(tmp_path) if a == "X" else
            str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(otm_lines(err)) == 1 and "error:" in otm_lines(err)[0], err
    assert not (tmp_path / "out").exists()


def test_the_edges_of_the_ranges_work(tmp_path, camera):
    src = jpeg_at(tmp_path / "x.jpg", camera[:100, :100])
    assert main(["restore", str(src), "-o", str(tmp_path / "o"), "--model", "one-to-many-q10",
                 "--seed", str(2**64 - 1), "--tile", "64", "--quiet"]) == 0
    assert (tmp_path / "o" / f"x_one-to-many-q10_seed{2**64 - 1}.png").exists()


# ------------------------------------------------------------------ 6. config files: every level, every type
def test_config_typos_are_one_line_at_every_level(tmp_path, capsys):
    for text, key, allowed in (("steps: 2\nstepz: 3\n", "stepz", "steps"),
                               ("gen: {widht: 8}\n", "gen.widht", "width"),
                               ("data: {qualty: 10}\n", "data.qualty", "quality"),
                               ("gan: {candidate: 2}\n", "gan.candidate", "candidates"),
                               ("weights: {l4: 1.0}\n", "weights.l4", "l3"),
                               ("data: {quality: ten}\n", "data.quality", "whole number"),
                               ("lr: fast\n", "lr", "number"),
                               ("data: 5\n", "data", "mapping")):
        cfg = tmp_path / "c.yaml"
        cfg.write_text(text)
        assert main(["train", "baseline", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert len(otm_lines(err)) == 1 and "Traceback" not in err, err
        assert str(cfg) in err and key in err and allowed in err, err
        assert not (tmp_path / "run").exists()


def test_config_values_get_their_declared_types():
    from otmlib.config import ConfigError
    from otmlib.train import TrainConfig

    # what YAML 1.1 (PyYAML) reads from `lr: 1e-4`, `quality: '10'`, `scales: [1, 0.75]`
    cfg = TrainConfig.from_dict({"lr": "1e-4", "steps": "1e4", "data": {"quality": "10", "scales": [1, "0.75"],
                                                                        "colour": "false", "qualities": ["5", 95]},
                                 "gen": {"width": 8.0}, "gan": {"spread_floor": 2}})
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.steps == 10_000 and isinstance(cfg.steps, int)
    assert cfg.data.quality == 10 and isinstance(cfg.data.quality, int)
    assert cfg.data.scales == (1.0, 0.75) and cfg.data.colour is False
    assert cfg.data.qualities == (5, 95) and all(isinstance(q, int) for q in cfg.data.qualities)  # a fixed-length tuple
    assert cfg.gen.width == 8 and isinstance(cfg.gen.width, int)
    assert cfg.gan.spread_floor == 2.0 and isinstance(cfg.gan.spread_floor, float)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # a checkpoint's saved config reads back the same
    for bad, key in (({"steps": 2.5}, "steps"), ({"bf16": "maybe"}, "bf16"), ({"gen": {"width": True}}, "gen.width"),
                     ({"data": {"scales": 1.0}}, "data.scales"), ({"backbone": 3}, "backbone"),
                     ({"lr": float("nan")}, "lr"), ({"data": {"qualities": [5, 9.5]}}, r"data.qualities\[1\]"),
                     ({"data": {"qualities": [5]}}, "data.qualities")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            TrainConfig.from_dict(bad)


def test_a_shared_generator_config_is_not_changed():
    from otmlib.models import GeneratorConfig
    from otmlib.train import TrainConfig

    gen = GeneratorConfig(width=8)
    base = TrainConfig(mode="baseline", gen=gen)
    many = TrainConfig(mode="one-to-many", gen=gen)
    assert gen.noise is True and base.gen.noise is False and many.gen.noise is True  # gen itself untouched


# ------------------------------------------------------------------ 7. `| head`
def test_piping_into_head_exits_quietly(tmp_path, camera):
    src = jpeg_at(tmp_path / "x.jpg", camera[:64, :64])
    proc = subprocess.Popen([sys.executable, "-m", "otmlib.cli", "info", *[str(src)] * 2000], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()  # what `head -1` reads before it leaves
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and first.startswith(str(src).encode())
    assert err == "", err


# ------------------------------------------------------------------ 8. rough edges
def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, camera, monkeypatch, capsys, train_setup):
    src = jpeg_at(tmp_path / "x.jpg", camera[:64, :64])
    real = Path.mkdir

    def read_only(self, *a, **kw):
        if "ro" in self.parts:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert restore(str(src), "-o", str(tmp_path / "ro" / "out")) == 2
    err = capsys.readouterr().err
    assert otm_lines(err) == [ln for ln in err.splitlines() if ln.strip()] and len(otm_lines(err)) == 1, err
    assert "Read-only file system" in err and "-o" in err
    assert main(train_args(train_setup, tmp_path / "ro" / "run", 2)) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "Traceback" not in err


def test_o_naming_an_existing_file(tmp_path, camera, capsys):
    src = jpeg_at(tmp_path / "x.jpg", camera[:64, :64])
    (tmp_path / "taken").write_text("mine")
    assert restore(str(src), "-o", str(tmp_path / "taken")) == 2
    err = capsys.readouterr().err
    assert "-o names an existing file" in err and "taken" in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_evaluate_exits_1_when_it_skipped_images(tmp_path, camera, capsys):
    d = tmp_path / "data"
    d.mkdir()
    Image.fromarray(camera[:64, :64]).save(d / "a.png")
    Image.fromarray(camera[64:128, :64]).save(d / "b.png")
    data = (d / "a.png").read_bytes()
    (d / "c.png").write_bytes(data[: len(data) // 3])  # truncated
    rc = main(["evaluate", "--data", str(d), "-q", "10", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert "(2 images" in cap.out and "skipped" in cap.err and "c.png" in cap.err
    assert main(["evaluate", "--data", str(d), "-q", "10", "--no-progress", "--limit", "2"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["evaluate", "-h"])
    assert "1 when unreadable images were skipped" in " ".join(capsys.readouterr().out.split())  # documented


def test_quality_for_a_jpeg_input_is_said_to_be_ignored(tmp_path, camera, capsys):
    src = jpeg_at(tmp_path / "x.jpg", camera[:64, :64])
    assert restore(str(src), "-o", str(tmp_path / "o"), "--quality", "20") == 0
    assert "--quality 20 ignored" in capsys.readouterr().err


def test_restoring_into_the_input_folder_skips_earlier_outputs(tmp_path, camera, capsys):
    photos = tmp_path / "photos"
    jpeg_at(photos / "x.jpg", camera[:64, :64])
    assert restore(str(photos), "-o", str(photos)) == 0
    assert restore(str(photos), "-o", str(photos), "--force") == 0  # the PNG written above is not an input
    err = capsys.readouterr().err
    assert "restored 1 of 1 image(s)" in err.splitlines()[-1] and "skipped 1 earlier output" in err
    assert sorted(p.name for p in photos.iterdir()) == ["x.jpg", "x_baseline-q10.png"]


def test_a_failed_restore_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    assert restore(str(tmp_path / "missing.jpg"), "-o", str(out)) == 1
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    assert restore(str(tmp_path / "missing.jpg"), "-o", str(existing)) == 1
    assert existing.is_dir()  # a folder that was there stays


def test_subfolders_of_an_input_folder_are_mentioned(tmp_path, camera, capsys):
    photos = tmp_path / "photos"
    jpeg_at(photos / "x.jpg", camera[:64, :64])
    jpeg_at(photos / "holiday" / "y.jpg", camera[64:128, :64])
    assert restore(str(photos), "-o", str(tmp_path / "out")) == 0
    note = next(ln for ln in capsys.readouterr().err.splitlines() if "subfolder" in ln)
    assert "holiday" in note and str(photos) in note


def test_evaluate_candidates_skips_unreadable_images_and_exits_1(tmp_path, camera, capsys):
    d = tmp_path / "data"
    d.mkdir()
    Image.fromarray(camera[:96, :128]).save(d / "a.png")
    data = (d / "a.png").read_bytes()
    (d / "c.png").write_bytes(data[: len(data) // 3])  # truncated
    rc = main(["evaluate", "--data", str(d), "-q", "10", "--model", "one-to-many-q10", "-n", "2", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    assert "1 images, 2 candidates each" in cap.out and "skipped" in cap.err and "c.png" in cap.err
    (d / "a.png").unlink()
    assert main(["evaluate", "--data", str(d), "-q", "10", "--model", "one-to-many-q10", "-n", "2",
                 "--no-progress"]) == 2
    assert "no readable images" in capsys.readouterr().err
