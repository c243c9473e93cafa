"""Speed of the one-to-many training step against its FLOP floor, on this machine.

The floor: the step's floating-point operations (counted by ``torch.utils.flop_counter.FlopCounterMode``:
G, D and the perceptual network, forward and backward) divided by the best rate this CPU reaches on a 3x3
convolution forward + backward in the same precision and layout, over the widths G and D use (64-512; the
best case for oneDNN). ``fraction`` =
floor time / measured time: 1 would mean every FLOP ran at the peak convolution rate. The L2 baseline's step
(G alone: convolutions, BatchNorm, ReLU) is measured the same way, as what these kernels reach without D and
the perceptual network.

Each recipe runs eagerly and with ``compile: true`` (G's training forward through torch.compile; the first steps,
which compile, are not timed). Not a test: run it on a quiet core (another process on it distorts it badly).

    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/bench_gan_step.py --json benchmarks/gan_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from otmlib.data import DataConfig, code_image
from otmlib.models import GeneratorConfig
from otmlib.steps import GanConfig
from otmlib.train import TrainConfig, Trainer
from otmlib.utils import bf16_plan, cpu_description

RECIPES = {
    "L2 baseline step (reference: G alone)": None,
    "control (paper)": GanConfig(),
    "moments (shipped)": GanConfig(candidates=2, perceptual_on="mean", mean_mse=1.0, spread=30.0, real_label=0.9,
                                   d_lr_ratio=0.5),
}


def conv_rate(bf16: bool, channels_last: bool, width: int = 64, side: int = 64, batch: int = 16) -> float:
    """FLOP/s of a width->width 3x3 convolution forward + backward (the floor's reference rate)."""
    x = torch.randn(batch, width, side, side, requires_grad=True)
    w = torch.randn(width, width, 3, 3, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    flops = 3 * 2 * batch * width * width * 9 * side * side  # forward + two backward convolutions

    def once():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            F.conv2d(x, w, padding=1).float().sum().backward()

    for _ in range(3):
        once()
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
        once()
    return n * flops / (time.perf_counter() - t0)


def measure(recipe: str, repeats: int, batch: int = 8, patch: int = 64, compile: bool = False) -> dict:
    from skimage import data

    from otmlib.models import Generator

    images = [code_image("camera", data.camera(), 10, False), code_image("astronaut", data.astronaut(), 10, False)]
    gan = RECIPES[recipe]
    gen = GeneratorConfig(shift_and_average=False, deconv_kernel=5)
    cfg = TrainConfig(mode="one-to-many" if gan else "baseline", gen=gen, data=DataConfig(patch=patch, aligned_fraction=1.0),
                      backbone="efficientnet-lite0", batch_size=batch, bf16=True, channels_last=True,
                      epoch_samples=batch, gan=gan or GanConfig(), out="/tmp/otm-bench-gan", compile=compile)
    t = Trainer(cfg, images, progress=False)
    if gan and gan.spread:  # the frozen L2 parent: a baseline of the same network (random weights: speed only)
        t._set_ref(dataclasses.replace(t.cfg.gen, noise=False),
                   Generator(dataclasses.replace(t.cfg.gen, noise=False)).state_dict())
    t.step = 1  # past the first "epoch": the step includes D
    loader = iter(torch.utils.data.DataLoader(t.dataset, batch_size=batch, sampler=range(10**6)))
    t0 = time.perf_counter()
    for _ in range(3):  # (compile: the first step compiles, the logging steps' graphs too)
        t.train_step(next(loader))
    warmup = time.perf_counter() - t0
    G_ddp, t.G_ddp = t.G_ddp, t.G  # FLOPs counted eagerly (the same operations)
    with FlopCounterMode(display=False) as fc:
        t.train_step(next(loader))
    t.G_ddp = G_ddp
    flops = fc.get_total_flops()
    batches = [next(loader) for _ in range(repeats)]
    t0 = time.perf_counter()
    for b in batches:
        t.train_step(b)
    dt = (time.perf_counter() - t0) / repeats
    return {"recipe": recipe, "compile": compile, "batch": batch, "patch": patch,
            "gflop_per_step": round(flops / 1e9, 1), "seconds_per_step": round(dt, 3),
            "patches_per_s": round(batch / dt, 2), "warmup_seconds": round(warmup, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    bf16 = bf16_plan(True, torch.device("cpu"))[0]
    rate = max(conv_rate(bf16, True, w, side) for w, side in ((64, 64), (128, 32), (256, 16), (512, 8)))
    rows = []
    for recipe in RECIPES:
        for compile in (False, True):
            r = measure(recipe, args.repeats, compile=compile)
            r["floor_seconds"] = round(r["gflop_per_step"] * 1e9 / rate, 3)
            r["fraction_of_floor"] = round(r["floor_seconds"] / r["seconds_per_step"], 2)
            rows.append(r)
            print(r, flush=True)
    out = {"cpu": cpu_description(), "threads": torch.get_num_threads(), "bf16": bf16,
           "conv_gflop_per_s": round(rate / 1e9, 1), "rows": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
