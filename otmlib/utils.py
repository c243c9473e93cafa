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
