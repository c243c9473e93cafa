"""Release weights: safetensors files with their provenance, shipped in ``otmlib/weights/``.

A release file holds G's tensors (float32) and string metadata: the generator config, the full
training config, the data (description and SHA-256), steps, wall time, git commit, backbone and
any measured scores. Loading never unpickles: safetensors stores raw tensors only.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otmlib.models import Generator, GeneratorConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = "otm-weights-1"


def git_commit(repo: Path | None = None) -> str:
    """HEAD's hash (+ "-dirty" with uncommitted changes), or "unknown" outside a checkout."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        # the weights being written and the run folders do not make the code dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!otmlib/weights", ":!checkpoints", ":!figures"], cwd=cwd,
                               capture_output=True, text=True, check=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export_generator(
    checkpoint: dict,
    out: str | Path,
    *,
    data_description: str,
    data_sha256: str,
    scores: dict | None = None,
    force: bool = False,
) -> Path:
    """Write G of a training checkpoint (see :mod:`otmlib.train`) as a release file.

    A run that kept a moving average of G (``ema`` > 0) ships the average, what its validation scored.
    """
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to replace it")
    cfg = checkpoint["config"]
    meta = {
        "format": FORMAT,
        "gen_config": json.dumps(cfg["gen"]),
        "train_config": json.dumps(cfg),
        "mode": cfg["mode"],
        "quality": str(cfg["data"]["quality"]),
        "steps": str(checkpoint["step"]),
        # a fine-tuned run: the runs it started from (their steps and CPU-hours are in the totals)
        "lineage": json.dumps(checkpoint.get("lineage", [])),
        "steps_total": str(checkpoint["step"] + sum(e["steps"] for e in checkpoint.get("lineage", []))),
        "wall_seconds": f"{checkpoint['wall']:.0f}",
        "cpu_hours": f"{checkpoint.get('cpu', checkpoint['wall']) / 3600:.2f}",
        "backbone": checkpoint.get("backbone", ""),
        "data": data_description,
        "data_sha256": data_sha256,
        "git_commit": git_commit(),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scores": json.dumps(scores or {}),
        "weights": (f"moving average of G, decay {checkpoint['ema']}" if "G_ema" in checkpoint
                    else "G at the last step"),
    }
    tensors = {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in checkpoint.get("G_ema", checkpoint["G"]).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)
    out.chmod(0o644)  # package data: readable by every user
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    """The provenance strings of a release file; ``ValueError`` naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path}: not a safetensors weights file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: safetensors file without otm provenance (format {meta.get('format')!r})")
    return meta


def shipped() -> dict[str, Path]:
    """Weights that install with the package: name -> file."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model name or a path to a release file."""
    models = shipped()
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists():
        return p
    names = ", ".join(models) or "none shipped yet"
    raise ValueError(f"unknown model {name_or_path!r}; shipped: {names}; or pass a .safetensors path")


def load_generator(name_or_path: str | Path, device: torch.device | str = "cpu") -> tuple[Generator, dict]:
    """Build G from a release file (eval mode) and return it with its metadata."""
    path = resolve(name_or_path)
    meta = read_metadata(path)
    cfg = GeneratorConfig(**json.loads(meta["gen_config"]))
    G = Generator(cfg)
    state = load_file(str(path))
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(f"{path}: the weights do not fit the network its metadata describes ({first})") from None
    return G.to(device).eval(), meta
