"""Release weights: safetensors files with their provenance, shipped in ``otmlib/weights/``.

A release file holds G's tensors (float32) and string metadata: the generator config, the full
training config, the data (description and SHA-256), steps, wall time, git commit, backbone and
any measured scores. Loading never unpickles: safetensors stores raw tensors only.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from otmlib.models import Generator, GeneratorConfig, interpolate_generators

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = "otm-weights-1"
L2_PREFIX = "l2_parent."  # tensors of the L2 baseline a one-to-many G was warm-started from


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
    def plain(state: dict) -> dict:
        return {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()}

    tensors = plain(checkpoint.get("G_ema", checkpoint["G"]))
    if "G_ref" in checkpoint:  # the L2 parent of a warm-started one-to-many G: alpha (interpolation) needs it
        tensors.update({L2_PREFIX + k: v for k, v in plain(checkpoint["G_ref"]).items()})
        meta["l2_parent"] = json.dumps(checkpoint["G_ref_config"])
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


@dataclass(frozen=True)
class ReleaseInfo:
    """A release file's provenance, typed (what ``otm models``, the cards and the notebooks print)."""

    path: Path
    mode: str
    quality: int
    steps: int  # this file's own training stage
    steps_total: int  # with every stage of its lineage
    cpu_hours: float  # all stages
    wall_seconds: float
    gen_config: dict
    train_config: dict
    lineage: list
    scores: dict
    backbone: str
    data: str
    data_sha256: str
    git_commit: str
    exported: str
    weights: str
    has_l2_parent: bool

    @property
    def qualities(self) -> tuple[int, int] | None:
        """The JPEG qualities it was trained on when it learnt a range (an any-quality model), else None."""
        q = self.train_config.get("data", {}).get("qualities")
        return (int(q[0]), int(q[1])) if q else None

    @property
    def reads_table(self) -> bool:
        """Whether G reads the file's quantisation table (``table_cond``; ``otm restore --strength`` scales it)."""
        return bool(self.gen_config.get("table_cond"))

    def covers(self, quality: int) -> bool:
        """Whether a file of (estimated IJG) ``quality`` is what it learnt: inside its range, or near its one
        quality (:func:`otmlib.restore.near_quality`)."""
        from otmlib.restore import near_quality

        if self.qualities:
            return self.qualities[0] <= quality <= self.qualities[1]
        return near_quality(quality, self.quality)


def read_release(path: str | Path) -> ReleaseInfo:
    """:class:`ReleaseInfo` of a release file (a shipped name or a path)."""
    path = resolve(path)
    m = read_metadata(path)
    return ReleaseInfo(
        path=path, mode=m["mode"], quality=int(m["quality"]), steps=int(m["steps"]),
        steps_total=int(m.get("steps_total", m["steps"])),  # older files: wall hours (one thread then)
        cpu_hours=float(m.get("cpu_hours", float(m.get("wall_seconds", "nan")) / 3600)),
        wall_seconds=float(m.get("wall_seconds", "nan")), gen_config=json.loads(m["gen_config"]),
        train_config=json.loads(m.get("train_config", "{}")), lineage=json.loads(m.get("lineage", "[]")),
        scores=json.loads(m.get("scores", "{}")), backbone=m.get("backbone", ""), data=m.get("data", ""),
        data_sha256=m.get("data_sha256", ""), git_commit=m.get("git_commit", "unknown"),
        exported=m.get("exported", "unknown"), weights=m.get("weights", "G at the last step"),
        has_l2_parent="l2_parent" in m)


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


def refuse_non_finite(path: str | Path, state: dict[str, torch.Tensor]) -> None:
    """``ValueError`` naming ``path`` if a floating tensor holds NaN or inf.

    A file whose header is valid but whose data is damaged loads without complaint and then writes
    all-black or degraded images; no trained G has non-finite weights, so such a file is refused.
    """
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{path}: damaged weights file: {len(bad)} tensor(s) hold NaN or inf values "
                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); re-download or re-export it")


def _read_state(path: Path) -> tuple[dict, dict[str, torch.Tensor], Generator | None]:
    """A release file's metadata, G's tensors, and its L2 parent (eval mode) if it carries one; damaged
    values and tensors that do not fit the described network are refused naming the file."""
    meta = read_metadata(path)
    state = load_file(str(path))
    refuse_non_finite(path, state)
    parent_state = {k[len(L2_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(L2_PREFIX)}
    parent = None
    if parent_state and "l2_parent" in meta:
        parent = Generator(GeneratorConfig(**json.loads(meta["l2_parent"])))
        _load_strict(path, parent, parent_state)
        parent.eval()
    return meta, state, parent


def _load_strict(path: Path, G: Generator, state: dict[str, torch.Tensor]) -> None:
    try:
        G.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(f"{path}: the weights do not fit the network its metadata describes ({first})") from None


def load_generator(
    name_or_path: str | Path, device: torch.device | str = "cpu", alpha: float | None = None
) -> tuple[Generator, dict]:
    """Build G from a release file (eval mode) and return it with its metadata.

    ``alpha`` (one-to-many files that carry their L2 parent): the interpolated network
    :func:`otmlib.models.interpolate_generators`, 0 = the baseline's function, 1 (or None) = the file's G.
    """
    path = resolve(name_or_path)
    meta, state, parent = _read_state(path)
    G = Generator(GeneratorConfig(**json.loads(meta["gen_config"])))
    _load_strict(path, G, state)
    if alpha is not None and alpha != 1.0:
        if parent is None:
            raise ValueError(f"{path}: --alpha needs a one-to-many model that carries its L2 parent "
                             "(warm-started from a baseline); this file has none")
        G = interpolate_generators(parent, G.eval(), alpha)
    return G.to(device).eval(), meta


def load_l2_parent(name_or_path: str | Path, device: torch.device | str = "cpu") -> Generator | None:
    """The L2 baseline a one-to-many release file was warm-started from (eval mode), or None if it carries none."""
    parent = _read_state(resolve(name_or_path))[2]
    return parent.to(device).eval() if parent is not None else None


def load_chroma_model(name_or_path: str | Path, device=None) -> Generator:
    """A chroma model (``mode: chroma``: a 3-channel baseline restoring Cb/Cr of colour JPEGs), in eval mode;
    a one-line ValueError naming the file for any other model."""
    if read_release(name_or_path).mode != "chroma":  # an RGB baseline is 3-channel too, but reads RGB
        raise ValueError(f"{name_or_path}: not a chroma model (a 3-channel baseline trained with mode: chroma)")
    G, _ = load_generator(name_or_path, device)
    return G.eval()
