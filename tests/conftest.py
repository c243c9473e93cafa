"""Shared fixtures. Tests never need ../shared or the network; tests marked `data` use
../shared/data when it is there and are skipped otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("OTM_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "BSDS500" / "test").is_dir():
        pytest.skip(f"no BSDS500 at {SHARED_DATA} (the protocol check runs where ../shared exists)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def camera() -> np.ndarray:
    from skimage import data

    return data.camera()  # 512x512 grey, bundled with scikit-image


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    from skimage import data

    return data.chelsea()  # 300x451 RGB
