"""Model cards: generated from the release files' provenance, committed, and current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from otmlib.cards import render_card
from otmlib.zoo import read_release, shipped

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "docs" / "models"


@pytest.mark.parametrize("name", sorted(shipped()))
def test_committed_card_is_current(name):
    card = CARDS / f"{name}.md"
    assert card.exists(), f"no card for {name}: run `otm models --cards docs/models`"
    assert card.read_text() == render_card(name, shipped()[name]), (
        f"{card.relative_to(ROOT)} is stale: run `otm models --cards docs/models`")


@pytest.mark.parametrize("name", sorted(shipped()))
def test_card_numbers_are_the_files_provenance(name):
    info = read_release(name)
    text = (CARDS / f"{name}.md").read_text()
    m = re.search(r"([\d,]+) optimiser steps in all, ([\d.]+) CPU-hours", text)
    assert m and int(m.group(1).replace(",", "")) == info.steps_total
    assert float(m.group(2)) == pytest.approx(info.cpu_hours, abs=0.005)
    for key, s in info.scores.items():
        if key != "candidates":
            assert f"PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f}, PSNR-B {s['psnrb']:.2f} dB" in text
    # one table row per lineage stage, plus this file's own
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+( \(this file\))? \|", ln)]
    assert len(rows) == len(info.lineage) + 1
    assert f"{info.steps:,}" in rows[-1]


@pytest.mark.parametrize("name", sorted(shipped()))
def test_every_stage_can_be_retrained_or_fetched(name):
    """The house issue, point 3: a lineage stage's weights are in the tree, or the card names the commit that holds
    them, and its config is in configs/ so the stages retrain in order."""
    import subprocess

    from otmlib.cards import WEIGHTS_IN_GIT, _config_for, _run_dir

    shallow = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
                             capture_output=True, text=True)
    for e in read_release(name).lineage:
        src = e["from"]
        assert _config_for(_run_dir(src)) is not None, f"{name}: no config retrains {src}"
        if (ROOT / src).exists():
            continue
        assert src in WEIGHTS_IN_GIT, f"{name}: {src} is neither in the tree nor in otmlib.cards.WEIGHTS_IN_GIT"
        if shallow.returncode == 0 and shallow.stdout.strip() == "false":
            held = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{WEIGHTS_IN_GIT[src]}:{src}"])
            assert held.returncode == 0, f"{name}: commit {WEIGHTS_IN_GIT[src]} does not hold {src}"


def test_every_experiment_has_a_readable_config_and_a_row():
    """experiments/NAME holds a config that still parses (so its header's rerun command works) and the README
    gives it a row (what it tested, the verdict)."""
    import yaml

    from otmlib.train import TrainConfig

    readme = (ROOT / "experiments" / "README.md").read_text()
    folders = sorted(p for p in (ROOT / "experiments").iterdir() if p.is_dir())
    assert folders
    for d in folders:
        TrainConfig.from_dict(yaml.safe_load((d / "config.yaml").read_text()))
        assert (d / "log.jsonl").exists(), d.name
        assert f"| {d.name} |" in readme, f"experiments/README.md has no row for {d.name}"


def test_every_config_is_named_by_a_card():
    """The house issue: configs/ holds only what trains a shipped file (its card names each stage's config);
    dead ends and controls live in experiments/."""
    cards = "".join(p.read_text() for p in CARDS.glob("*.md"))
    unnamed = [p.name for p in sorted((ROOT / "configs").glob("*.yaml")) if f"configs/{p.name}" not in cards]
    assert not unnamed, f"configs not named by any card (ship them, or move them to experiments/): {unnamed}"
