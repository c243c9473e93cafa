"""Candidate measurements: BRISQUE orders originals, JPEGs and blur as published; rows are complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from otmlib import jpeg
from otmlib.measure import brisque_score, measure_image, summarise
from otmlib.models import Generator, GeneratorConfig
from otmlib.restore import restore_luma


def test_brisque_ranks_original_above_jpeg_and_blur(chelsea):
    y = jpeg.luminance(chelsea)
    orig = brisque_score(y)
    q10 = brisque_score(jpeg.compress(y, 10).pixels)
    blur = brisque_score(gaussian_filter(y.astype(float), 2.0).round().astype(np.uint8))
    # ranges reported for this package on this kind of photo: originals 3-11, Q10 56-70, blur 54-71
    assert orig < 15 and q10 > 40 and blur > 40


def test_measure_image_rows(camera):
    torch.manual_seed(0)
    tiny = GeneratorConfig(width=8, branch_units=1, agg_units=1)
    G_otm = Generator(tiny).eval()
    G_base = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)).eval()
    y = camera[:96, :128]
    rows = measure_image(y, 10, G_base, G_otm, seeds=[0, 1])
    assert [r["output"] for r in rows] == ["JPEG", "baseline", "one-to-many seed 0", "one-to-many seed 1"]
    jpeg_row = rows[0]
    assert jpeg_row["interval_share"] == 1.0 and "var_all" not in jpeg_row
    assert rows[2]["var_all"] == rows[3]["var_all"] > 0
    # the image's diversity terms are the candidates' variance, overall and per region
    from otmlib.restore import candidate_variance

    var = candidate_variance([rows_c for rows_c in restore_luma(G_otm, jpeg.compress(y, 10).pixels, [0, 1])])
    assert rows[2]["var_all"] == pytest.approx(var.mean())
    assert rows[2]["n_textured"] + rows[2]["n_flat"] <= y.size
    import pandas as pd

    s = summarise(pd.DataFrame(rows))
    assert s.loc[s.method == "one-to-many", "diversity"].item() == pytest.approx(np.sqrt(var.mean()))
    assert list(s["method"]) == ["JPEG", "baseline", "one-to-many"]
    assert s.loc[s.method == "one-to-many", "outputs"].item() == 2
    assert s.loc[s.method == "JPEG", "psnr"].item() == pytest.approx(rows[0]["psnr"])


def test_check_targets_reads_the_summary():
    import pandas as pd

    from otmlib.measure import check_targets

    s = pd.DataFrame([
        {"method": "JPEG", "kid": 0.9},
        {"method": "baseline", "kid": 0.6},
        {"method": "one-to-many", "kid": 0.7, "diversity_over_rmse": 0.6, "textured_flat": 2.9, "gap_db": -3.6,
         "texture_ratio": 1.0, "brisque": 10.0, "interval_share": 0.995},
    ])
    t = check_targets(s)
    met = t["met"].to_dict()
    assert met["diversity / baseline RMSE >= 0.5"] and not met["textured / flat >= 3"]
    assert not met["gap to the baseline within 3.5 dB"] and met["texture ratio 0.9-1.1"]
    assert met["inside the intervals >= 99%"] and not met["KID below the baseline's and the JPEG's"]
    assert t.loc["textured / flat >= 3", "measured"] == 2.9


def test_measure_colour_image_rows(chelsea):
    """The colour issue's candidate measures on RGB, checked against direct computations on the same outputs."""
    from otmlib.measure import measure_colour_image, tiles
    from otmlib.metrics import rgb_metrics
    from otmlib.restore import restore_image

    torch.manual_seed(0)
    G_otm = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1)).eval()
    G_base = Generator(GeneratorConfig(width=8, branch_units=1, agg_units=1, noise=False)).eval()
    rgb = chelsea[:96, :128]
    kid_tiles: dict = {}
    rows = measure_colour_image(rgb, 10, G_base, G_otm, [0, 1], kid_tiles=kid_tiles)
    assert [r["output"] for r in rows] == ["JPEG", "baseline", "one-to-many seed 0", "one-to-many seed 1"]
    comp = jpeg.compress(rgb, 10, "4:2:0")
    cands = restore_image(G_otm, comp.pixels, [0, 1]).candidates
    assert rows[2]["psnr"] == pytest.approx(rgb_metrics(rgb, cands[0])["psnr"])
    assert rows[0]["psnr"] == pytest.approx(rgb_metrics(rgb, comp.pixels)["psnr"])
    stack = np.stack([c.astype(float) for c in cands])
    assert rows[2]["var_all"] == pytest.approx(stack.var(axis=0, ddof=1).mean())  # over pixels and channels
    assert rows[2]["var_all"] > 0 and "var_all" not in rows[1]
    assert rows[0]["interval_share"] > 0.98  # the JPEG's own Y, recomputed from its rounded RGB
    assert kid_tiles["original"][0].shape == (2, 64, 64, 3) and np.array_equal(kid_tiles["original"][0][1],
                                                                                 rgb[:64, 64:128])
    assert tiles(rgb).shape == (2, 64, 64, 3) and tiles(rgb[..., 0]).shape == (2, 64, 64)


def test_evaluate_candidates_on_rgb_from_the_command_line(tmp_path, chelsea, capsys):
    """`otm evaluate --colour -n K`: the candidate measures on RGB, with the chroma model or the decoded chroma."""
    from PIL import Image

    from otmlib.cli import main
    from otmlib.train import TrainConfig, Trainer, load_checkpoint
    from otmlib.data import DataConfig, code_image
    from otmlib.zoo import export_generator

    gen = GeneratorConfig(width=8, branch_units=1, agg_units=1)
    imgs = [code_image("c", chelsea[:96, :96, 0], 10, False)]
    base = Trainer(TrainConfig(mode="baseline", gen=gen, data=DataConfig(patch=32), batch_size=2, steps=1,
                               bf16=False, out=str(tmp_path / "a"), val_every=10**9), imgs, progress=False)
    base.fit()
    t = Trainer(TrainConfig(mode="one-to-many", gen=gen, data=DataConfig(patch=32), backbone="efficientnet-lite0",
                            d_width=8, batch_size=2, steps=1, bf16=False, out=str(tmp_path / "b"),
                            val_every=10**9), imgs, progress=False)
    t.init_from(tmp_path / "a" / "last.pt")
    t.fit()
    model = export_generator(load_checkpoint(t.ckpt_path), tmp_path / "otm.safetensors", data_description="",
                             data_sha256="")
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(chelsea[:128, :128]).save(data / "cat.png")
    Image.fromarray(chelsea[:128, :128, 0]).save(data / "grey.png")
    code = main(["evaluate", "--data", str(data), "--quality", "10", "--model", str(model), "-n", "2", "--colour",
                 "--chroma", "none", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1 and "grey.png" in err and "need RGB" in err  # the grey image is skipped, and said
    assert "RGB, 4:2:0; Cb/Cr as decoded" in out and "one-to-many" in out and "diversity" in out
