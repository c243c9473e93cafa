"""The README's result numbers are the ones the figures and the release files hold (nothing typed by hand)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from otmlib.zoo import read_release, shipped

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _row(label: str) -> list[str]:
    line = next(ln for ln in README.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_candidates_table_is_the_measured_csv():
    s = pd.read_csv(ROOT / "figures" / "candidates_q10.csv").set_index("method")
    for label, method in (("JPEG", "JPEG"), ("baseline", "baseline"), ("one-to-many, 4 candidates each", "one-to-many")):
        r, m = _row(label), s.loc[method]
        assert r[1] == f"{m['psnr']:.2f}" and r[2] == f"{m['psnrb']:.2f}"
        if method != "JPEG":
            assert r[3] == f"{100 * m['interval_share']:.2f}%"
        assert r[4] == f"{m['texture_ratio']:.2f}" and r[5] == f"{m['brisque']:.1f}" and r[6] == f"{m['kid']:.3f}"
    one = s.loc["one-to-many"]
    assert _row("one-to-many, 4 candidates each")[7].startswith(
        f"{one['diversity']:.2f}: textured {one['diversity_textured']:.2f}, flat {one['diversity_flat']:.2f}")
    text = " ".join(README.split())
    assert f"diversity {one['diversity_over_rmse']:.2f} of the baseline's RMSE" in text
    assert f"textured / flat {one['textured_flat']:.2f}" in text
    assert f"the candidates {-one['gap_db']:.2f} dB below the baseline's PSNR" in text


@pytest.mark.parametrize("name", sorted(shipped()))
def test_shipped_model_lines_are_the_files_provenance(name):
    info = read_release(name)
    line = next(ln for ln in README.splitlines() if ln.startswith(f"- [{name}]"))
    s = next(v for k, v in info.scores.items() if k != "candidates")
    assert f"{s['psnr']:.2f} / {s['ssim']:.4f} / {s['psnrb']:.2f}" in line
    assert f"{info.steps_total:,} steps" in line or f"({info.steps_total:,} in all)" in line
    assert re.search(rf"\b{info.cpu_hours:.2f} CPU-hours", line)


def test_any_quality_table_is_the_measured_csv():
    """Notebook 07 writes figures/any_quality.csv; the README's table quotes it."""
    df = pd.read_csv(ROOT / "figures" / "any_quality.csv")
    head = _row("quality")
    qs = [int(q) for q in head[1:]]
    jpeg_cells, any_cells, per_cells = _row("JPEG, PSNR / PSNR-B")[1:], _row("baseline-any, gain")[1:], \
        _row("per-quality model, gain")[1:]
    for q, j, a, p in zip(qs, jpeg_cells, any_cells, per_cells):
        rows = df[df.coding == f"Q{q}"].set_index("method")
        assert j == f"{rows.loc['JPEG', 'psnr']:.2f} / {rows.loc['JPEG', 'psnrb']:.2f}"
        assert a == f"{rows.loc['baseline-any', 'gain_psnr']:+.2f} / {rows.loc['baseline-any', 'gain_psnrb']:+.2f}"
        per = rows.drop(index=["JPEG", "baseline-any"])
        per = per[~per.index.str.endswith("seed 0")]  # the one-to-many-any candidate has its own row
        assert p == ("-" if per.empty else f"{per.gain_psnr.iloc[0]:+.2f} / {per.gain_psnrb.iloc[0]:+.2f}")
    otm_cells = _row("one-to-many-any candidate (z seed 0), PSNR minus baseline-any's")[1:]
    for q, o in zip(qs, otm_cells):
        rows = df[df.coding == f"Q{q}"].set_index("method")
        assert o == f"{rows.loc['one-to-many-any seed 0', 'psnr'] - rows.loc['baseline-any', 'psnr']:+.2f}"
    # the prose under the table: the gaps to DnCNN-3, Q95, mozjpeg's table
    from otmlib.evaluate import SINGLE_MODEL_PEERS

    text = " ".join(README.split())
    ours = df[df.method == "baseline-any"].set_index("coding")
    gaps_b = [v[1] - ours.loc[f"Q{q}", "psnrb"] for q, v in SINGLE_MODEL_PEERS["DnCNN-3"].items()]
    gaps = [v[0] - ours.loc[f"Q{q}", "psnr"] for q, v in SINGLE_MODEL_PEERS["DnCNN-3"].items() if q >= 30]
    assert f"by {min(gaps_b):.2f}-{max(gaps_b):.2f} dB on PSNR-B at Q10-40" in text
    assert f"{min(gaps):.2f}-{max(gaps):.2f} dB on PSNR at Q30-40" in text
    assert f"({ours.loc['Q95', 'gain_psnr']:+.2f} / {ours.loc['Q95', 'gain_psnrb']:+.2f})" in text
    for q in (50, 75):
        assert f"{ours.loc[f'mozjpeg Q{q}', 'gain_psnr']:+.2f} / {ours.loc[f'mozjpeg Q{q}', 'gain_psnrb']:+.2f}" in text
