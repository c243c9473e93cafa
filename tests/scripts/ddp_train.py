"""Run by test_train.py under torchrun: 2 gloo processes train a tiny one-to-many G for 4 steps."""

import json
import sys
from pathlib import Path

import torch
from skimage import data

from otmlib.data import DataConfig, code_image
from otmlib.models import GeneratorConfig
from otmlib.train import TrainConfig, Trainer

out = Path(sys.argv[1])
images = [code_image("camera", data.camera(), 10, False), code_image("coins", data.coins(), 10, False)]
cfg = TrainConfig(mode="one-to-many", gen=GeneratorConfig(width=8, branch_units=1, agg_units=1),
                  data=DataConfig(patch=32), backbone="efficientnet-lite0", batch_size=2, steps=4,
                  epoch_samples=4, bf16=False, log_every=1, val_every=100, ckpt_every=2, out=str(out / "run"))
t = Trainer(cfg, images, [], progress=False)
g_init = [p.double().sum().item() for p in t.G.parameters()]
t.fit()
res = {"G_init": g_init,
       "G": [p.double().sum().item() for p in t.G.parameters()],
       "D": [p.double().sum().item() for p in t.D.parameters()]}
(out / f"rank{t.rank}.json").write_text(json.dumps(res))
torch.distributed.destroy_process_group()
