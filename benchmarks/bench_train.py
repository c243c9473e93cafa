"""Training throughput of G on this machine: patches/s for the baseline and the one-to-many step.

Not a test: run it on a quiet machine (other processes on the 2 cores distort it badly, since
OpenMP threads spin-wait when oversubscribed).

    .venv/bin/python benchmarks/bench_train.py [--json out.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from otmlib.data import DataConfig, code_image
from otmlib.models import GeneratorConfig
from otmlib.train import TrainConfig, Trainer


def measure(mode: str, bf16: bool, channels_last: bool, patch: int, batch: int, repeats: int,
            backbone: str = "efficientnet-lite0") -> float:
    from skimage import data

    images = [code_image("camera", data.camera(), 10, False), code_image("astronaut", data.astronaut(), 10, False)]
    cfg = TrainConfig(mode=mode, gen=GeneratorConfig(), data=DataConfig(patch=patch), backbone=backbone,
                      batch_size=batch, bf16=bf16, channels_last=channels_last, epoch_samples=batch,
                      out="/tmp/otm-bench-train")
    t = Trainer(cfg, images, progress=False)
    t.step = 1  # past the first "epoch": the one-to-many step includes D
    loader = iter(torch.utils.data.DataLoader(t.dataset, batch_size=batch, sampler=range(10 ** 6)))
    for _ in range(2):
        t.train_step(next(loader))
    batches = [next(loader) for _ in range(repeats)]
    t0 = time.perf_counter()
    for b in batches:
        t.train_step(b)
    return repeats * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    rows = []
    for mode in ("baseline", "one-to-many"):
        for bf16 in (False, True):
            for cl in (False, True):
                for patch, batch in ((64, 16), (96, 8)):
                    pps = measure(mode, bf16, cl, patch, batch, args.repeats)
                    row = dict(mode=mode, bf16=bf16, channels_last=cl, patch=patch, batch=batch,
                               patches_per_s=round(pps, 2), megapixels_per_s=round(pps * patch * patch / 1e6, 3))
                    rows.append(row)
                    print(row, flush=True)
    print("\n| mode | dtype | channels-last | patch x batch | patches/s | MP/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {'bf16' if r['bf16'] else 'fp32'} | {r['channels_last']} | {r['patch']} x {r['batch']} "
              f"| {r['patches_per_s']} | {r['megapixels_per_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
