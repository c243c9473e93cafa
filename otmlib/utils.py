"""Small helpers shared by every module: seeding and device choice."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (call first in every notebook)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when available, else CPU. ``OTM_DEVICE`` overrides (e.g. ``OTM_DEVICE=cpu``)."""
    forced = os.environ.get("OTM_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def smoke_test() -> bool:
    """True under CI or ``OTM_SMOKE=1``: notebooks shrink their work but run every code path."""
    return bool(os.environ.get("CI") or os.environ.get("OTM_SMOKE"))


def figures_dir() -> "Path":
    """Where notebooks write figures: ``OTM_FIGURES`` if set (tests), else the repo's ``figures/``."""
    from pathlib import Path

    d = Path(os.environ.get("OTM_FIGURES") or Path(__file__).resolve().parents[1] / "figures")
    d.mkdir(parents=True, exist_ok=True)
    return d
