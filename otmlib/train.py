"""Trainers for the per-pixel L2 baseline and the one-to-many network (paper Secs. 3.4, 4).

One :class:`Trainer` runs both. Each one-to-many iteration is (Sec. 3.4):
  1. fix G, update D with eq. (3) on natural patches vs candidates;
  2. fix D, update G with eq. (7), ``l1 L_p + l2 L_n + l3 L_j`` (``l3`` per patch: 0 off the grid).
During the first epoch only step 2 runs, without D (and without ``L_n``).

Checkpoints are written atomically (temporary file, then rename) every N steps or M minutes,
whichever comes first, and hold everything a resumed run needs to continue *bit-identically* on
CPU: weights, optimiser moments, the step (which fixes the data stream and the noise), and the
wall time spent so far. They contain only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``. Under ``torchrun`` the trainer uses DistributedDataParallel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from otmlib import jpeg
from otmlib.data import CodedImage, DataConfig, JpegPatchDataset, StreamSampler
from otmlib.losses import LossWeights, PerceptualLoss
from otmlib.metrics import psnr, psnr_b
from otmlib.models import (Discriminator, Generator, GeneratorConfig, add_noise_branch, add_table_conditioning,
                           fold_shift_and_average,
                           grow_aggregation, widen_units)
from otmlib.steps import GanConfig, GanStep, chroma_step, l2_step
from otmlib.utils import bf16_plan, cpu_description, default_device, to_uint8_image

MODES = ("baseline", "one-to-many", "chroma")  # chroma: Cb/Cr of colour JPEGs (issue 18)


@dataclass
class TrainConfig:
    """Everything a run depends on. Defaults: the SPEC's (reconstructed) paper settings."""

    mode: str = "baseline"  # "baseline" (per-pixel L2, Table 2) or "one-to-many"
    gen: GeneratorConfig = field(default_factory=GeneratorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    gan: GanConfig = field(default_factory=GanConfig)  # one-to-many only: K candidates, extra terms, D balance
    backbone: str = "vgg19"  # perceptual-loss network (the paper's); "efficientnet-lite0" offline
    d_width: int = 64  # D's first filter count (Table 1: 64-128-256-512); smaller for student scale
    batch_size: int = 16
    steps: int = 10_000  # total optimiser steps of G
    epoch_samples: int = 20_000  # patches per "epoch" (the first one trains G alone)
    lr: float = 2e-4  # Adam, DCGAN settings (reconstructed)
    lr_schedule: str = "constant"  # or "cosine": lr -> lr_end over `steps` (Loshchilov & Hutter 2017, no restarts)
    lr_end: float = 0.0
    beta1: float = 0.5
    beta2: float = 0.999
    bf16: bool = True  # bfloat16 autocast on a CPU with native bf16 (2.5x faster there); else float32
    channels_last: bool = False
    # torch.compile G for its training step (inductor fuses the element-wise work around the convolutions):
    # the L2 step 1.19x, the one-to-many step 1.07x (benchmarks/gan_step_2026-12-05.json); the first step
    # compiles for 20-40 s. Numerics within float rounding of eager; a run may be resumed with it on or off.
    compile: bool = False
    num_workers: int = 0
    log_every: int = 20
    val_every: int = 500
    ckpt_every: int = 500  # steps
    ckpt_minutes: float = 5.0  # ... or minutes, whichever comes first
    out: str = "runs/baseline-q10"
    seed: int = 0
    init: str | None = None  # start G from this run's last.pt or release file (fine-tuning); see init_from
    ema: float = 0.0  # decay of a moving average of G's weights (0: off); see Trainer.G_eval
    d_seed: int | None = None  # D's initial weights from this seed (None: drawn after G's, from seed)

    @classmethod
    def student(cls, **changes: Any) -> TrainConfig:
        """The toy scale of the teaching notebooks (02, 04): a width-16 G with 1 + 2 units, a width-16 D
        (64 costs 6x the time there), 32x32 patches, batch 8, lr 2e-4, float32, efficientnet-lite0 and no
        checkpoint until the end; ``changes`` as in dataclasses.replace."""
        base = cls(gen=GeneratorConfig(width=16, branch_units=1, agg_units=2), data=DataConfig(patch=32),
                   backbone="efficientnet-lite0", d_width=16, batch_size=8, steps=300, lr=2e-4, bf16=False,
                   ckpt_every=10**9, ckpt_minutes=1e9)
        return dataclasses.replace(base, **changes)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.mode == "chroma" and not self.data.colour:
            raise ValueError("mode chroma restores the Cb/Cr of colour JPEGs: set data.colour: true")
        if self.data.colour and self.data.subsampling != "4:4:4" and self.mode != "chroma":
            raise ValueError(f"data.subsampling {self.data.subsampling} is for mode chroma: RGB models and the JPEG "
                             "loss assume every channel on the 8x8 grid (4:4:4)")
        if self.gen.table_cond and self.mode == "chroma":
            raise ValueError("gen.table_cond (a G that reads the luminance quantisation table) is for grey models")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema is a decay in [0, 1) (0 turns the average off), got {self.ema}")
        # a copy: a GeneratorConfig shared with another TrainConfig must not change under it
        self.gen = dataclasses.replace(self.gen, noise=self.mode == "one-to-many",
                                       channels=3 if self.data.colour else 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Strictly (:func:`otmlib.config.build`): unknown keys at any level and wrong types are one-line
        :class:`~otmlib.config.ConfigError` s (a ValueError) naming the key, not tracebacks or strings in training."""
        from otmlib.config import build

        return build(cls, d)


class Callback(Protocol):
    """Hooks a notebook can implement (all optional): live plots, early stops, prints."""

    def on_log(self, trainer: Trainer, record: dict) -> None: ...
    def on_val(self, trainer: Trainer, record: dict) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, loaded without unpickling arbitrary objects."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for bad files
        raise ValueError(f"{path}: not a readable otm checkpoint ({type(e).__name__}: {e})") from None


class Trainer:
    """Trains G (and D) from a list of coded training images; see the module docstring."""

    def __init__(
        self,
        cfg: TrainConfig,
        train_images: Sequence[CodedImage],
        val_images: Sequence[CodedImage] = (),
        callbacks: Sequence[Callback] = (),
        *,
        data_description: str = "",
        progress: bool = True,
    ):
        self.cfg = cfg
        self.rank, self.world, local = _dist_info()
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        if torch.cuda.is_available() and self.world > 1:
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = default_device()
        self.is_main = self.rank == 0
        self.bf16, self.precision = bf16_plan(cfg.bf16, self.device)
        self.callbacks = list(callbacks)
        self.progress = progress and self.is_main
        self.data_description = data_description
        self.val_images = list(val_images)
        self.out = Path(cfg.out)

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.G = Generator(cfg.gen).to(self.device)
        self.D = (Discriminator(cfg.gen.channels, width=cfg.d_width).to(self.device)
                  if cfg.mode == "one-to-many" else None)
        if cfg.channels_last:  # D too: with NCHW weights on channels-last input, oneDNN reorders every call
            self.G = self.G.to(memory_format=torch.channels_last)
            if self.D is not None:
                self.D = self.D.to(memory_format=torch.channels_last)
        self.optG = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.optD = (
            torch.optim.Adam(self.D.parameters(), lr=cfg.lr * cfg.gan.d_lr_ratio, betas=(cfg.beta1, cfg.beta2))
            if self.D else None
        )
        # the frozen L2 parent of a warm-started one-to-many run (its error sets the candidates' spread)
        self.G_ref: Generator | None = None
        self.gan_step = GanStep(self) if cfg.mode == "one-to-many" else None
        self.perceptual = PerceptualLoss(cfg.backbone).to(self.device) if cfg.mode == "one-to-many" else None
        if self.perceptual is not None and cfg.channels_last:
            self.perceptual = self.perceptual.to(memory_format=torch.channels_last)
        self.G_ddp = self.G
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.G_ddp = DDP(self.G, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:  # the training forward only: G itself (state dict, validation, EMA) stays eager
            self.G_ddp = torch.compile(self.G_ddp)

        self.dataset = JpegPatchDataset(train_images, cfg.data)
        self.step = 0
        self.wall = 0.0  # seconds of training, summed over resumed runs
        self.cpu = 0.0  # CPU-seconds: wall seconds times the torch threads of each run
        self.lineage: list[dict] = []  # runs this one was initialised from, oldest first (init_from)
        # the moving average of G (cfg.ema > 0), torch's AveragedModel; made when training starts, unless resumed
        self.G_avg: AveragedModel | None = None
        self.backbone_note = self.perceptual.describe() if self.perceptual else "none (per-pixel L2 baseline)"
        if self.D is not None and cfg.d_seed is not None:  # last, so the global generator ends where D's draw did
            torch.manual_seed(cfg.d_seed)
            self.D = Discriminator(cfg.gen.channels, width=cfg.d_width).to(self.device)
            if cfg.channels_last:
                self.D = self.D.to(memory_format=torch.channels_last)
            self.optD = torch.optim.Adam(self.D.parameters(), lr=cfg.lr * cfg.gan.d_lr_ratio, betas=(cfg.beta1, cfg.beta2))

    # ---------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.out / "last.pt"

    def state(self) -> dict:
        return {
            "format": "otm-checkpoint-1",
            "step": self.step,
            "wall": self.wall,
            "cpu": self.cpu,
            "config": self.cfg.to_dict(),
            "backbone": self.backbone_note,
            "G": self.G.state_dict(),
            "optG": self.optG.state_dict(),
            "D": self.D.state_dict() if self.D else {},
            "optD": self.optD.state_dict() if self.optD else {},
            "lineage": self.lineage,
            **({"G_ref": self.G_ref.state_dict(), "G_ref_config": asdict(self.G_ref.cfg)}
               if self.G_ref is not None else {}),
            **({"G_ema": self.G_avg.module.state_dict(), "ema": self.cfg.ema,
                "ema_updates": int(self.G_avg.n_averaged)} if self.G_avg is not None else {}),
        }

    def save(self) -> Path | None:
        if not self.is_main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_save(self.state(), self.ckpt_path)
        for cb in self.callbacks:
            getattr(cb, "on_checkpoint", lambda *a: None)(self, self.ckpt_path)
        return self.ckpt_path

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from ``path`` (default: this run's last checkpoint). False if there is none."""
        path = Path(path) if path else self.ckpt_path
        if self.is_main:  # a kill -9 during a save leaves last.pt.tmpPID for good
            import sys

            from otmlib.runlock import remove_stale_temporaries

            for p in remove_stale_temporaries(self.out, self.ckpt_path.name):
                print(f"otm: removed {p}, a checkpoint a killed run was writing", file=sys.stderr)
        if not path.exists():
            return False
        ck = load_checkpoint(path)
        if ck.get("format") != "otm-checkpoint-1":
            raise ValueError(f"{path}: not an otm training checkpoint")
        saved = TrainConfig.from_dict(ck["config"])
        for name in ("mode", "gen", "data", "d_width"):
            if getattr(saved, name) != getattr(self.cfg, name):
                raise ValueError(
                    f"{path}: checkpoint was trained with a different {name} "
                    f"({getattr(saved, name)} vs {getattr(self.cfg, name)}); start a new --out folder"
                )
        self.G.load_state_dict(ck["G"])
        self.optG.load_state_dict(ck["optG"])
        if self.cfg.ema and "G_ema" in ck:
            self._start_ema()
            self.G_avg.module.load_state_dict(ck["G_ema"])
            self.G_avg.n_averaged.fill_(int(ck.get("ema_updates", 1)))
        if "G_ref" in ck:
            self._set_ref(GeneratorConfig(**ck["G_ref_config"]), ck["G_ref"])
        if self.D is not None:
            self.D.load_state_dict(ck["D"])
            self.optD.load_state_dict(ck["optD"])
        self.step, self.wall = int(ck["step"]), float(ck["wall"])
        self.cpu = float(ck.get("cpu", ck["wall"]))  # runs before this field existed used one thread
        self.lineage = list(ck.get("lineage", []))
        self._truncate_log(self.step)
        return True

    def init_from(self, path: str | Path) -> dict:
        """Start this (new) run from G of another run: a training ``last.pt`` or a release file.

        Fine-tuning, e.g. a quality-20 baseline from the quality-10 one. Only G's weights move
        (a fresh optimiser, step 0, this run's data and learning rate); the parent's wall time and
        CPU-hours are carried over, so provenance and the CPU-hours axis count everything that went
        into the weights, and the parent is appended to ``lineage``. Returns the lineage entry.
        """
        path = Path(path)
        if self.step:
            raise ValueError(f"init_from({path}): this run is already at step {self.step}")
        if path.suffix == ".safetensors":
            from otmlib.zoo import load_generator, read_release

            G, _ = load_generator(path)
            info = read_release(path)
            gen, state = info.gen_config, G.state_dict()
            step, wall, cpu = info.steps, info.wall_seconds, 3600 * info.cpu_hours
            mode, quality, lineage = info.mode, info.quality, info.lineage
        else:
            ck = load_checkpoint(path)
            if ck.get("format") != "otm-checkpoint-1":
                raise ValueError(f"{path}: not an otm training checkpoint or release file")
            gen, state = ck["config"]["gen"], ck.get("G_ema", ck["G"])  # the average when the run kept one
            step, wall, cpu = int(ck["step"]), float(ck["wall"]), float(ck.get("cpu", ck["wall"]))
            mode, quality = ck["config"]["mode"], int(ck["config"]["data"]["quality"])
            lineage = list(ck.get("lineage", []))
        parent_cfg, folded = GeneratorConfig(**gen), False
        if parent_cfg != self.cfg.gen and parent_cfg.shift_and_average and not self.cfg.gen.shift_and_average:
            parent = Generator(parent_cfg)
            parent.load_state_dict(state)
            parent = fold_shift_and_average(parent)  # the same function, box mean in the deconv
            parent_cfg, state, folded = parent.cfg, parent.state_dict(), True
        grown, widened = 0, 0
        want = self.cfg.gen
        old_inner, new_inner = parent_cfg.inner_width or parent_cfg.width, want.inner_width or want.width
        if parent_cfg != want and dataclasses.replace(
                parent_cfg, agg_units=want.agg_units, inner_width=want.inner_width) == want and \
                want.agg_units >= parent_cfg.agg_units and new_inner >= old_inner:
            parent = Generator(parent_cfg)
            parent.load_state_dict(state)
            if new_inner > old_inner:  # the same function, wider units
                parent, widened = widen_units(parent, new_inner), new_inner
            if want.agg_units > parent_cfg.agg_units:  # the same function, more units
                grown = want.agg_units - parent_cfg.agg_units
                parent = grow_aggregation(parent, want.agg_units)
            parent_cfg, state = want, parent.state_dict()  # (inner_width None and == width are one network)
        added_z = False
        if self.cfg.gen.noise and not parent_cfg.noise and \
                dataclasses.replace(parent_cfg, noise=True, noise_sigma=want.noise_sigma) == want:
            parent = Generator(parent_cfg)
            parent.load_state_dict(state)
            self._set_ref(parent_cfg, state)  # the L2 parent, frozen: the spread target and alpha = 0
            parent = add_noise_branch(parent, self.cfg.gan.z_init_gain, seed=self.cfg.seed, noise_sigma=want.noise_sigma)
            parent_cfg, state, added_z = parent.cfg, parent.state_dict(), True
        added_table = False
        if want.table_cond and not parent_cfg.table_cond and dataclasses.replace(parent_cfg, table_cond=True) == want:
            parent = Generator(parent_cfg)
            parent.load_state_dict(state)
            parent = add_table_conditioning(parent)  # the same function for every table, until trained
            parent_cfg, state, added_table = parent.cfg, parent.state_dict(), True
        if parent_cfg != self.cfg.gen:
            raise ValueError(f"{path}: its network ({gen}) is not this run's ({asdict(self.cfg.gen)}); "
                             "fine-tuning needs the same generator settings")
        self.G.load_state_dict(state)
        entry = {"from": str(path), "mode": mode, "quality": quality, "steps": step,
                 "cpu_hours": round(cpu / 3600, 4)}
        if folded:
            entry["folded_shift_and_average"] = True
        if grown:
            entry["added_identity_units"] = grown
        if widened:
            entry["widened_units_to"] = widened
        if added_z:
            entry["added_noise_branch"] = {"z_init_gain": self.cfg.gan.z_init_gain}
        if added_table:
            entry["added_table_conditioning"] = True
        self.lineage = lineage + [entry]
        self.wall, self.cpu = wall, cpu
        return entry

    def _set_ref(self, gen: GeneratorConfig, state: dict) -> None:
        G = Generator(gen)
        G.load_state_dict(state)
        self.G_ref = G.to(self.device).eval().requires_grad_(False)
        if self.cfg.channels_last:
            self.G_ref = self.G_ref.to(memory_format=torch.channels_last)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based): a function of the step, so a resumed run agrees."""
        cfg = self.cfg
        if cfg.lr_schedule == "constant":
            return cfg.lr
        t = min(step, cfg.steps) / max(cfg.steps, 1)
        return cfg.lr_end + 0.5 * (cfg.lr - cfg.lr_end) * (1.0 + math.cos(math.pi * t))

    def _set_lr(self) -> None:  # every step, from the config: resuming with a lower --lr anneals
        lr = self.lr_at(self.step)
        for opt, ratio in ((self.optG, 1.0), (self.optD, self.cfg.gan.d_lr_ratio)):
            for group in (opt.param_groups if opt else []):
                group["lr"] = lr * ratio

    # ---------------------------------------------------------------- weight averaging
    def _start_ema(self) -> None:
        """``avg <- d avg + (1 - d) G`` after every step (d = ``cfg.ema``; the first update copies G), for
        weights and BatchNorm running statistics alike (``use_buffers``): the statistics then describe
        activations of weights near the average, not only of the last step's."""
        self.G_avg = AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True)

    @property
    def G_eval(self) -> Generator:
        """The G that validation scores and ``otm export`` ships: the moving average when ``cfg.ema`` > 0."""
        return self.G_avg.module if self.G_avg is not None else self.G

    # ---------------------------------------------------------------- logging
    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def _write_log(self, record: dict) -> None:
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be redone)."""
        if not (self.is_main and self.log_path.exists()):
            return
        keep = [ln for ln in self.log_path.read_text().splitlines() if json.loads(ln).get("step", 0) <= step]
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, self.log_path)

    def read_log(self) -> list[dict]:
        return read_log(self.log_path)

    # ---------------------------------------------------------------- steps
    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.cfg.epoch_samples // (self.cfg.batch_size * self.world))

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)

    def _noise(self, like: Tensor) -> Tensor:
        """z for this step: a function of (seed, step, rank), so a resumed run draws the same."""
        g = torch.Generator(device="cpu").manual_seed((self.cfg.seed * 1_000_003 + self.step) * 64 + self.rank)
        return self.G.sample_noise(like.cpu(), generator=g).to(self.device)

    def train_step(self, batch: dict[str, Tensor], diagnose: bool = False) -> dict[str, float]:
        """One optimiser step of G (and D): :func:`otmlib.steps.l2_step` or :class:`otmlib.steps.GanStep`.

        ``diagnose``: also log D's outputs and accuracy and each term's gradient into G's output
        (a few extra backward passes; the loop asks for it on logging steps).
        """
        cfg = self.cfg
        x = batch["x"].to(self.device)
        xj = batch["jpeg"].to(self.device)
        if cfg.channels_last:
            x, xj = x.contiguous(memory_format=torch.channels_last), xj.contiguous(memory_format=torch.channels_last)
        if cfg.mode == "baseline":
            return l2_step(self, x, xj, batch["q"].to(self.device) if cfg.gen.table_cond else None)
        if cfg.mode == "chroma":
            return chroma_step(self, x, xj)
        if cfg.gan.spread and self.G_ref is None:
            raise ValueError("gan.spread needs the L2 parent: start the run with init: a baseline (see init_from)")
        q = batch["q"].to(self.device)
        aligned = batch["aligned"].to(self.device).float()
        return self.gan_step(x, xj, q, aligned, diagnose)

    def _allreduce_grads(self, module: torch.nn.Module) -> None:
        """Average D's gradients over ranks (D is called twice per step, so it is not DDP-wrapped)."""
        if self.world == 1:
            return
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def _check(self, losses: dict[str, Tensor]) -> None:
        bad = {k: v.item() for k, v in losses.items() if not torch.isfinite(v)}
        if bad:
            raise TrainingDiverged(
                f"loss {', '.join(f'{k}={v}' for k, v in bad.items())} at step {self.step}; "
                f"stopped without saving. Last good checkpoint: {self.ckpt_path} "
                "(resume from it with a lower learning rate)"
            )

    # ---------------------------------------------------------------- validation
    VAL_CANDIDATES = 4  # seeds 0..3 on each validation image (one-to-many): the diversity of the issue

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean PSNR / PSNR-B of :attr:`G_eval` on the held-out images (z seed 0 for one-to-many).

        One-to-many: also the candidates' texture ratio (:func:`otmlib.restore.texture_ratio`, mean over seeds
        0-3 and images), their share of DCT coefficients inside the JPEG's intervals (grey) and the diversity of the 4 candidates overall, in textured and in flat regions
        (:func:`otmlib.restore.region_sums`, pooled over the images) and, with a frozen L2 parent, its RMSE in
        the same regions (the spread an ideal sampler would have there).
        """
        from otmlib.restore import REGIONS, candidate_variance, interval_share, pooled_rms, region_sums, texture_ratio

        if not self.val_images:
            return {}
        if self.cfg.mode == "chroma":
            return self._validate_chroma()
        G = self.G_eval
        G.eval()
        ps, pbs, pj, tex, inside = [], [], [], [], []
        div = {r: (0.0, 0) for r in REGIONS}
        ref_err = {r: (0.0, 0) for r in REGIONS}

        def luma(a: np.ndarray) -> np.ndarray:  # score colour on its luminance, like the paper
            return jpeg.luminance(a.transpose(1, 2, 0)) if a.shape[0] == 3 else a[0]

        def add(acc: dict, new: dict) -> dict:
            return {r: (acc[r][0] + new[r][0], acc[r][1] + new[r][1]) for r in REGIONS}

        per_q: dict[int, list[tuple[float, float, float]]] = {}
        for im in self.val_images:
            xj = torch.from_numpy(im.coded[None].astype(np.float32)).to(self.device)
            kw = {"qtable": torch.from_numpy(im.qtable[0].astype(np.float32))} if G.cfg.table_cond else {}
            seeds = range(self.VAL_CANDIDATES) if self.cfg.gen.noise else [None]
            outs = [luma(to_uint8_image((G(xj, seed=s, **kw) if s is not None else G(xj, **kw))[0])) for s in seeds]
            gt, dec = luma(im.gt), luma(im.coded)
            ps.append(psnr(gt, outs[0]))
            pbs.append(psnr_b(gt, outs[0]))
            pj.append(psnr(gt, dec))
            if self.cfg.data.qualities is not None and im.quality is not None:
                per_q.setdefault(im.quality, []).append((ps[-1], pbs[-1], pj[-1]))
            if len(outs) > 1:
                div = add(div, region_sums(candidate_variance(outs), gt))
                tex.append(np.mean([texture_ratio(o, gt) for o in outs]))
                if im.coded.shape[0] == 1:  # grey: the share of DCT coefficients inside the file's intervals
                    inside.append(np.mean([interval_share(o, dec, im.qtable[0]) for o in outs]))
            if self.G_ref is not None:
                ref = luma(to_uint8_image(self.G_ref(xj, **kw)[0])).astype(np.float64)
                ref_err = add(ref_err, region_sums((ref - gt) ** 2, gt))
        G.train()
        rec = {"val_psnr": float(np.mean(ps)), "val_psnrb": float(np.mean(pbs)), "val_psnr_jpeg": float(np.mean(pj))}
        for q, v in sorted(per_q.items()):  # an any-quality run: each validation quality on its own
            a = np.asarray(v)
            rec.update({f"val_psnr_q{q}": float(a[:, 0].mean()), f"val_psnrb_q{q}": float(a[:, 1].mean()),
                        f"val_psnr_jpeg_q{q}": float(a[:, 2].mean())})
        if tex:  # candidates' gradient energy over the originals' (1: as detailed; the L2 baseline ~0.7)
            rec["val_texture_ratio"] = float(np.mean(tex))
        if inside:  # before any projection (the JPEG loss's work)
            rec["val_in_intervals"] = float(np.mean(inside))
        if div["all"][1]:
            rec.update({f"val_div_{r}": v for r, v in pooled_rms(div).items()})
            rec["val_textured_flat"] = rec["val_div_textured"] / max(rec["val_div_flat"], 1e-12)
        if ref_err["all"][1]:
            rms = pooled_rms(ref_err)
            rec.update(val_ref_rmse=rms["all"], val_ref_rmse_textured=rms["textured"], val_ref_rmse_flat=rms["flat"])
            if "val_div_all" in rec:
                rec["val_div_over_rmse"] = rec["val_div_all"] / rec["val_ref_rmse"]
        return rec

    def _validate_chroma(self) -> dict[str, float]:
        """A chroma model on the held-out colour JPEGs: RGB PSNR / PSNR-B (:func:`otmlib.metrics.rgb_metrics`)
        with its Cb/Cr and the decoded Y, against the JPEG's RGB PSNR."""
        from otmlib.metrics import rgb_metrics
        from otmlib.restore import _with_luma, restore_chroma

        G = self.G_eval
        G.eval()
        ps, pbs, pj = [], [], []
        for im in self.val_images:
            gt, dec = im.gt.transpose(1, 2, 0), im.coded.transpose(1, 2, 0)
            with torch.no_grad():
                out = _with_luma(dec, None, cbcr=restore_chroma(G, dec))
            m = rgb_metrics(gt, out)
            ps.append(m["psnr"])
            pbs.append(m["psnrb"])
            pj.append(rgb_metrics(gt, dec)["psnr"])
        G.train()
        return {"val_psnr": float(np.mean(ps)), "val_psnrb": float(np.mean(pbs)), "val_psnr_jpeg": float(np.mean(pj))}

    # ---------------------------------------------------------------- the loop
    def fit(self, steps: int | None = None) -> list[dict]:
        """Train until ``steps`` total steps (default ``cfg.steps``); returns this call's records."""
        cfg = self.cfg
        target = steps if steps is not None else cfg.steps
        if cfg.ema and self.G_avg is None:  # a new run, or one resumed from a checkpoint without an average
            self._start_ema()
        if self.step == 0:
            self._write_log({"step": 0, "event": "start", "config": cfg.to_dict(), "backbone": self.backbone_note,
                             "data": self.data_description, "world": self.world, "device": str(self.device),
                             "threads": torch.get_num_threads(), "lineage": self.lineage,
                             "precision": self.precision, "cpu": cpu_description(),
                             "cpu_hours": self.cpu / 3600})
        else:  # a resumed run: record what may have changed (schedule, threads, machine)
            self._write_log({"step": self.step, "event": "resume", "lr": cfg.lr, "lr_schedule": cfg.lr_schedule,
                             "lr_end": cfg.lr_end, "steps": cfg.steps, "target": target, "ema": cfg.ema,
                             "weights": asdict(cfg.weights), "gan": asdict(cfg.gan), "out": cfg.out,
                             "threads": torch.get_num_threads(),
                             "precision": self.precision, "cpu": cpu_description(),
                             "device": str(self.device), "world": self.world})
        loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=StreamSampler(self.step * cfg.batch_size, self.rank, self.world),
            num_workers=cfg.num_workers,
            persistent_workers=False,
        )
        from tqdm.auto import tqdm

        bar = tqdm(total=target, initial=self.step, desc=cfg.mode, unit="step", disable=not self.progress)
        records: list[dict] = []
        self.G.train()
        t_last_ckpt = time.monotonic()
        t0, n_since = time.monotonic(), 0
        it = iter(loader)
        self.stop_requested = False
        previous = _install_stop_handler(self) if self.is_main else None
        try:
            while self.step < target:
                if self.stop_requested:  # SIGTERM / SIGINT: save where we are, then leave
                    self.save()
                    self._write_log({"step": self.step, "event": "stopped", "wall": self.wall})
                    break
                batch = next(it)
                self._set_lr()
                ts = time.monotonic()
                rec = self.train_step(batch, diagnose=(self.step + 1) % cfg.log_every == 0)
                dt_step = time.monotonic() - ts
                self.wall += dt_step
                self.cpu += dt_step * torch.get_num_threads()
                self.step += 1
                n_since += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == target:
                    dt = time.monotonic() - t0
                    rec.update(step=self.step, epoch=self.step // self.steps_per_epoch, lr=self.lr_at(self.step - 1),
                               patches_per_s=n_since * cfg.batch_size * self.world / max(dt, 1e-9),
                               wall=self.wall, cpu_hours=self.cpu / 3600)
                    t0, n_since = time.monotonic(), 0
                    bar.set_postfix({k: f"{v:.3g}" for k, v in rec.items() if k in ("l2", "lp", "ln", "lj", "d", "patches_per_s")})
                    self._write_log(rec)
                    records.append(rec)
                    for cb in self.callbacks:
                        getattr(cb, "on_log", lambda *a: None)(self, rec)
                if self.is_main and (self.step % cfg.val_every == 0 or self.step == target) and self.val_images:
                    v = {"step": self.step, "wall": self.wall, "cpu_hours": self.cpu / 3600, **self.validate()}
                    self._write_log(v)
                    records.append(v)
                    for cb in self.callbacks:
                        getattr(cb, "on_val", lambda *a: None)(self, v)
                due = self.step % cfg.ckpt_every == 0 or (time.monotonic() - t_last_ckpt) > 60 * cfg.ckpt_minutes
                if due or self.step == target:
                    self.save()
                    t_last_ckpt = time.monotonic()
        finally:
            bar.close()
            if previous is not None:
                _restore_stop_handler(previous)
        return records


def _install_stop_handler(trainer: Trainer):
    """Turn SIGTERM and the first Ctrl-C into "finish this step, checkpoint, stop" (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def request_stop(signum, frame):
        if trainer.stop_requested:  # a second signal: stop now (the last checkpoint stays valid)
            raise KeyboardInterrupt
        trainer.stop_requested = True

    return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_stop_handler(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)


def read_log(log_path: str | Path) -> list[dict]:
    """The records of a run's ``log.jsonl`` (empty if there is none yet)."""
    path = Path(log_path)
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_FOLDERS = ("checkpoints", "experiments")  # what ships or trains; comparisons kept as a record (config + log)


def run_log(run: str, root: str | Path | None = None) -> Path | None:
    """The ``log.jsonl`` of the run named ``run``: in ``checkpoints/`` (a shipped model's lineage, or a run
    being trained) or ``experiments/`` (a comparison that did not ship), under the repository ``root``;
    None when neither holds it (an installed package has no run folders)."""
    root = Path(root) if root is not None else REPO_ROOT
    return next((p for d in RUN_FOLDERS if (p := root / d / run / "log.jsonl").exists()), None)


def validation_table(runs: dict[str, str], root: str | Path | None = None):
    """Every validation record of each run (``label -> run name``, see :func:`run_log`) as a DataFrame:
    label, step, PSNR, candidates' diversity over the L2 parent's RMSE, textured/flat, diversity, texture ratio, share inside the intervals, and
    D's mean outputs and accuracy and L_n's gradient into G over the 10 logged steps up to each validation
    (one-to-many runs). Runs without a log are left out."""
    import pandas as pd

    rows = []
    for label, run in runs.items():
        path = run_log(run, root)
        if path is None:
            continue
        records = read_log(path)
        for r in records:
            if "val_psnr" not in r:
                continue
            d = [x for x in records if "d_real" in x and x["step"] <= r["step"]][-10:]

            def mean(key: str) -> float:
                vals = [x[key] for x in d if key in x]
                return sum(vals) / len(vals) if vals else float("nan")

            rows.append({"run": label, "step": r["step"], "PSNR": r["val_psnr"],
                         "diversity / RMSE": r.get("val_div_over_rmse", float("nan")),
                         "textured / flat": r.get("val_textured_flat", float("nan")),
                         "diversity": r.get("val_div_all", float("nan")),
                         "texture ratio": r.get("val_texture_ratio", float("nan")),
                         "in intervals": r.get("val_in_intervals", float("nan")),
                         "D(natural)": mean("d_real"), "D(candidate)": mean("d_fake"),
                         "D's accuracy, natural": mean("d_acc_real"), "D's accuracy, candidates": mean("d_acc_fake"),
                         "L_n's gradient into G": mean("grad_ln")})
    return pd.DataFrame(rows, columns=["run", "step", "PSNR", "diversity / RMSE", "textured / flat", "diversity",
                                       "texture ratio", "in intervals", "D(natural)", "D(candidate)",
                                       "D's accuracy, natural", "D's accuracy, candidates", "L_n's gradient into G"])


def training_curve(log_path: str | Path):
    """Validation records of a run's log as a DataFrame: step, wall hours, CPU-hours, val PSNR/PSNR-B.

    CPU-hours are wall seconds times the torch threads in use (the cores kept busy), summed over
    resumed runs, so runs with different thread counts compare.
    """
    import pandas as pd

    records = read_log(log_path)
    threads = next((r.get("threads", 1) for r in records if r.get("event") == "start"), 1)
    vals = [r for r in records if "val_psnr" in r]
    df = pd.DataFrame(vals, columns=["step", "wall", "cpu_hours", "val_psnr", "val_psnrb", "val_psnr_jpeg"])
    df["hours"] = df["wall"] / 3600
    missing = df["cpu_hours"].isna()  # older records: wall time times the threads at the start
    df.loc[missing, "cpu_hours"] = df.loc[missing, "hours"] * threads
    return df
