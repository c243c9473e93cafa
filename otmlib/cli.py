"""The ``otm`` command line. Each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from otmlib.imageio import ImageError


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from otmlib.evaluate import evaluate

    report = evaluate(args.data, args.quality, args.model, on_error=args.on_error, limit=args.limit,
                      progress=not args.no_progress)
    for f, why in report.failures:
        print(f"otm: skipped {f}: {why}", file=sys.stderr)
    if report.n == 0:
        raise ImageError(args.data, "no readable images", "see the messages above")
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{report.model} on {report.data} at JPEG quality {report.quality} ({report.n} images, luminance):")
        print(f"  PSNR   {summary['psnr']:.2f} dB")
        print(f"  SSIM   {summary['ssim']:.4f}")
        print(f"  PSNR-B {summary['psnrb']:.2f} dB")
        print(f"  block-edge ratio {summary['edge_ratio']:.2f} (squared step across 8x8 edges / inside; 1 = no blocking)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from otmlib import jpeg
    from otmlib.viz import blocking_figure, sample_image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    img = sample_image(args.image)
    fig = blocking_figure(img, args.quality)
    png = out / f"demo_blocking_{args.image}_q{args.quality}.png"
    jpg = out / f"demo_{args.image}_q{args.quality}.jpg"
    for p in (png, jpg):
        if p.exists():
            print(f"replacing {p} (a regenerated figure)")
    fig.savefig(png, dpi=120)
    jpg.write_bytes(jpeg.encode(jpeg.luminance(img), args.quality))
    print(f"wrote {png}\nwrote {jpg}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from otmlib.jpeg import read_jpeg_info

    status = 0
    for f in args.files:
        try:
            info = read_jpeg_info(f)
        except (OSError, ValueError) as e:
            print(f"otm: {f}: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{f}: {info.width}x{info.height} {info.mode}, {info.components} component(s), "
              f"subsampling {info.subsampling or 'n/a'}, {'progressive' if info.progressive else 'baseline'}")
        for tid, table in info.quant_tables.items():
            print(f"  quantisation table {tid}:")
            for row in table:
                print("    " + " ".join(f"{v:3d}" for v in row))
    return status


def _train_config(args: argparse.Namespace):
    from otmlib.train import TrainConfig

    base: dict = {}
    if args.config:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"{path}: no such config file")
        base = yaml.safe_load(path.read_text()) or {}
        if not isinstance(base, dict):
            raise ValueError(f"{path}: a config file is a YAML mapping of TrainConfig fields")
    base["mode"] = args.mode
    data = dict(base.get("data", {}))
    gen = dict(base.get("gen", {}))
    for key, dest, value in (
        ("data", data, args.data), ("quality", data, args.quality), ("patch", data, args.patch),
        ("colour", data, True if args.colour else None), ("width", gen, args.width),
    ):
        if value is not None:
            dest[key] = value
    base["data"], base["gen"] = data, gen
    for key in ("steps", "batch_size", "backbone", "out", "seed", "num_workers", "lr", "init"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.no_bf16:
        base["bf16"] = False
    if "out" not in base:
        base["out"] = f"runs/{args.mode}-q{data.get('quality', 10)}"
    return TrainConfig.from_dict(base)


def _cmd_train(args: argparse.Namespace) -> int:
    from otmlib.data import training_sets
    from otmlib.train import Trainer

    cfg = _train_config(args)
    out = Path(cfg.out)
    if (out / "last.pt").exists() and not args.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    sets = training_sets(cfg.data)
    print(f"data: {sets.description}", file=sys.stderr)
    for f in sets.failures:
        print(f"otm: skipped {f}", file=sys.stderr)
    trainer = Trainer(cfg, sets.train, sets.val, data_description=sets.description)
    print(f"backbone: {trainer.backbone_note}", file=sys.stderr)
    print(f"precision: {trainer.precision}", file=sys.stderr)
    if args.resume and trainer.resume():
        print(f"resumed {out / 'last.pt'} at step {trainer.step}", file=sys.stderr)
    elif cfg.init:
        e = trainer.init_from(cfg.init)
        print(f"G starts from {e['from']} ({e['mode']}, Q{e['quality']}, {e['steps']} steps, "
              f"{e['cpu_hours']:.2f} CPU-hours, carried into this run's provenance){_network_changes(e)}",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps({"description": sets.description, "sha256": sets.sha256}, indent=1))
    trainer.fit()
    how = "stopped on request" if trainer.stop_requested else "done"
    print(f"{how}: step {trainer.step}, checkpoint {trainer.ckpt_path}, log {trainer.log_path}"
          + (" (continue with --resume)" if trainer.stop_requested else ""), file=sys.stderr)
    return 0


def _network_changes(e: dict) -> str:
    """What ``Trainer.init_from`` did to a parent's G (a lineage entry), as "; ..." clauses, or ""."""
    parts = []
    if e.get("folded_shift_and_average"):
        parts.append("its shift-and-average folded into the deconvolution")
    if e.get("widened_units_to"):
        parts.append(f"its residual units widened to {e['widened_units_to']} inner filters (same function)")
    if e.get("added_identity_units"):
        parts.append(f"{e['added_identity_units']} residual units added as identities")
    return "".join(f"; {p}" for p in parts)


def _cmd_export(args: argparse.Namespace) -> int:
    from otmlib.train import load_checkpoint
    from otmlib.zoo import export_generator

    ck = load_checkpoint(args.checkpoint)
    data_json = Path(args.checkpoint).parent / "data.json"
    data = json.loads(data_json.read_text()) if data_json.exists() else {"description": "unknown", "sha256": ""}
    scores = json.loads(Path(args.scores).read_text()) if args.scores else {}
    out = export_generator(ck, args.output, data_description=data["description"], data_sha256=data["sha256"],
                           scores=scores, force=args.force)
    if args.evaluate:  # measure the exported file itself, then record the scores in it
        from otmlib.evaluate import evaluate, model_restorer

        q = int(ck["config"]["data"]["quality"])
        rep = evaluate(args.evaluate, q, model_restorer(str(out)), progress=True)
        scores[f"{Path(args.evaluate).name} Q{q}"] = {k: round(v, 4) if isinstance(v, float) else v
                                                     for k, v in rep.summary().items() if k in ("n", "psnr", "ssim", "psnrb", "edge_ratio")}
        out = export_generator(ck, out, data_description=data["description"], data_sha256=data["sha256"],
                               scores=scores, force=True)
        print(f"scores: {scores}")
    print(f"wrote {out}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from otmlib.models import GeneratorConfig
    from otmlib.zoo import read_metadata, shipped

    models = shipped()
    if not models:
        print("no shipped weights yet")
    for name, path in models.items():
        m = read_metadata(path)
        hours = float(m.get("wall_seconds", 0)) / 3600
        cpu = m.get("cpu_hours", f"{hours:.2f}")
        steps = m.get("steps_total", m["steps"])
        print(f"{name}: {m['mode']} Q{m['quality']}, {steps} steps, {hours:.1f} h wall, {cpu} CPU-hours")
        lineage = json.loads(m.get("lineage", "[]"))
        for i, e in enumerate(lineage):  # oldest first; each entry's cpu_hours count its own parents too
            how = "started from" if i == 0 else "then"
            changes = _network_changes(e)
            print(f"    {how} {e['mode']} Q{e['quality']}: {e['steps']} steps ({e['cpu_hours']:.2f} CPU-hours in all)"
                  + (f"{changes} for the next stage" if changes else ""))
        if lineage:
            print(f"    then {m['steps']} steps here")
        print(f"    network: {GeneratorConfig(**json.loads(m['gen_config'])).describe()}")
        if "weights" in m:  # files exported before the moving average existed are G at the last step
            print(f"    weights: {m['weights']}")
        print(f"    backbone: {m['backbone']}")
        print(f"    data: {m['data']}")
        print(f"    commit {m['git_commit']}, scores {m.get('scores', '{}')}")
    return 0


def _restore_inputs(inputs: list[str]) -> list[Path]:
    from otmlib.imageio import list_images

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += list_images(p)
        else:
            files.append(p)  # a missing or odd file is reported per file, not fatal
    return files


def _cmd_restore(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from PIL import Image

    from otmlib.restore import restore_file
    from otmlib.utils import bf16_plan, default_device
    from otmlib.zoo import load_generator

    G, meta = load_generator(args.model, default_device())
    if args.bf16 and not bf16_plan(True, default_device())[0]:
        print(f"otm: --bf16 not used: {bf16_plan(True, default_device())[1]}", file=sys.stderr)
    model_name = Path(str(args.model)).stem
    trained_q = int(meta["quality"])
    seeds = [args.seed + i for i in range(args.n)]
    if not G.cfg.noise and args.n > 1:
        print(f"otm: {model_name} is a baseline (one output per image); -n {args.n} ignored", file=sys.stderr)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _restore_inputs(args.inputs)
    failures: list[str] = []
    written = 0
    for f in tqdm(files, desc="restoring", unit="img", disable=len(files) < 2 or args.quiet):
        try:
            targets = [out_dir / (f"{f.stem}_{model_name}" + (f"_seed{s}" if G.cfg.noise else "") + ".png")
                       for s in (seeds if G.cfg.noise else [None])]
            clash = [t for t in targets if t.exists()]
            if clash and not args.force:
                raise ValueError(f"{clash[0]} exists; pass --force to overwrite")
            res, notes = restore_file(G, f, seeds, quality=args.quality, consistent=not args.no_project,
                                      tile=args.tile, bf16=args.bf16, max_pixels=args.max_pixels)
            q_est = notes.get("quality_estimate")
            if q_est is not None and abs(q_est - trained_q) > max(3, trained_q // 2) and not args.quiet:
                print(f"otm: note: {f} looks like JPEG quality ~{q_est}; {model_name} was trained for "
                      f"quality {trained_q} (one model per quality, the paper's stated limitation)", file=sys.stderr)
            for t, c in zip(targets, res.candidates):
                tmp = t.with_name(t.name + ".tmp")
                Image.fromarray(c).save(tmp, format="PNG")
                tmp.replace(t)
                written += 1
        except (ValueError, OSError) as e:  # ImageError is a ValueError; one line per failed file
            failures.append(f)
            print(f"otm: {e}" if str(f) in str(e) else f"otm: {f}: {e}", file=sys.stderr)
    print(f"restored {len(files) - len(failures)} of {len(files)} image(s); wrote {written} file(s) to {out_dir}"
          + (f"; {len(failures)} failed: " + ", ".join(map(str, failures[:10])) if failures else "")
          + (f" and {len(failures) - 10} more (see above)" if len(failures) > 10 else ""), file=sys.stderr)
    return 1 if failures else 0


def _cmd_data(args: argparse.Namespace) -> int:
    from otmlib import datasets

    if args.action == "where":
        print(datasets.resolve_bsds500(args.dir).message)
        return 0
    if args.action == "download":
        dest = datasets.download_bsds500(Path(args.dir) if args.dir else None)
        print(f"BSDS500 verified at {dest} (500 files, SHA-256 manifest)")
        return 0
    src = datasets.resolve_bsds500(args.dir)
    if src.is_samples:
        raise ValueError(src.message)
    problems = datasets.verify_bsds500(src.root)
    for p in problems:
        print(f"otm: {p}", file=sys.stderr)
    print(f"{src.root}: " + ("all 500 files match the BSDS500 release" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otm",
        description="One-to-many JPEG artifact reduction (Guo & Chao, CVPR 2017).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser(
        "evaluate",
        help="mean PSNR / SSIM / PSNR-B over a folder (the paper's Table 2 protocol)",
        description="Each image: MATLAB rgb2ycbcr luminance, rounded to 8 bits, compressed as a grey "
        "JPEG at --quality, restored by --model, scored against the luminance.",
    )
    e.add_argument("--data", required=True, help="folder of ground-truth images (e.g. BSDS500/test)")
    e.add_argument("--quality", "-q", type=int, required=True, help="JPEG quality 1..100 (paper: 5, 10, 20)")
    e.add_argument("--model", default="jpeg", help="restorer: 'jpeg' = the decoded JPEG itself (default)")
    e.add_argument("--json", action="store_true", help="print one JSON object (n, psnr, ssim, psnrb, ...)")
    e.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="unreadable image: skip it and report it (default) or stop")
    e.add_argument("--limit", type=int, default=None, help="only the first N images (by name)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_evaluate)

    d = sub.add_parser("demo", help="show what JPEG does to a bundled photo (writes a figure)")
    d.add_argument("--out", default="figures", help="output folder (default: figures)")
    d.add_argument("--quality", "-q", type=int, default=10, help="JPEG quality (default 10)")
    d.add_argument("--image", default="chelsea", help="scikit-image sample name (default chelsea)")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser(
        "restore",
        help="restore JPEG files: K candidates each, written as PNG",
        description="Restore JPEG photos with a trained model. Writes OUTDIR/NAME_MODEL_seedS.png "
        "(NAME_MODEL.png for a baseline). Colour JPEGs: the luminance is restored, chroma is kept "
        "as decoded. Folders are processed whole; a bad file is reported and the rest go on.",
    )
    r.add_argument("inputs", nargs="+", help="JPEG files or folders")
    r.add_argument("-o", "--output", required=True, help="output folder")
    r.add_argument("--model", default="one-to-many-q10", help="shipped name (see `otm models`) or a .safetensors")
    r.add_argument("-n", type=int, default=1, help="candidates per image (one-to-many models)")
    r.add_argument("--seed", type=int, default=0, help="first noise seed; candidates use seed, seed+1, ...")
    r.add_argument("--quality", type=int, help="for non-JPEG inputs: compress at this quality first")
    r.add_argument("--force", action="store_true", help="overwrite existing outputs")
    r.add_argument("--no-project", action="store_true",
                   help="keep the network's raw output; by default each candidate's luminance is projected "
                   "into the file's own quantisation intervals (eq. 5), so it is a plausible original of that file")
    r.add_argument("--tile", type=int, default=512, help="tile size for large images (memory bound)")
    r.add_argument("--bf16", action="store_true", help="bfloat16 on a CPU with native bfloat16 (AVX512-BF16/AMX): about 3x faster model time; "
                   "outputs differ by at most 1 grey level (measured); ignored, with a note, elsewhere")
    r.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger images (default 100 MP)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or notes")
    r.set_defaults(func=_cmd_restore)

    t = sub.add_parser(
        "train",
        help="train the L2 baseline or the one-to-many network",
        description="Train G on JPEG patches. Settings come from TrainConfig's defaults, then --config "
        "(a YAML mapping of TrainConfig fields), then the flags below. Checkpoints go to OUT/last.pt "
        "every few minutes (atomically); --resume continues from there; the log is OUT/log.jsonl. "
        "Multi-GPU: torchrun --nproc_per_node=N -m otmlib.cli train ...",
    )
    t.add_argument("mode", choices=("baseline", "one-to-many"), help="baseline: per-pixel L2 (Table 2)")
    t.add_argument("--config", help="YAML file of TrainConfig fields (e.g. configs/baseline-q10.yaml)")
    t.add_argument("--data", help="BSDS500 root or an image folder (default: ../shared, OTM_DATA, cache, samples)")
    t.add_argument("--quality", "-q", type=int, help="JPEG quality of the inputs (default 10)")
    t.add_argument("--steps", type=int, help="total training steps")
    t.add_argument("--batch-size", type=int, help="patches per step")
    t.add_argument("--patch", type=int, help="patch side, a multiple of 8")
    t.add_argument("--width", type=int, help="filters per layer of G (paper: 64)")
    t.add_argument("--colour", action="store_true", help="train on RGB instead of luminance")
    t.add_argument("--backbone", help="perceptual network: vgg19 (paper, needs download) or efficientnet-lite0")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4)")
    t.add_argument("--out", help="run folder (default runs/MODE-qQ)")
    t.add_argument("--seed", type=int)
    t.add_argument("--num-workers", type=int, help="data loader worker processes")
    t.add_argument("--no-bf16", action="store_true", help="float32 even on a CPU with native bfloat16 (without it, float32 is used anyway)")
    t.add_argument("--resume", action="store_true", help="continue OUT/last.pt")
    t.add_argument("--init", metavar="CKPT", help="start G from another run's last.pt or a .safetensors "
                   "(fine-tuning, e.g. Q20 from Q10); its steps and CPU-hours count in the provenance")
    t.set_defaults(func=_cmd_train)

    x = sub.add_parser("export", help="write a checkpoint's G as release weights (safetensors + provenance)")
    x.add_argument("checkpoint", help="a run's last.pt")
    x.add_argument("-o", "--output", required=True, help="output .safetensors")
    x.add_argument("--scores", help="JSON file of measured scores to record")
    x.add_argument("--force", action="store_true", help="replace an existing output")
    x.add_argument("--evaluate", metavar="DIR", help="also score it on DIR (e.g. BSDS500/test) and record that")
    x.set_defaults(func=_cmd_export)

    m = sub.add_parser("models", help="list the shipped weights and their provenance")
    m.set_defaults(func=_cmd_models)

    dt = sub.add_parser("data", help="find, download or verify BSDS500")
    dt.add_argument("action", choices=("where", "download", "verify"),
                    help="where: which data training would use; download: fetch the official release "
                    "and check every file's SHA-256; verify: check a copy")
    dt.add_argument("dir", nargs="?", help="folder (default: the usual search order / ~/.cache/otm/BSDS500)")
    dt.set_defaults(func=_cmd_data)

    i = sub.add_parser("info", help="print a JPEG file's quantisation tables and layout")
    i.add_argument("files", nargs="+", help="JPEG files")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from otmlib.losses import BackboneUnavailable
    from otmlib.train import TrainingDiverged

    try:
        return args.func(args)
    except (ImageError, ValueError, FileExistsError, FileNotFoundError, ConnectionError, BackboneUnavailable) as e:
        print(f"otm: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"otm: training stopped: {e}", file=sys.stderr)
        return 3
    except BrokenPipeError:  # e.g. `otm info f.jpg | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("otm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
