"""Where one step of the shipped one-to-many recipe spends its time, part by part (one thread, bfloat16 autocast,
channels-last as the trainer runs it): G forward + backward on the 2B candidates, the frozen L2 parent, D's own
step, D inside G's step, the perceptual network. Each part's FLOPs (torch's FlopCounterMode), seconds and rate;
then torch.profiler's op table of three whole steps. Run it on a quiet core:

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/profile_gan_step.py benchmarks/gan_step_profile.json
"""
import dataclasses, json, sys, time
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from skimage import data
from otmlib.data import DataConfig, code_image
from otmlib.models import Generator, GeneratorConfig
from otmlib.steps import GanConfig
from otmlib.train import TrainConfig, Trainer
from otmlib.utils import cpu_description

torch.set_num_threads(1)
images = [code_image("camera", data.camera(), 10, False), code_image("astronaut", data.astronaut(), 10, False)]
gan = GanConfig(candidates=2, perceptual_on="mean", mean_mse=1.0, spread=30.0, real_label=0.9, d_lr_ratio=0.5)
gen = GeneratorConfig(shift_and_average=False, deconv_kernel=5)
cfg = TrainConfig(mode="one-to-many", gen=gen, data=DataConfig(patch=64, aligned_fraction=1.0),
                  backbone="efficientnet-lite0", batch_size=8, bf16=True, channels_last=True, epoch_samples=8,
                  gan=gan, out="/tmp/otm-prof")  # trainer: G, D and the perceptual network channels-last
t = Trainer(cfg, images, progress=False)
t._set_ref(dataclasses.replace(t.cfg.gen, noise=False), Generator(dataclasses.replace(t.cfg.gen, noise=False)).state_dict())
t.step = 1
loader = iter(torch.utils.data.DataLoader(t.dataset, batch_size=8, sampler=range(10**6)))
batches = [next(loader) for _ in range(12)]
for b in batches[:2]:
    t.train_step(b)

def timeit(fn, n=8):
    for _ in range(2): fn()
    t0 = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t0) / n

def flops(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()

B, K = 8, 2
cl = torch.channels_last
x = batches[0]["x"].contiguous(memory_format=cl)
xj = batches[0]["jpeg"].contiguous(memory_format=cl)
xk = xj.repeat(K, 1, 1, 1)
z = t._noise(xk)
ac = lambda: torch.autocast("cpu", dtype=torch.bfloat16)

def g_fb():
    with ac():
        y = t.G(xk, z)
    y.float().square().mean().backward()
def g_ref():
    with torch.no_grad(), ac():
        t.G_ref(xj)
def d_step():  # real + fake, forward + backward into D's weights
    t.D.requires_grad_(True)
    with ac():
        a = t.D(x).float().mean()
    a.backward()
    with ac():
        b = t.D(x).float().mean()
    b.backward()
yk = (xk + 1).requires_grad_(True)
def d_in_g():  # D on 2B candidates, backward into the candidates only
    t.D.requires_grad_(False)
    with ac():
        c = t.D(yk).float().mean()
    c.backward()
    t.D.requires_grad_(True)
ym = (xj + 1).requires_grad_(True)
def lp():  # Lite0 on the mean (with grad) and on x
    with ac():
        l = t.perceptual(ym, x).float()
    l.backward()
def step():
    t.train_step(batches[2])

rows = {}
for name, fn in [("G fwd+bwd (2B=16 patches)", g_fb), ("G_ref fwd (B)", g_ref), ("D step (B real + B fake)", d_step),
                 ("D in G step (2B, grad to input)", d_in_g), ("Lite0 L_p (B, grad to input)", lp), ("whole step", step)]:
    f = flops(fn)
    s = timeit(fn)
    rows[name] = {"gflop": round(f / 1e9, 2), "seconds": round(s, 4), "gflop_per_s": round(f / 1e9 / s, 1)}
    print(name, rows[name], flush=True)
parts = sum(v["seconds"] for k, v in rows.items() if k != "whole step")
print("sum of parts", round(parts, 3), "whole", rows["whole step"]["seconds"])
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for b in batches[3:6]:
        t.train_step(b)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        json.dump({"cpu": cpu_description(), "threads": 1, "rows": rows}, f, indent=1)
