"""Small helpers shared by every module: seeding, device and precision choice, image <-> tensor."""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch


def as_batch(img, dtype=np.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W) pixels -> the (1, 1, H, W) tensor G, D, the losses and :mod:`otmlib.jpeg` take (a copy, in ``dtype``)."""
    t = torch.from_numpy(np.array(img, dtype=dtype))[None, None]
    return t if device is None else t.to(device)


def to_uint8_image(t: torch.Tensor) -> np.ndarray:
    """G's output (any shape, pixel values) -> uint8 NumPy pixels: clamped to [0, 255] and rounded (half to even)."""
    return t.clamp(0, 255).round().to(torch.uint8).cpu().numpy()


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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX).

    Without it PyTorch emulates bfloat16 and autocast is far slower than float32 (measured on an
    AVX2-only EPYC: 14.5 s per baseline training step against 1.1 s in float32; on a CPU with
    AVX512-BF16 the same step ran 2.5x faster than float32). ``OTM_BF16=0/1`` overrides the check.
    """
    forced = os.environ.get("OTM_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # older/newer torch without these probes: read the kernel's flags
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


def cpu_description() -> str:
    """E.g. "AMD EPYC, 2 cores, AVX2": logged with every run, as CPU-hours depend on it."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"


def bf16_plan(requested: bool, device: torch.device) -> tuple[bool, str]:
    """Whether to use bfloat16 autocast on ``device``, and a sentence saying what was chosen."""
    if not requested:
        return False, "float32"
    if device.type != "cpu":
        return False, f"float32 (bfloat16 autocast is a CPU option; {device.type} runs float32)"
    if cpu_has_native_bf16():
        return True, "bfloat16 autocast (this CPU has native bfloat16)"
    return False, ("float32: bfloat16 was asked for but this CPU has no native bfloat16 "
                   f"({torch.backends.cpu.get_cpu_capability()}); emulated, it ran 13x slower than float32 (measured)")


def smoke_test() -> bool:
    """True under CI or ``OTM_SMOKE=1``: notebooks shrink their work but run every code path."""
    return bool(os.environ.get("CI") or os.environ.get("OTM_SMOKE"))


def figures_dir() -> Path:
    """Where notebooks write figures: ``OTM_FIGURES`` if set (tests), else the repo's ``figures/``."""
    d = Path(os.environ.get("OTM_FIGURES") or Path(__file__).resolve().parents[1] / "figures")
    d.mkdir(parents=True, exist_ok=True)
    return d
