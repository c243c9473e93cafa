"""Model cards (Hugging Face's convention) for the shipped weights, generated from their provenance.

Every number on a card comes from the release file's metadata (steps, CPU-hours, lineage, scores, configs)
or from the committed training logs its lineage names (the machine of each stage); only the prose of
:data:`NOTES` (intended use, limits, known issues) is written by hand, and it holds no numbers.
``otm models --cards docs/models`` writes them; ``tests/test_cards.py`` checks the committed cards are current.
"""

from __future__ import annotations

import json
from pathlib import Path

from otmlib.models import GeneratorConfig
from otmlib.zoo import ReleaseInfo, read_release

ROOT = Path(__file__).resolve().parents[1]

NOTES: dict[str, dict[str, str]] = {
    "baseline": {
        "use": "Removing JPEG blocking and ringing from greyscale (luminance) images coded at the quality it was "
               "trained for; the per-pixel L2 baseline of the paper's Table 2. `otm restore` applies it to the luminance of colour files and keeps the "
               "decoder's chroma.",
        "limits": "One model per JPEG quality (the paper's stated limitation): far from its quality it helps less or "
                  "harms (see `otm restore`'s note). Being the per-pixel optimum, it is smooth where the JPEG lost "
                  "texture: it returns the average of the plausible originals.",
        "issues": "The shift-and-average box was folded into a 5x5 deconvolution and trained on without it; "
                  "`tests/test_restore.py::test_shipped_baselines_leave_no_deconvolution_grid` bounds the "
                  "period-2 pattern this leaves on a flat JPEG.",
    },
    "baseline-any": {  # a baseline that reads the file's quantisation table (issue 19)
        "use": "Removing JPEG blocking and ringing from greyscale (luminance) images coded at any quality, with "
               "IJG tables or others (cameras', editors'): G reads the file's luminance quantisation table. "
               "`otm restore --model baseline-any` (without `--model`, far files go to one-to-many-any, its "
               "one-to-many sibling); `--strength S` gives it the table times S (more or less restoration than the "
               "file calls for).",
        "limits": "Beyond the paper (which trains one model per quality). A per-pixel L2 model: smooth where the "
                  "JPEG lost texture. Trained on IJG tables and perturbed IJG tables only; grey and luminance only "
                  "(the chroma of colour files is kept or restored by a chroma model).",
        "issues": "Slightly short of the single-model peers (DnCNN-3, QGAC) at Q30-40, and on PSNR-B at Q10-40; see "
                  "`figures/any_quality.csv` (notebook 07) for every quality. Its first stage saw few patches "
                  "above Q90 (log-uniform qualities) and made Q95 files slightly worse than the JPEG; its last "
                  "stage draws half of its patches log-uniformly in the table's scale, which gives the high "
                  "qualities as many patches as the lowest.",
    },
    "one-to-many-any": {  # the one-to-many recipe on baseline-any (issue 19)
        "use": "Proposing several plausible originals of one greyscale JPEG at any quality (`otm restore --model "
               "one-to-many-any -n K`): G reads the file's luminance quantisation table, as baseline-any does; "
               "`--alpha` moves between its L2 parent (0, baseline-any's first stage) and this model (1). For "
               "pictures, not for measurement: a candidate invents detail the file does not hold.",
        "limits": "Beyond the paper. The one-to-many-q10 recipe on a few CPU-hours with EfficientNet-Lite0 "
                  "features (VGG-19 weights cannot be downloaded here). The spread of its candidates follows its L2 "
                  "parent's error, so it shrinks as the quality rises; candidates score below the baseline on PSNR "
                  "by design (an ideal sampler sits 3 dB below the per-pixel optimum).",
        "issues": "At the highest qualities the raw candidates sit further below their L2 parent than an ideal "
                  "sampler would: the naturalness term adds texture where the file already holds it. `otm restore` "
                  "projects each candidate into the file's quantisation intervals by default, which brings them "
                  "back to about an ideal sampler's distance (`docs/training.md` has the numbers). Its textured / "
                  "flat ratio at Q10 is a little below the one-to-many issue's target and one-to-many-q10's: grain "
                  "shows in flat regions.",
    },
    "one-to-many": {
        "use": "Proposing several plausible originals of one greyscale JPEG at its quality (`otm restore -n K`), "
               "each sharper than the baseline's single answer; `--alpha` moves between the L2 parent (0) and "
               "this model (1). For pictures, not for measurement: a candidate invents detail the file does not hold.",
        "limits": "Trained on the 2-core CPU of this project with EfficientNet-Lite0 features for the perceptual "
                  "loss (VGG-19 weights cannot be downloaded there), for far fewer steps than the paper. One "
                  "quality only. Candidates score below the baseline on PSNR by design (an ideal sampler of "
                  "plausible originals sits 3 dB below the per-pixel optimum). The same recipe at the paper's scale "
                  "(VGG-19, a GPU batch): `configs/one-to-many-q10-vgg19-gpu.yaml`, not run here.",
        "procedure": "Its own stage is a branch of `configs/one-to-many-q10-moments.yaml`: rerun that config first, "
                     "then copy its folder as the header of `configs/one-to-many-q10-moments-s30.yaml` says.",
        "issues": "The invented texture follows the L2 parent's error map, so it is strongest on edges and fine "
                  "texture, and weaker but visible as grain in flat regions (the snow of `figures/explorer_example.png`); "
                  "in dark, low-contrast fur and inside the eye of `figures/quickstart.png` it reads more as noise than "
                  "as detail. It starts from the folded baseline (no shift-and-average): "
                  "`tests/test_restore.py::test_shipped_baselines_leave_no_deconvolution_grid` bounds the period-2 "
                  "pattern of its seed-0 candidate too.",
    },
    "chroma": {
        "use": "Restoring the colour (Cb and Cr) of colour JPEGs coded 4:2:0 at the quality it was trained for: "
               "chroma blocks and colour bleeding. `otm restore` uses it for 4:2:0 colour files near its quality "
               "beside the luminance model (`--chroma`, default: this file); the luminance model restores Y. Other "
               "files keep their decoded chroma, with a note (measured: applied to Q60 and Q90 files it harms).",
        "limits": "Beyond the paper (which retrains its whole network on RGB): a separate, narrower network for "
                  "the two chroma planes, trained from scratch with a per-pixel L2 loss, so its colours are the "
                  "average of the plausible ones. One quality, 4:2:0 files.",
        "issues": "The colour issue's targets are not met yet: with the luminance baseline its RGB PSNR gain over "
                  "the JPEG is short of +1.9 dB, and the mean Cb / Cr of an output can still lie more than 0.5 levels "
                  "from the original's (as the JPEG's does); see the evaluation.",
    },
}


# Resume points of intermediate stages removed from the tree (the house issue, point 3): the last commit that holds
# each, so a card can say where ``git show COMMIT:PATH > PATH`` brings it back. Their configs retrain them in order.
WEIGHTS_IN_GIT = {f"checkpoints/{run}/last.pt": "a36b468" for run in (
    "baseline-q10", "baseline-q10-aligned", "baseline-q10-p128-folded", "baseline-q10-folded", "baseline-q10-scales-a",
    "baseline-q20", "baseline-q5")}


def _source_cell(src: str) -> str:
    """A lineage entry's ``from``, with the commit that still holds it when it left the tree."""
    if not (ROOT / src).exists() and src in WEIGHTS_IN_GIT:
        return f"`{src}` (removed; in git at `{WEIGHTS_IN_GIT[src]}`)"
    return f"`{src}`"


def _run_dir(source: str) -> Path | None:
    """The run folder a lineage entry's ``from`` came out of: ``checkpoints/NAME/last.pt`` -> ``checkpoints/NAME``;
    a release file -> the ``out`` folder of its training config (None when unknown)."""
    p = Path(source)
    if p.suffix == ".safetensors":
        try:
            out = read_release(ROOT / p if not p.is_absolute() else p).train_config.get("out")
        except ValueError:
            return None
        return ROOT / out if out else None
    return (ROOT / p).parent


def _config_for(run_dir: Path | None) -> str | None:
    """The committed config that trained the run in ``run_dir`` (``checkpoints/NAME`` -> ``configs/NAME.yaml``)."""
    if run_dir is None:
        return None
    return f"configs/{run_dir.name}.yaml" if (ROOT / "configs" / f"{run_dir.name}.yaml").exists() else None


def _machines(run_dir: Path) -> str:
    """The CPUs a run's log says it ran on (start and resume records), or "not logged"."""
    log = run_dir / "log.jsonl"
    if not log.exists():
        return "not logged"
    seen: list[str] = []
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if r.get("event") in ("start", "resume") and r.get("cpu") and r["cpu"] not in seen:
            seen.append(r["cpu"])
    return "; ".join(seen) or "not logged"


def _stage_rows(info: ReleaseInfo) -> list[str]:
    rows = ["| stage | from | config | steps | CPU-hours (cumulative) | machine | what changed for the next stage |",
            "|---|---|---|---|---|---|---|"]
    changes = {"folded_shift_and_average": "shift-and-average folded into the deconvolution (same function)",
               "added_identity_units": "residual units added as identities", "widened_units_to": "units widened",
               "added_noise_branch": "a new z branch added (fusion gain {z_init_gain})",
               "added_table_conditioning": "quantisation-table conditioning added (FiLM, identity at the start)"}
    for i, e in enumerate(info.lineage, 1):
        what = []
        for key, text in changes.items():
            if e.get(key):
                v = e[key]
                what.append(text.format(**v) if isinstance(v, dict) else text)
        src = e["from"]
        run_dir = _run_dir(src)
        rows.append(f"| {i} | {_source_cell(src)} | {_config_for(run_dir) or '-'} | {e['steps']:,} | {e['cpu_hours']:.2f} | "
                    f"{_machines(run_dir) if run_dir else 'not logged'} | {'; '.join(what) or '-'} |")
    out = info.train_config.get("out", "")
    cfg = _config_for(ROOT / out if out else None) or "-"
    rows.append(f"| {len(info.lineage) + 1} (this file) | `{out}` | {cfg} | {info.steps:,} | {info.cpu_hours:.2f} | "
                f"{_machines(ROOT / out) if out else 'not logged'} | - |")
    return rows


def render_card(name: str, path: str | Path) -> str:
    """The model card of the release file ``path`` (shipped as ``name``), as Markdown."""
    info = read_release(path)
    notes = NOTES[name if name in NOTES else "baseline-any" if info.reads_table and info.mode == "baseline"
                  else info.mode if info.mode in NOTES else "baseline"]
    gen = GeneratorConfig(**info.gen_config)
    lines = [f"# {name}", "",
             f"<!-- generated by `otm models --cards docs/models` from otmlib/weights/{name}.safetensors: "
             "edit otmlib/cards.py, not this file -->", "",
             "## What it is",
             f"- **{info.mode}** generator for JPEG "
             + (f"qualities {info.qualities[0]}-{info.qualities[1]}" if info.qualities else f"quality {info.quality}")
             + f" (Guo & Chao, CVPR 2017): {gen.describe()}.",
             f"- Weights: {info.weights}; perceptual backbone: {info.backbone}.",
             f"- Provenance: exported {info.exported} from commit `{info.git_commit}`.", ""]
    if info.mode == "one-to-many":
        tc = info.train_config
        w, g = tc.get("weights", {}), tc.get("gan", {})
        lines += ["## Recipe",
                  f"- eq. (7): l1 {w.get('l1')}, l2 {w.get('l2')}, l3 {w.get('l3')}; learning rate {tc.get('lr')}, "
                  f"batch {tc.get('batch_size')} JPEGs of {tc.get('data', {}).get('patch')}x"
                  f"{tc.get('data', {}).get('patch')}.",
                  "- one-to-many step (`otmlib.steps.GanConfig`): " + (", ".join(f"{k} {v}" for k, v in g.items())
                                                                       or "the paper's (trained before GanConfig existed)") + ".",
                  "- alpha (`otm restore --alpha`): " + ("0 (its L2 parent) to 1 (this model); the parent ships "
                                                         "inside this file." if info.has_l2_parent else
                                                         "not available (no L2 parent in this file)."), ""]
    lines += ["## Intended use", notes["use"], "", "## Limits", notes["limits"], "",
              "## Training data", f"{info.data} (SHA-256 of the file list and bytes: `{info.data_sha256}`).", "",
              "## Procedure and lineage",
              f"{info.steps_total:,} optimiser steps in all, {info.cpu_hours:.2f} CPU-hours (this file's own stage: "
              f"{info.steps:,} steps; {info.wall_seconds / 3600:.2f} h wall time in all). Each stage started from the one above "
              "it; retrain it by running the configs in order (`otm train MODE --config CONFIG`).", "",
              *_stage_rows(info), "", *([notes["procedure"], ""] if "procedure" in notes else []),
              "## Evaluation"]
    for key, s in info.scores.items():
        if key == "candidates":
            continue
        if s.get("protocol") == "colour":
            luma = s.get("luma") or "jpeg"
            lines.append(f"- {key} (colour protocol: RGB, 4:2:0): "
                         f"PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f}, PSNR-B {s['psnrb']:.2f} dB (the JPEG's PSNR: "
                         f"{s['psnr_jpeg']:.2f} dB), colour shift mean {s['colour_shift_mean']:.2f} / largest "
                         f"{s['colour_shift_max']:.2f} levels, over {s['n']} images. Reproduce: `otm evaluate --colour "
                         f"--data ../shared/data/BSDS500/test --quality {info.quality} --model {luma}"
                         + ("`." if s.get("chroma") == "none" else f" --chroma {name}`."))
            continue
        lines.append(f"- {key} (Table 2 protocol, luminance{', candidate z seed 0' if info.mode == 'one-to-many' else ''}): "
                     f"PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f}, PSNR-B {s['psnrb']:.2f} dB over {s['n']} images. "
                     f"Reproduce: `otm evaluate --data ../shared/data/BSDS500/test --quality {s.get('quality', info.quality)} "
                     f"--model {name}`.")
    if info.qualities:
        lines.append("- Every quality from 5 to 95 and a non-IJG table (mozjpeg's), beside the per-quality models: "
                     "`figures/any_quality.csv` and `figures/any_quality.png` (notebook 07).")
    cand = info.scores.get("candidates")
    if cand:
        lines += ["", f"Candidates ({cand['images']} BSDS500 test images, {cand['k']} candidates each; reproduce: "
                  f"`otm evaluate --data ../shared/data/BSDS500/test --quality {info.quality} --model {name} "
                  f"-n {cand['k']}`):", "",
                  "| measure | value |", "|---|---|"]
        for label, key, fmt in CANDIDATE_ROWS:
            if key in cand:
                lines.append(f"| {label} | {fmt.format(cand[key])} |")
    lines += ["", "## Known issues", notes["issues"], ""]
    return "\n".join(lines)


CANDIDATE_ROWS = [  # (label, key in scores["candidates"], format)
    ("candidates' PSNR / SSIM / PSNR-B", "psnr_ssim_psnrb", "{}"),
    ("gap to the L2 parent's PSNR (dB)", "gap_db", "{:+.2f}"),
    ("diversity: RMS per-pixel std across candidates (grey levels)", "diversity", "{:.2f}"),
    ("diversity / the L2 parent's RMSE", "diversity_over_rmse", "{:.2f}"),
    ("diversity in textured / flat regions (grey levels)", "textured_and_flat", "{}"),
    ("textured / flat", "textured_flat", "{:.2f}"),
    ("texture ratio (gradient energy / the original's)", "texture_ratio", "{:.2f}"),
    ("BRISQUE (lower is more natural)", "brisque", "{:.1f}"),
    ("DCT coefficients inside the file's intervals, before projection", "interval_share", "{:.2%}"),
    ("KID, Lite2 features of 64x64 tiles (model / L2 parent / JPEG)", "kid_triplet", "{}"),
]


def candidate_scores(summary, images: int, k: int) -> dict:
    """The ``scores["candidates"]`` entry of a release file from :func:`otmlib.measure.summarise`'s frame."""
    s = summary.set_index("method")
    one = s.loc["one-to-many"]
    out = {"images": images, "k": k,
           "psnr_ssim_psnrb": f"{one['psnr']:.2f} / {one['ssim']:.4f} / {one['psnrb']:.2f}",
           "textured_and_flat": f"{one['diversity_textured']:.2f} / {one['diversity_flat']:.2f}"}
    for key in ("gap_db", "diversity", "diversity_over_rmse", "textured_flat", "texture_ratio", "brisque",
                "interval_share"):
        if key in one and one[key] == one[key]:
            out[key] = round(float(one[key]), 4)
    if "kid" in s:
        out["kid_triplet"] = " / ".join(f"{s.loc[m, 'kid']:.3f}" if m in s.index else "-"
                                        for m in ("one-to-many", "baseline", "JPEG"))
    return out


def write_cards(directory: str | Path) -> list[Path]:
    """A card per shipped weights file into ``directory`` (``NAME.md``); returns the paths written."""
    from otmlib.zoo import shipped

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, path in shipped().items():
        out = directory / f"{name}.md"
        out.write_text(render_card(name, path))
        written.append(out)
    return written
