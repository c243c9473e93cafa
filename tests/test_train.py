"""Trainers: bit-identical resume, NaN guard, atomic checkpoints, logs, export, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from otmlib import train as train_mod
from otmlib.data import DataConfig, code_image
from otmlib.models import GeneratorConfig
from otmlib.train import TrainConfig, Trainer, TrainingDiverged, load_checkpoint
from otmlib.zoo import export_generator, load_generator, read_metadata

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(camera, chelsea):
    from skimage import data

    train = [code_image("camera", camera, 10, False), code_image("chelsea", chelsea, 10, False)]
    val = [code_image("coins", data.coins()[:96, :128], 10, False)]
    return train, val


def tiny(mode: str, out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        mode=mode,
        gen=GeneratorConfig(width=8, branch_units=1, agg_units=1),
        data=DataConfig(patch=32, seed=1),
        backbone="efficientnet-lite0",
        batch_size=4,
        steps=6,
        epoch_samples=8,  # 2 steps per epoch: D joins at step 2
        bf16=False,
        log_every=1,
        val_every=3,
        ckpt_every=3,
        out=str(out),
        **kw,
    )


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["baseline", "one-to-many"])
def test_resume_is_bit_identical(images, tmp_path, mode):
    train, val = images
    one = Trainer(tiny(mode, tmp_path / "one"), train, val, progress=False)
    one.fit(6)
    two = Trainer(tiny(mode, tmp_path / "two"), train, val, progress=False)
    two.fit(3)
    again = Trainer(tiny(mode, tmp_path / "two"), train, val, progress=False)
    assert again.resume() and again.step == 3
    again.fit(6)
    assert _same_state(one.G.state_dict(), again.G.state_dict())
    if mode == "one-to-many":
        assert _same_state(one.D.state_dict(), again.D.state_dict())
    # the log of the resumed run has each step once, and the same numbers
    log_one = [r for r in one.read_log() if "lp" in r or "l2" in r]
    log_two = [r for r in again.read_log() if "lp" in r or "l2" in r]
    assert [r["step"] for r in log_two] == list(range(1, 7))
    key = "l2" if mode == "baseline" else "lp"
    assert [r[key] for r in log_one] == [r[key] for r in log_two]


def test_log_records_losses_validation_speed_and_backbone(images, tmp_path):
    train, val = images
    t = Trainer(tiny("one-to-many", tmp_path), train, val, progress=False)
    t.fit(4)
    log = t.read_log()
    start = log[0]
    assert start["event"] == "start" and "efficientnet-lite0" in start["backbone"]
    steps = [r for r in log if "lp" in r]
    assert all({"lj", "total", "patches_per_s", "wall"} <= r.keys() for r in steps)
    assert "ln" not in steps[0] and "ln" in steps[-1] and "d" in steps[-1]  # no D in epoch 0
    vals = [r for r in log if "val_psnr" in r]
    assert vals and 10 < vals[0]["val_psnr"] < 60 and "val_psnrb" in vals[0]


def test_nan_stops_with_message_and_keeps_last_checkpoint(images, tmp_path):
    train, val = images
    t = Trainer(tiny("baseline", tmp_path), train, val, progress=False)
    t.fit(3)
    before = load_checkpoint(t.ckpt_path)
    batch = next(iter(torch.utils.data.DataLoader(t.dataset, batch_size=4, sampler=range(4))))
    batch["jpeg"][0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="last.pt"):
        t.train_step(batch)
    after = load_checkpoint(t.ckpt_path)
    assert after["step"] == 3 and _same_state(before["G"], after["G"])


def test_interrupted_save_leaves_previous_checkpoint(images, tmp_path, monkeypatch):
    train, val = images
    t = Trainer(tiny("baseline", tmp_path), train, val, progress=False)
    t.fit(3)

    def dying_save(obj, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.torch, "save", dying_save)
    t.step = 4
    with pytest.raises(KeyboardInterrupt):
        t.save()
    assert load_checkpoint(t.ckpt_path)["step"] == 3


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gen: {width: 8, branch_units: 1, agg_units: 1}\nckpt_every: 100000\nckpt_minutes: 1000\n"
                   "batch_size: 2\nlog_every: 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "otmlib.cli", "train", "baseline", "--config", str(cfg), "--out", str(out),
         "--steps", "100000", "--patch", "32", "--no-bf16"],
        # stderr to a file: an unread pipe fills up with progress bars and blocks the child
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "stderr.txt", "wb"),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(2.0)  # some steps in, long before any periodic checkpoint
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    ck = load_checkpoint(out / "last.pt")
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "stopped" and log[-1]["step"] == ck["step"] >= 1


@pytest.mark.slow
def test_killed_process_leaves_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gen: {width: 8, branch_units: 1, agg_units: 1}\nckpt_every: 1\nbatch_size: 2\nlog_every: 1\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "otmlib.cli", "train", "baseline", "--config", str(cfg), "--out", str(out),
         "--steps", "100000", "--patch", "32", "--no-bf16"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.3)  # it is saving every step: the kill lands mid-run, maybe mid-write
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] >= 1


def test_export_and_load_release_weights(images, tmp_path):
    train, val = images
    t = Trainer(tiny("one-to-many", tmp_path / "run"), train, val, progress=False)
    t.fit(3)
    out = export_generator(load_checkpoint(t.ckpt_path), tmp_path / "m.safetensors",
                           data_description="two samples", data_sha256="abc", scores={"psnr": 1.0})
    meta = read_metadata(out)
    assert meta["steps"] == "3" and meta["mode"] == "one-to-many" and "efficientnet-lite0" in meta["backbone"]
    assert json.loads(meta["gen_config"])["width"] == 8 and meta["data_sha256"] == "abc"
    G, _ = load_generator(out)
    x = torch.rand(1, 1, 40, 48) * 255
    t.G.eval()
    with torch.no_grad():
        torch.testing.assert_close(G(x, seed=5), t.G(x, seed=5))
    with pytest.raises(FileExistsError):
        export_generator(load_checkpoint(t.ckpt_path), out, data_description="", data_sha256="")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_weight_files_are_refused_without_unpickling(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="junk.safetensors: not a safetensors"):
        load_generator(junk)
    pickled = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(marker)}, pickled)  # a pickle that runs a command when unpickled
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(pickled)
    assert not marker.exists()
    with pytest.raises(ValueError, match="unknown model"):
        load_generator("no-such-model")


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    script = ROOT / "tests" / "scripts" / "ddp_train.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         str(script), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sums = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sums[0]["G"] == pytest.approx(sums[1]["G"], rel=0, abs=0)  # DDP kept the replicas equal
    assert sums[0]["D"] == sums[1]["D"]
    assert sums[0]["G"] != sums[0]["G_init"]  # and they did train
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4


def test_cli_export_records_measured_scores(images, tmp_path, camera, capsys):
    from PIL import Image

    from otmlib.cli import main

    train, val = images
    t = Trainer(tiny("baseline", tmp_path / "run"), train, val, progress=False)
    t.fit(2)
    folder = tmp_path / "eval"
    folder.mkdir()
    Image.fromarray(camera[:64, :64]).save(folder / "a.png")
    out = tmp_path / "b.safetensors"
    assert main(["export", str(t.ckpt_path), "-o", str(out), "--evaluate", str(folder)]) == 0
    scores = json.loads(read_metadata(out)["scores"])["eval Q10"]
    assert scores["n"] == 1 and 10 < scores["psnr"] < 60
    assert main(["export", str(t.ckpt_path), "-o", str(out)]) == 2  # exists: refused without --force
    assert "--force" in capsys.readouterr().err


def test_resume_with_a_new_learning_rate(images, tmp_path):
    train, val = images
    Trainer(tiny("baseline", tmp_path), train, val, progress=False).fit(3)
    t = Trainer(tiny("baseline", tmp_path, lr=5e-5), train, val, progress=False)
    assert t.resume() and t.optG.param_groups[0]["lr"] == 2e-4  # the checkpoint's, until a step is taken
    t.fit(4)
    assert t.optG.param_groups[0]["lr"] == 5e-5  # the resumed step ran at the new rate
    resumed = [r for r in t.read_log() if r.get("event") == "resume"]
    assert [(r["lr"], r["steps"], r["target"]) for r in resumed] == [(5e-5, t.cfg.steps, 4)]


def test_fine_tuning_starts_from_the_parent_and_carries_its_cost(images, tmp_path):
    """Q20 from Q10: G's weights move, the optimiser and step start afresh, CPU-hours add up."""
    train, val = images
    parent = Trainer(tiny("baseline", tmp_path / "q10"), train, val, progress=False)
    parent.fit(3)
    ck = load_checkpoint(parent.ckpt_path)
    child = Trainer(tiny("baseline", tmp_path / "q20", init=str(parent.ckpt_path)), train, val, progress=False)
    entry = child.init_from(parent.ckpt_path)
    assert _same_state(child.G.state_dict(), ck["G"]) and child.step == 0
    assert entry["steps"] == 3 and entry["quality"] == 10
    assert child.cpu == pytest.approx(ck["cpu"]) and child.cpu > 0
    child.fit(2)
    assert child.cpu > ck["cpu"]  # its own steps on top of the parent's
    start = child.read_log()[0]
    assert start["event"] == "start" and start["lineage"][0]["from"] == str(parent.ckpt_path)
    meta = read_metadata(export_generator(load_checkpoint(child.ckpt_path), tmp_path / "q20.safetensors",
                                          data_description="", data_sha256=""))
    assert meta["steps"] == "2" and meta["steps_total"] == "5"
    assert json.loads(meta["lineage"])[0]["steps"] == 3
    assert float(meta["cpu_hours"]) == pytest.approx(child.cpu / 3600, abs=0.006)
    # a release file works as a parent too, and a resumed child keeps its lineage
    grand = Trainer(tiny("baseline", tmp_path / "q5"), train, val, progress=False)
    assert [e["steps"] for e in [*json.loads(meta["lineage"]), grand.init_from(tmp_path / "q20.safetensors")]] == [3, 2]
    assert len(grand.lineage) == 2
    again = Trainer(tiny("baseline", tmp_path / "q20"), train, val, progress=False)
    assert again.resume() and again.lineage == child.lineage


def test_fine_tuning_refuses_a_different_network(images, tmp_path):
    train, val = images
    Trainer(tiny("baseline", tmp_path / "a"), train, val, progress=False).fit(1)
    other = tiny("baseline", tmp_path / "b")
    other.gen.width = 16
    with pytest.raises(ValueError, match="same generator settings"):
        Trainer(other, train, val, progress=False).init_from(tmp_path / "a" / "last.pt")
    with pytest.raises(ValueError, match="not a readable otm checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"junk")
        Trainer(tiny("baseline", tmp_path / "c"), train, val, progress=False).init_from(tmp_path / "junk.pt")


def test_fine_tuning_can_fold_shift_and_average(images, tmp_path):
    """A run without shift-and-average starts from one with it: same outputs at step 0, noted in the lineage."""
    train, val = images
    parent = Trainer(tiny("baseline", tmp_path / "sa"), train, val, progress=False)
    parent.fit(2)
    cfg = tiny("baseline", tmp_path / "folded")
    cfg.gen.shift_and_average, cfg.gen.deconv_kernel = False, cfg.gen.kernel + cfg.gen.stride - 1
    child = Trainer(cfg, train, val, progress=False)
    entry = child.init_from(parent.ckpt_path)
    assert entry["folded_shift_and_average"]
    x = torch.rand(2, 1, 40, 56) * 255
    parent.G.eval(), child.G.eval()
    with torch.no_grad():
        torch.testing.assert_close(child.G(x), parent.G(x), rtol=0, atol=1e-3)
    wrong = tiny("baseline", tmp_path / "wrong")
    wrong.gen.shift_and_average = False  # a 4x4 deconv cannot hold the folded 5x5 filter
    with pytest.raises(ValueError, match="same generator settings"):
        Trainer(wrong, train, val, progress=False).init_from(parent.ckpt_path)


def _small_parent(images, tmp_path) -> Trainer:
    """A tiny baseline run trained 2 steps: the parent the growing tests start from."""
    parent = Trainer(tiny("baseline", tmp_path / "small"), *images, progress=False)
    parent.fit(2)
    return parent


def test_fine_tuning_can_add_identity_units(images, tmp_path):
    """A run with more aggregation units starts from a smaller one: same outputs at step 0, noted in the lineage."""
    train, val = images
    parent = _small_parent(images, tmp_path)
    cfg = tiny("baseline", tmp_path / "grown")
    cfg.gen.agg_units += 2
    child = Trainer(cfg, train, val, progress=False)
    entry = child.init_from(parent.ckpt_path)
    assert entry["added_identity_units"] == 2
    x = torch.rand(2, 1, 40, 56) * 255
    parent.G.eval(), child.G.eval()
    with torch.no_grad():
        torch.testing.assert_close(child.G(x), parent.G(x), rtol=0, atol=1e-4)
    fewer = tiny("baseline", tmp_path / "fewer")
    fewer.gen.agg_units = 0  # units are only ever added
    with pytest.raises(ValueError, match="same generator settings"):
        Trainer(fewer, train, val, progress=False).init_from(parent.ckpt_path)


def test_fine_tuning_can_widen_and_grow_at_once(images, tmp_path):
    """A run with wider units and more of them starts from a smaller one: same outputs, both noted."""
    train, val = images
    parent = _small_parent(images, tmp_path)
    cfg = tiny("baseline", tmp_path / "wide")
    cfg.gen.agg_units += 1
    cfg.gen.inner_width = 2 * cfg.gen.width
    child = Trainer(cfg, train, val, progress=False)
    entry = child.init_from(parent.ckpt_path)
    assert entry["added_identity_units"] == 1 and entry["widened_units_to"] == 2 * cfg.gen.width
    x = torch.rand(2, 1, 40, 56) * 255
    parent.G.eval(), child.G.eval()
    with torch.no_grad():
        torch.testing.assert_close(child.G(x), parent.G(x), rtol=0, atol=1e-4)
    w = cfg.gen.width
    second_conv = child.G.aggregate[0].body[5].weight  # reads the new filters through zeros at step 0
    assert not second_conv[:, w:].any()
    child.fit(2)  # and it trains: the new filters come into use
    assert child.step == 2 and second_conv[:, w:].abs().sum() > 0
    narrower = tiny("baseline", tmp_path / "narrower")
    narrower.gen.inner_width = cfg.gen.width // 2  # filters are only ever added
    with pytest.raises(ValueError, match="same generator settings"):
        Trainer(narrower, train, val, progress=False).init_from(child.ckpt_path)
    same = tiny("baseline", tmp_path / "same")
    same.gen.inner_width = same.gen.width  # the same network as inner_width None
    assert "widened_units_to" not in Trainer(same, train, val, progress=False).init_from(parent.ckpt_path)


def test_bf16_only_where_the_cpu_has_it(monkeypatch):
    from otmlib.utils import bf16_plan

    monkeypatch.setenv("OTM_BF16", "0")
    on, why = bf16_plan(True, torch.device("cpu"))
    assert not on and "no native bfloat16" in why
    monkeypatch.setenv("OTM_BF16", "1")
    assert bf16_plan(True, torch.device("cpu"))[0]
    assert bf16_plan(False, torch.device("cpu")) == (False, "float32")
    assert not bf16_plan(True, torch.device("cuda"))[0]


def test_native_bf16_probe_agrees_with_the_kernels_cpu_flags(monkeypatch):
    from otmlib.utils import cpu_has_native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = set(cpuinfo.read_text().split())
    monkeypatch.delenv("OTM_BF16", raising=False)
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_weight_average_follows_its_formula_and_leaves_g_alone(images, tmp_path):
    """avg_1 = G_1, avg_t = d avg_{t-1} + (1 - d) G_t, by hand over three steps; G's own steps are unchanged."""
    train, val = images
    plain = Trainer(tiny("baseline", tmp_path / "plain"), train, val, progress=False)
    plain.fit(3)
    d = 0.9
    t = Trainer(tiny("baseline", tmp_path / "avg", ema=d), train, val, progress=False)
    loader = iter(torch.utils.data.DataLoader(t.dataset, batch_size=4, sampler=train_mod.StreamSampler(0)))
    t._start_ema()
    expected: dict = {}
    for _ in range(3):
        t.train_step(next(loader))
        t.step += 1
        for k, v in t.G.state_dict().items():
            if v.is_floating_point():  # weights and BN statistics (the step counter is not a statistic)
                expected[k] = d * expected[k] + (1 - d) * v.double() if k in expected else v.double()
    assert _same_state(t.G.state_dict(), plain.G.state_dict())  # averaging is passive
    got = t.G_eval.state_dict()
    assert expected.keys() and any(".running_var" in k for k in expected)
    for k, v in expected.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    moved = [k for k in expected if not torch.equal(got[k], t.G.state_dict()[k])]
    assert moved, "the average should differ from the last step's G"


def test_weight_average_is_checkpointed_validated_and_shipped(images, tmp_path):
    train, val = images
    full = Trainer(tiny("baseline", tmp_path / "full", ema=0.5), train, val, progress=False)
    full.fit(6)
    half = Trainer(tiny("baseline", tmp_path / "half", ema=0.5), train, val, progress=False)
    half.fit(3)
    again = Trainer(tiny("baseline", tmp_path / "half", ema=0.5), train, val, progress=False)
    assert again.resume() and again.G_avg is not None and int(again.G_avg.n_averaged) == 3
    again.fit(6)
    assert _same_state(full.G_eval.state_dict(), again.G_eval.state_dict())  # resumed bit-identically
    assert full.G_eval is full.G_avg.module
    # validation scores the average: swapping the average for G changes the score
    v_avg = full.validate()["val_psnr"]
    G_avg, full.G_avg = full.G_avg, None
    assert full.validate()["val_psnr"] != v_avg
    full.G_avg = G_avg
    ck = load_checkpoint(full.ckpt_path)
    out = export_generator(ck, tmp_path / "avg.safetensors", data_description="test", data_sha256="")
    G, meta = load_generator(out)
    assert _same_state(G.state_dict(), {k: v.float() if v.is_floating_point() else v for k, v in ck["G_ema"].items()})
    assert "moving average" in meta["weights"] and "0.5" in meta["weights"]
    child = Trainer(tiny("baseline", tmp_path / "child", init=str(full.ckpt_path)), train, val, progress=False)
    child.init_from(full.ckpt_path)
    assert _same_state(child.G.state_dict(), ck["G_ema"])  # fine-tuning starts from what was shipped


def test_weight_average_decay_is_checked():
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)


def test_cosine_schedule_matches_torch_and_is_what_the_optimiser_used(images, tmp_path):
    train, val = images
    cfg = tiny("baseline", tmp_path, lr=1e-3, lr_schedule="cosine", lr_end=1e-5)
    t = Trainer(cfg, train, val, progress=False)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=cfg.steps, eta_min=cfg.lr_end)
    for step in range(cfg.steps + 1):
        assert t.lr_at(step) == pytest.approx(ref.get_last_lr()[0], rel=1e-12)
        ref_opt.step()
        ref.step()
    assert t.lr_at(0) == cfg.lr and t.lr_at(cfg.steps) == pytest.approx(cfg.lr_end)
    t.fit(4)
    assert t.optG.param_groups[0]["lr"] == t.lr_at(3)  # step 4 (0-based 3) ran with its scheduled rate
    logged = [r["lr"] for r in t.read_log() if "l2" in r]
    assert logged == [t.lr_at(s) for s in range(4)]
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_run_log_and_validation_table_read_both_run_folders(tmp_path):
    import json

    from otmlib.train import run_log, validation_table

    def write(folder, run, records):
        d = tmp_path / folder / run
        d.mkdir(parents=True)
        (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    write("checkpoints", "shipped", [{"step": 0, "event": "start"}] +
          [{"step": s, "d_real": 0.9, "d_fake": 0.1 * (s // 10), "d_acc_real": 1.0, "grad_ln": s / 1000}
           for s in range(10, 130, 10)] +
          [{"step": 120, "val_psnr": 27.0, "val_div_over_rmse": 0.7, "val_textured_flat": 3.2, "val_div_all": 6.0}])
    write("experiments", "control", [{"step": 50, "val_psnr": 28.0}])
    write("experiments", "shipped", [{"step": 1, "val_psnr": 1.0}])  # checkpoints/ wins over experiments/
    assert run_log("shipped", tmp_path) == tmp_path / "checkpoints" / "shipped" / "log.jsonl"
    assert run_log("control", tmp_path) == tmp_path / "experiments" / "control" / "log.jsonl"
    assert run_log("missing", tmp_path) is None
    t = validation_table({"ours": "shipped", "paper": "control", "gone": "missing"}, tmp_path)
    assert list(t["run"]) == ["ours", "paper"]
    ours = t.iloc[0]
    assert ours["step"] == 120 and ours["PSNR"] == 27.0 and ours["textured / flat"] == 3.2
    # D's outputs: the mean of the last 10 logged records up to the validation step (steps 30..120)
    assert ours["D(natural)"] == pytest.approx(0.9)
    assert ours["D(candidate)"] == pytest.approx(sum(0.1 * (s // 10) for s in range(30, 130, 10)) / 10)
    assert ours["D's accuracy, natural"] == 1.0 and math.isnan(ours["D's accuracy, candidates"])
    assert ours["L_n's gradient into G"] == pytest.approx(sum(range(30, 130, 10)) / 10 / 1000)
    assert math.isnan(t.iloc[1]["diversity / RMSE"]) and math.isnan(t.iloc[1]["D(natural)"])


def test_student_preset_and_d_seed(tmp_path):
    from otmlib.models import Discriminator

    cfg = TrainConfig.student(mode="one-to-many", steps=7, d_seed=5, backbone="efficientnet-lite0",
                              channels_last=True, out=str(tmp_path / "s"))
    assert (cfg.gen.width, cfg.d_width, cfg.data.patch, cfg.batch_size, cfg.steps, cfg.bf16) == (16, 16, 32, 8, 7, False)
    t = Trainer(cfg, [code_image("c", __import__("skimage").data.camera()[:96, :96], 10, False)], progress=False)
    torch.manual_seed(5)
    ref = Discriminator(1, width=16)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), t.D.state_dict().values()))
    # channels-last: D and the perceptual network too (NCHW weights on NHWC input: a reorder every call)
    w = t.D.features[3].weight  # (the first conv has one input channel: both layouts at once)
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    pw = next(p for p in t.perceptual.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert pw.is_contiguous(memory_format=torch.channels_last)


def test_compiled_training_step_matches_eager(images, tmp_path):
    """``compile: true`` compiles G's training forward; the steps compute what eager ones do (float rounding
    apart), and the weights stay G's own (a checkpoint's keys do not change)."""
    train, val = images
    runs = {}
    for c in (False, True):
        t = Trainer(tiny("baseline", tmp_path / str(c), compile=c, channels_last=True), train, val, progress=False)
        t.fit(3)
        runs[c] = t
    eager, compiled = runs[False], runs[True]
    l_e = [r["l2"] for r in eager.read_log() if "l2" in r]
    l_c = [r["l2"] for r in compiled.read_log() if "l2" in r]
    assert len(l_c) == 3 and all(abs(a - b) <= 1e-3 * a for a, b in zip(l_e, l_c)), (l_e, l_c)
    assert compiled.G_ddp is not compiled.G  # it did compile
    ck = load_checkpoint(compiled.ckpt_path)
    assert ck["G"].keys() == eager.G.state_dict().keys()
