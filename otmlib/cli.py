"""The ``otm`` command line. Each subcommand is a thin call into the library."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from otmlib.imageio import ImageError


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {v}")
    return v


def _alpha(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] (0 = the L2 baseline, 1 = the model), got {v}")
    return v


def _strength(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number (1 = the file's own table), got {text!r}") from None
    if not 0.0 < v <= 16.0:  # nan fails too
        raise argparse.ArgumentTypeError(f"expected a number in (0, 16] (1 = the file's own table), got {v}")
    return v


MIN_TILE = 64  # restore_luma blends tiles over a 32-pixel overlap, which must fit in half a tile
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2**64 - 1 (negatives alias these)


def _int_in(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _tile(text: str) -> int:
    """A tile side restore_tiled can use: tiles start on the 8x8 JPEG grid and overlap by 32 pixels."""
    v = _int_in(text, f"a multiple of 8, at least {MIN_TILE}")
    if v < MIN_TILE or v % 8:
        raise argparse.ArgumentTypeError(f"expected a multiple of 8, at least {MIN_TILE} (e.g. 512), got {v}")
    return v


def _seed(text: str) -> int:
    """A noise seed torch accepts (checked here, not per file deep in the model)."""
    v = _int_in(text, f"a whole number in 0..{SEED_MAX}")
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole number in 0..{SEED_MAX} (2**64 - 1), got {v}")
    return v


def _quality(text: str) -> int:
    v = _int_in(text, "a JPEG quality 1..100")
    if not 1 <= v <= 100:
        raise argparse.ArgumentTypeError(f"expected a JPEG quality 1..100, got {v}")
    return v


def _check_seed_range(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Candidates use seeds seed .. seed + n - 1: the last one must be a valid seed too."""
    seed, n = getattr(args, "seed", None), getattr(args, "n", None)
    if seed is not None and n is not None and seed + n - 1 > SEED_MAX:
        parser.error(f"--seed {seed} with -n {n}: the last candidate's seed {seed + n - 1} is over {SEED_MAX}")


CANDIDATE_COLUMNS = {  # summary column -> how `otm evaluate -n K` prints it
    "psnr": "PSNR dB", "ssim": "SSIM", "psnrb": "PSNR-B dB", "interval_share": "in intervals",
    "texture_ratio": "texture", "brisque": "BRISQUE", "kid": "KID",
}


def _evaluate_candidates(args: argparse.Namespace) -> int:
    """`otm evaluate -n K` for a one-to-many model: every candidate measure of the one-to-many issue."""
    from otmlib.imageio import list_images
    from otmlib.measure import measure_folder, summarise
    from otmlib.utils import default_device
    from otmlib.zoo import load_generator, load_l2_parent

    G, meta = load_generator(args.model, default_device(), alpha=args.alpha)
    base = load_l2_parent(args.model, default_device())
    chroma = _chroma_model(args.chroma, default_device())[0] if args.colour else None
    files = list_images(args.data)[: args.limit]
    if not files:
        raise ValueError(f"{args.data}: no images to measure")
    per = measure_folder(files, args.quality, base, G, seeds=range(args.seed, args.seed + args.n),
                         progress=not args.no_progress, colour=args.colour, chroma=chroma)
    failures = per.attrs.get("failures", [])
    for f, why in failures:
        print(f"otm: skipped {f}: {why}", file=sys.stderr)
    if per.empty:
        raise ValueError(f"{args.data}: no readable images to measure (see the messages above)")
    s = summarise(per)
    if args.json:
        print(s.to_json(orient="records"))
        return 1 if failures else 0
    print(f"{args.model} on {args.data} at JPEG quality {args.quality}: {per['image'].nunique()} images, "
          f"{args.n} candidates each"
          + (f", alpha {args.alpha}" if args.alpha is not None else "")
          + (f" (RGB, 4:2:0; Cb/Cr {'by ' + args.chroma if chroma is not None else 'as decoded'})"
             if args.colour else " (luminance)"))
    print(s[["method", "outputs", *[c for c in CANDIDATE_COLUMNS if c in s]]]
          .rename(columns=CANDIDATE_COLUMNS).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    one = s.set_index("method").loc["one-to-many"]
    print(f"diversity (RMS per-pixel std across candidates): {one['diversity']:.2f} grey levels; "
          f"textured {one['diversity_textured']:.2f}, flat {one['diversity_flat']:.2f} "
          f"(ratio {one['textured_flat']:.2f}; local 9x9 std of the original > 12 / < 3)")
    if "gap_db" in one:
        print(f"diversity / baseline RMSE {one['diversity_over_rmse']:.2f}; candidates' PSNR "
              f"{one['gap_db']:+.2f} dB from the baseline's (an ideal sampler: -3.01 dB)")
    return 1 if failures else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from otmlib.evaluate import evaluate, model_restorer

    if args.chroma and not args.colour:
        raise ValueError("--chroma restores colour: pass --colour too")
    if args.n > 1:
        if args.model == "jpeg":
            raise ValueError("-n K measures the candidates of a one-to-many model: pass --model (e.g. one-to-many-q10)")
        return _evaluate_candidates(args)
    if args.colour:
        return _evaluate_colour(args)
    model = model_restorer(args.model, seed=args.seed, alpha=args.alpha) if args.model != "jpeg" else "jpeg"
    if args.model != "jpeg":
        model.__name__ = args.model + (f" (alpha {args.alpha})" if args.alpha is not None else "")
    report = evaluate(args.data, args.quality, model, on_error=args.on_error, limit=args.limit,
                      progress=not args.no_progress)
    return _print_report(report, args, "luminance", lambda s: [
        f"  block-edge ratio {s['edge_ratio']:.2f} (squared step across 8x8 edges / inside; 1 = no blocking)"])


def _print_report(report, args: argparse.Namespace, protocol: str, extra) -> int:
    """Print an evaluation's means (or ``--json``), name skipped images; exit 1 if any was skipped, 2 if all."""
    for f, why in report.failures:
        print(f"otm: skipped {f}: {why}", file=sys.stderr)
    if report.n == 0:
        raise ImageError(args.data, "no readable images",
                         "see the messages above" if report.failures else "check --data and --limit")
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{report.model} on {report.data} at JPEG quality {report.quality} ({report.n} images, {protocol}):")
        print(f"  PSNR   {summary['psnr']:.2f} dB")
        print(f"  SSIM   {summary['ssim']:.4f}")
        print(f"  PSNR-B {summary['psnrb']:.2f} dB")
        for line in extra(summary):
            print(line)
    if report.failures:  # like `otm restore`: the means hold, but not over every image asked for
        print(f"otm: {len(report.failures)} of {report.n + len(report.failures)} image(s) skipped (see above); "
              f"the means are over the other {report.n}", file=sys.stderr)
        return 1
    return 0


def _evaluate_colour(args: argparse.Namespace) -> int:
    from otmlib.evaluate import colour_restorer, evaluate_colour

    if args.n > 1 or args.alpha is not None:
        raise ValueError("--colour scores one output per image of a baseline: -n and --alpha do not apply")
    restorer = colour_restorer(None if args.model == "jpeg" else args.model, _chroma_name(args.chroma))
    report = evaluate_colour(args.data, args.quality, restorer, on_error=args.on_error, limit=args.limit,
                             progress=not args.no_progress)
    return _print_report(report, args, "colour: RGB, 4:2:0", lambda s: [
        f"  colour shift: mean {s['colour_shift_mean']:.2f}, largest {s['colour_shift_max']:.2f} "
        "(|mean Cb or Cr of the output - the original's|, JFIF levels)"])


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
    from otmlib.config import ConfigError
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
    where = f"{args.config}: " if args.config else ""
    for section in ("data", "gen"):  # flags below are merged into these two: they must be mappings
        if not isinstance(base.get(section) or {}, dict):
            raise ValueError(f"{where}{section}: expected a mapping of settings, got {base[section]!r}")
    data = dict(base.get("data") or {})
    gen = dict(base.get("gen") or {})
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
    try:
        return TrainConfig.from_dict(base)
    except ConfigError as e:  # one line naming the file, the key and what it takes
        raise ConfigError(f"{where}{e}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    """Hold the run folder (``run.lock``, see :mod:`otmlib.runlock`) for the whole run, then train."""
    from otmlib.runlock import hold_run_folder

    cfg = _train_config(args)
    out = Path(cfg.out)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 holds the folder for every rank
        return _train_in(args, cfg, out)
    with hold_run_folder(out):
        return _train_in(args, cfg, out)


def _train_in(args: argparse.Namespace, cfg, out: Path) -> int:
    from otmlib.data import training_sets
    from otmlib.train import Trainer

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


ANY_QUALITY_SCORED = [5, 10, 20]  # what `otm export --evaluate` scores an any-quality model at (the per-quality models')


def _cmd_export(args: argparse.Namespace) -> int:
    from otmlib.train import load_checkpoint
    from otmlib.zoo import export_generator

    ck = load_checkpoint(args.checkpoint)
    data_json = Path(args.checkpoint).parent / "data.json"
    data = json.loads(data_json.read_text()) if data_json.exists() else {"description": "unknown", "sha256": ""}
    scores = json.loads(Path(args.scores).read_text()) if args.scores else {}
    out = export_generator(ck, args.output, data_description=data["description"], data_sha256=data["sha256"],
                           scores=scores, force=args.force)
    if args.evaluate and ck["config"]["mode"] == "chroma":  # the colour protocol, Y as decoded and by the luminance baseline
        scores.update(_colour_scores(str(out), args.evaluate, int(ck["config"]["data"]["quality"])))
        out = export_generator(ck, out, data_description=data["description"], data_sha256=data["sha256"],
                               scores=scores, force=True)
        print(f"scores: {scores}")
    elif args.evaluate:  # measure the exported file itself, then record the scores in it
        from otmlib.evaluate import evaluate, model_restorer

        # an any-quality model (issue 19): at the qualities of the per-quality baselines, to compare with them
        qs = ANY_QUALITY_SCORED if ck["config"]["data"].get("qualities") else [int(ck["config"]["data"]["quality"])]
        restorer = model_restorer(str(out))
        for q in qs:
            rep = evaluate(args.evaluate, q, restorer, progress=True)
            scores[f"{Path(args.evaluate).name} Q{q}"] = {
                "quality": q, **{k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in rep.summary().items() if k in ("n", "psnr", "ssim", "psnrb", "edge_ratio")}}
        out = export_generator(ck, out, data_description=data["description"], data_sha256=data["sha256"],
                               scores=scores, force=True)
        print(f"scores: {scores}")
    print(f"wrote {out}")
    return 0


def _colour_scores(chroma: str, data: str, quality: int) -> dict:
    """A chroma model on the colour protocol: with Y as decoded and with Y by the shipped luminance baseline of
    its quality (when one ships), each beside the JPEG's own PSNR."""
    from otmlib.evaluate import colour_restorer, evaluate_colour
    from otmlib.zoo import shipped

    jpeg_psnr = evaluate_colour(data, quality, progress=True).summary()["psnr"]
    out = {}
    base = f"baseline-q{quality}"
    # the pair otm restore uses first (README and cards quote it), then this model alone, then the luminance
    # baseline alone (chroma as decoded: what the pair gains over)
    runs = [(base, chroma), ("jpeg", chroma), (base, None)] if base in shipped() else [("jpeg", chroma)]
    for luma, c in runs:
        rep = evaluate_colour(data, quality, colour_restorer(None if luma == "jpeg" else luma, c), progress=True)
        s = rep.summary()
        key = (f"{Path(data).name} Q{quality} colour, Y {'as decoded' if luma == 'jpeg' else 'by ' + luma}"
               + ("" if c else ", chroma as decoded (reference)"))
        out[key] = {"protocol": "colour", "luma": luma, "chroma": "this" if c else "none", "psnr_jpeg": round(jpeg_psnr, 4),
                    **{k: round(s[k], 4) for k in ("psnr", "ssim", "psnrb", "colour_shift_mean", "colour_shift_max")},
                    "n": s["n"]}
    return out


def _cmd_models(args: argparse.Namespace) -> int:
    from otmlib.models import GeneratorConfig
    from otmlib.zoo import read_release, shipped

    if args.cards:
        from otmlib.cards import write_cards

        for p in write_cards(args.cards):
            print(f"wrote {p}")
        return 0
    models = shipped()
    if not models:
        print("no shipped weights yet")
    for name, path in models.items():
        m = read_release(path)
        q = f"Q{m.qualities[0]}-{m.qualities[1]}" if m.qualities else f"Q{m.quality}"
        print(f"{name}: {m.mode} {q}, {m.steps_total} steps, {m.wall_seconds / 3600:.1f} h wall, "
              f"{m.cpu_hours:g} CPU-hours")
        for i, e in enumerate(m.lineage):  # oldest first; each entry's cpu_hours count its own parents too
            how = "started from" if i == 0 else "then"
            changes = _network_changes(e)
            print(f"    {how} {e['mode']} Q{e['quality']}: {e['steps']} steps ({e['cpu_hours']:.2f} CPU-hours in all)"
                  + (f"{changes} for the next stage" if changes else ""))
        if m.lineage:
            print(f"    then {m.steps} steps here")
        print(f"    network: {GeneratorConfig(**m.gen_config).describe()}")
        print(f"    weights: {m.weights}")
        print(f"    backbone: {m.backbone}")
        print(f"    data: {m.data}")
        print(f"    commit {m.git_commit}, scores {json.dumps(m.scores)}")
        print(f"    model card: docs/models/{name}.md (in the repository)")
    return 0


def _output_pattern(model_names: set[str]) -> re.Pattern:
    """Names `otm restore` gives its outputs: NAME_MODEL[_aALPHA][_seedS].png, for any of ``model_names``."""
    models = "|".join(re.escape(m) for m in sorted(model_names, key=len, reverse=True))
    return re.compile(rf".+_(?:{models})(?:_a[0-9.e+-]+)?(?:_seed\d+)?\.png", re.IGNORECASE)


def _restore_inputs(inputs: list[str], out_dir: Path, model_names: set[str]) -> list[Path]:
    """The files to restore: files as given, and the image files directly inside each folder.

    Said on stderr, not silently: a folder's subfolders are not read; and in a folder that is also
    the output folder, earlier outputs of `otm restore` are skipped (restoring them again as inputs
    would only fail for want of --quality, or restore a restoration).
    """
    from otmlib.imageio import list_images

    earlier = _output_pattern(model_names)
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            files.append(p)  # a missing or odd file is reported per file, not fatal
            continue
        subs = sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and not (out_dir.exists() and d.resolve() == out_dir.resolve()))
        if subs:
            print(f"otm: note: {p}: {len(subs)} subfolder(s) not read ({', '.join(subs[:5])}"
                  f"{', ...' if len(subs) > 5 else ''}); pass them as inputs too to restore their files",
                  file=sys.stderr)
        found = list_images(p)
        if out_dir.exists() and p.resolve() == out_dir.resolve():
            own = [f for f in found if earlier.fullmatch(f.name)]
            if own:
                print(f"otm: note: {p} is also the output folder: skipped {len(own)} earlier output(s) "
                      "(NAME_MODEL*.png)", file=sys.stderr)
            found = [f for f in found if not earlier.fullmatch(f.name)]
        files += found
    unique = {f.resolve(): f for f in reversed(files)}  # a file given twice is restored once
    return [f for f in files if unique.get(f.resolve()) is f]


def _plan_outputs(files: list[Path], out_dir: Path, model_name: str | list[str],
                  seeds: list[int | None] | list[list[int | None]]) -> list[list[Path]]:
    """Output paths for each input, all different: two inputs named alike (a/x.jpg, b/x.jpg, x.jpeg) must
    not overwrite each other's outputs. The later one gets NAME-2 (then -3, ...), in input order, so
    rerunning a command names its outputs the same way; compared without case (macOS, Windows file systems).
    ``model_name`` and ``seeds``: one for all inputs, or a list with one per input (models chosen per file).
    """
    claimed: dict[str, Path] = {}  # output name (case-folded) -> the input it belongs to
    plans = []
    names = model_name if isinstance(model_name, list) else [model_name] * len(files)
    seed_lists = seeds if seeds and isinstance(seeds[0], list) else [seeds] * len(files)
    for f, model_name, seeds in zip(files, names, seed_lists):
        k, clash = 1, None
        while True:
            stem = f.stem if k == 1 else f"{f.stem}-{k}"
            targets = [out_dir / (f"{stem}_{model_name}" + (f"_seed{s}" if s is not None else "") + ".png")
                       for s in seeds]
            taken = [claimed[t.name.casefold()] for t in targets if t.name.casefold() in claimed]
            if not taken:
                break
            clash = clash or taken[0]
            k += 1
        if clash is not None:
            print(f"otm: note: {f} would overwrite the outputs of {clash}: its outputs are named {stem}_{model_name}...",
                  file=sys.stderr)
        claimed.update((t.name.casefold(), f) for t in targets)
        plans.append(targets)
    return plans


def _make_output_folder(out_dir: Path) -> list[Path]:
    """Create ``-o`` (and missing parents); return the folders this created, deepest first, so that a
    restore that wrote nothing can remove them again. One-line errors instead of "[Errno 17]" or a traceback."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: -o names an existing file; pass a folder (it is created if missing)")
    missing = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{out_dir}: cannot create the output folder ({e.strerror or e}); choose another -o") from None
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    for d in folders:  # deepest first; a folder that holds anything stays
        try:
            d.rmdir()
        except OSError:
            break


def _write_png(pixels, target: Path, force: bool) -> None:
    """Write ``target`` without ever losing another writer's file.

    The PNG goes to a unique temporary file in the same folder, then is hard-linked to ``target``,
    which fails if ``target`` exists, even one created a moment ago by another `otm restore`
    (an exists-check before writing cannot see that). ``force``: atomically replace instead.
    """
    import secrets

    from PIL import Image

    # a name no other writer uses (pid, random), created exclusively; 0o666 less the umask, like any output
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(pixels).save(fh, format="PNG")
        if force:
            os.replace(tmp, target)
            return
        try:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise
            except OSError:  # a file system without hard links: create exclusively, then copy
                with open(target, "xb") as out, open(tmp, "rb") as src:
                    out.write(src.read())
        except FileExistsError:
            raise FileExistsError(f"{target} appeared while it was being written (another otm restore into "
                                  f"{target.parent}?); pass --force to overwrite, or choose another -o") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _chroma_name(name: str | None) -> str | None:
    """What ``--chroma`` names: None or "none" = keep the decoded Cb/Cr; "auto" = the shipped chroma model,
    if one ships, else none; else a shipped name or a file."""
    from otmlib.zoo import read_release, shipped

    if name in (None, "none"):
        return None
    if name == "auto":
        found = [p for p in shipped().values() if read_release(p).mode == "chroma"]
        return str(found[0]) if found else None
    return name


def _chroma_model(name: str | None, device):
    """The chroma model ``--chroma`` names (see :func:`_chroma_name`) and its training quality, or (None, None)."""
    from otmlib.zoo import load_chroma_model, read_release

    name = _chroma_name(name)
    if name is None:
        return None, None
    return load_chroma_model(name, device), read_release(name).quality


DEFAULT_MODEL = "one-to-many-q10"  # otm restore without --model
ANY_QUALITY_MODEL = "baseline-any"  # ... and for files the default model did not learn (issue 19)
ANY_QUALITY_ONE_TO_MANY = "one-to-many-any"  # ... the same for a one-to-many default, when it ships


def _any_quality_fallback(default_mode: str) -> str | None:
    """The model for files far from the default model's quality: the any-quality model of the default's kind
    (one-to-many or baseline) when it ships, else the any-quality baseline, else None."""
    from otmlib.zoo import shipped

    names = shipped()
    if default_mode == "one-to-many" and ANY_QUALITY_ONE_TO_MANY in names:
        return ANY_QUALITY_ONE_TO_MANY
    return ANY_QUALITY_MODEL if ANY_QUALITY_MODEL in names else None


def _file_quality(f: Path, quality: int | None) -> int | None:
    """The IJG quality a JPEG's luminance table corresponds to; ``--quality`` for other images; None if unreadable."""
    from otmlib.jpeg import read_jpeg_info
    from otmlib.restore import estimate_ijg_quality

    try:
        return estimate_ijg_quality(read_jpeg_info(f).luma_table)[0]
    except (ValueError, OSError):  # not a JPEG (or not readable: restoring it will say why)
        return quality


def _cmd_restore(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from otmlib.restore import restore_file
    from otmlib.utils import bf16_plan, default_device
    from otmlib.zoo import load_generator, read_release, shipped

    default = args.model or DEFAULT_MODEL
    loaded: dict[str, tuple] = {}  # model -> (G, its release info, output name)

    def model(name: str) -> tuple:
        if name not in loaded:
            info = read_release(name)
            alpha = args.alpha if (name == default or info.mode == "one-to-many") else None
            G, _ = load_generator(name, default_device(), alpha=alpha)
            loaded[name] = (G, info, Path(str(name)).stem + (f"_a{alpha:g}" if alpha is not None else ""))
        return loaded[name]

    G, info, model_name = model(default)  # a bad --model or --alpha stops here, before any file
    # without --model, files far from the default model's quality go to an any-quality model
    fallback = _any_quality_fallback(info.mode) if args.model is None else None
    C, C_q = _chroma_model(args.chroma, default_device())
    if args.bf16 and not bf16_plan(True, default_device())[0]:
        print(f"otm: --bf16 not used: {bf16_plan(True, default_device())[1]}", file=sys.stderr)
    if args.strength != 1.0 and not info.reads_table:
        print(f"otm: note: --strength {args.strength:g} ignored" + (" for files restored by " if fallback else ": ")
              + f"{model_name}, which does not read the quantisation table (the any-quality model does)",
              file=sys.stderr)
    seeds = [args.seed + i for i in range(args.n)]
    if not G.cfg.noise and args.n > 1:
        print(f"otm: {model_name} is a baseline (one output per image); -n {args.n} ignored", file=sys.stderr)
    out_dir = Path(args.output)
    created = _make_output_folder(out_dir)
    files = _restore_inputs(args.inputs, out_dir, set(shipped()) | {Path(str(default)).stem})
    qualities = [_file_quality(f, args.quality) for f in files]
    choice = [fallback if fallback and q is not None and not info.covers(q) else default for q in qualities]
    if fallback in choice and not args.quiet:
        moved = [f for f, c in zip(files, choice) if c == fallback]
        print(f"otm: note: {len(moved)} file(s) (e.g. {moved[0]}, quality ~{qualities[choice.index(fallback)]}) are "
              f"far from {model_name}'s quality {info.quality}: restored with {fallback}, the model for any quality "
              + (f"(--model {default} forces the default)" if model(fallback)[0].cfg.noise else
                 f"(one output each; --model {default} forces the default)"
                 + (f"; --alpha {args.alpha:g} does not apply to them" if args.alpha is not None else "")),
              file=sys.stderr)
    plans = _plan_outputs(files, out_dir, [model(c)[2] for c in choice],
                          [seeds if model(c)[0].cfg.noise else [None] for c in choice])
    failures: list[str] = []
    written = 0
    quality_noted = chroma_noted = False
    for f, targets, name, q_est in zip(tqdm(files, desc="restoring", unit="img", disable=len(files) < 2 or args.quiet),
                                       plans, choice, qualities):
        made: list[Path] = []
        G, info, model_name = model(name)
        try:
            clash = [t for t in targets if t.exists()]
            if clash and not args.force:
                raise ValueError(f"{clash[0]} exists; pass --force to overwrite")
            res, notes = restore_file(G, f, seeds, quality=args.quality, consistent=not args.no_project,
                                      tile=args.tile, bf16=args.bf16, max_pixels=args.max_pixels, chroma=C,
                                      chroma_quality=C_q, strength=args.strength)
            if notes.get("chroma_kept") and not chroma_noted and not args.quiet:
                print(f"otm: note: {f} ({notes['chroma_kept']}): its chroma is kept as decoded (the chroma model "
                      "restores 4:2:0 files at its own quality)", file=sys.stderr)
                chroma_noted = True
            q_est = notes.get("quality_estimate")
            if q_est is not None and args.quality is not None and not quality_noted:
                print(f"otm: note: --quality {args.quality} ignored for JPEG inputs such as {f}: a JPEG is "
                      "restored as it is (--quality compresses non-JPEG inputs first)", file=sys.stderr)
                quality_noted = True
            if q_est is not None and not info.covers(q_est) and not args.quiet:
                learnt = (f"qualities {info.qualities[0]}-{info.qualities[1]}" if info.qualities
                          else f"quality {info.quality} (one model per quality, the paper's stated limitation)")
                print(f"otm: note: {f} looks like JPEG quality ~{q_est}; {model_name} was trained for {learnt}",
                      file=sys.stderr)
            for t, c in zip(targets, res.candidates):
                _write_png(c, t, force=args.force)
                made.append(t)
            written += len(made)
        except (ValueError, OSError) as e:  # ImageError is a ValueError; one line per failed file
            for t in made:  # all of an image's candidates or none
                t.unlink(missing_ok=True)
            failures.append(f)
            print(f"otm: {e}" if str(f) in str(e) else f"otm: {f}: {e}", file=sys.stderr)
    if not written:
        _remove_if_empty(created)  # a restore that wrote nothing leaves no empty folder behind
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
        "JPEG at --quality, restored by --model, scored against the luminance. Exit status: 0, or 1 "
        "when unreadable images were skipped (as `otm restore` does; the means are over the rest), "
        "2 for an error that stops it.",
    )
    e.add_argument("--data", required=True, help="folder of ground-truth images (e.g. BSDS500/test)")
    e.add_argument("--quality", "-q", type=_quality, required=True, help="JPEG quality 1..100 (paper: 5, 10, 20)")
    e.add_argument("--model", default="jpeg", help="restorer: 'jpeg' = the decoded JPEG itself (default)")
    e.add_argument("--colour", action="store_true",
                   help="the colour protocol: RGB images coded 4:2:0 as Pillow does, scored on RGB (PSNR over every "
                   "channel, mean SSIM, PSNR-B with the channels' mean BEF) and for colour shift; --model restores Y")
    e.add_argument("--chroma", default=None, help="with --colour: a chroma model restoring Cb/Cr, 'auto' (the shipped "
                   "one) or 'none' (default: keep them)")
    e.add_argument("--json", action="store_true", help="print one JSON object (n, psnr, ssim, psnrb, ...)")
    e.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="unreadable image: skip it, report it and exit 1 (default) or stop (exit 2)")
    e.add_argument("--limit", type=_positive_int, default=None, help="only the first N images (by name)")
    e.add_argument("-n", type=_positive_int, default=1,
                   help="candidates per image: with -n K >= 2 and a one-to-many model, print every candidate "
                   "measure (PSNR/SSIM/PSNR-B, gap to its L2 parent, diversity overall, in textured and flat "
                   "regions, texture ratio, BRISQUE, share inside the intervals, KID on Lite2 features); with "
                   "--colour, on RGB (Y by the model, Cb/Cr by --chroma)")
    e.add_argument("--seed", type=_seed, default=0, help="first noise seed (one-to-many models)")
    e.add_argument("--alpha", type=_alpha, default=None,
                   help="one-to-many models: interpolate toward their L2 parent (0 = baseline, 1 = the model)")
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
        "(NAME_MODEL.png for a baseline). Colour JPEGs: the luminance is restored by --model, the "
        "chroma by --chroma (kept as decoded without a chroma model). Folders are processed whole (their own files, not subfolders); a bad file is "
        "reported and the rest go on (exit 1). Two inputs of the same name get NAME and NAME-2; an "
        "existing output is never replaced without --force, even one another restore just wrote.",
    )
    r.add_argument("inputs", nargs="+", help="JPEG files or folders")
    r.add_argument("-o", "--output", required=True, help="output folder")
    r.add_argument("--model", default=None, help=f"shipped name (see `otm models`) or a .safetensors; default "
                   f"{DEFAULT_MODEL}, and for files far from quality 10 {ANY_QUALITY_ONE_TO_MANY} (or {ANY_QUALITY_MODEL} "
                   "where it does not ship)")
    r.add_argument("--strength", type=_strength, default=1.0,
                   help="a model that reads the file's quantisation table (baseline-any) is given the table times "
                   "this: 1 = the file's own (default), above 1 smooths more, below 1 less")
    r.add_argument("-n", type=_positive_int, default=1, help="candidates per image (one-to-many models)")
    r.add_argument("--alpha", type=_alpha, default=None,
                   help="fidelity <-> naturalness (ESRGAN's network interpolation): 0 = the L2 baseline the "
                   "one-to-many model was warm-started from, 1 = the model (default); outputs are named _aALPHA")
    r.add_argument("--seed", type=_seed, default=0, help="first noise seed; candidates use seed, seed+1, ...")
    r.add_argument("--quality", type=_quality, help="for non-JPEG inputs: compress at this quality first "
                   "(JPEG inputs are restored as they are: a note says so)")
    r.add_argument("--chroma", default="auto", help="colour inputs: a chroma model (restores Cb/Cr; 'auto' = the "
                   "shipped one when one ships) or 'none' to keep the decoded chroma")
    r.add_argument("--force", action="store_true", help="overwrite existing outputs")
    r.add_argument("--no-project", action="store_true",
                   help="keep the network's raw output; by default each candidate's luminance is projected "
                   "into the file's own quantisation intervals (eq. 5), so it is a plausible original of that file")
    r.add_argument("--tile", type=_tile, default=512,
                   help=f"tile size for large images (memory bound): a multiple of 8, at least {MIN_TILE}")
    r.add_argument("--bf16", action="store_true", help="bfloat16 on a CPU with native bfloat16 (AVX512-BF16/AMX): about 3x faster model time; "
                   "outputs differ by at most 1 grey level (measured); ignored, with a note, elsewhere")
    r.add_argument("--max-pixels", type=_positive_int, default=100_000_000, help="refuse larger images (default 100 MP)")
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
    t.add_argument("mode", choices=("baseline", "one-to-many", "chroma"),
                   help="baseline: per-pixel L2 (Table 2); chroma: Cb/Cr of colour JPEGs (needs data.colour)")
    t.add_argument("--config", help="YAML file of TrainConfig fields (e.g. configs/baseline-q10.yaml)")
    t.add_argument("--data", help="BSDS500 root or an image folder (default: ../shared, OTM_DATA, cache, samples)")
    t.add_argument("--quality", "-q", type=_quality, help="JPEG quality of the inputs (default 10)")
    t.add_argument("--steps", type=int, help="total training steps")
    t.add_argument("--batch-size", type=int, help="patches per step")
    t.add_argument("--patch", type=int, help="patch side, a multiple of 8")
    t.add_argument("--width", type=int, help="filters per layer of G (paper: 64)")
    t.add_argument("--colour", action="store_true", help="train on RGB instead of luminance")
    t.add_argument("--backbone", help="perceptual network: vgg19 (paper, needs download) or efficientnet-lite0")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 2e-4)")
    t.add_argument("--out", help="run folder (default runs/MODE-qQ)")
    t.add_argument("--seed", type=_seed)
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
    m.add_argument("--cards", metavar="DIR", help="write a model card per shipped file into DIR (docs/models)")
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


def _quiet_stdout() -> None:
    """Point stdout at /dev/null after the reader of a pipe left (``| head``).

    Python flushes stdout again at exit; into the closed pipe that prints "Exception ignored ...
    BrokenPipeError" and exits 120. The fix the Python docs give (signal module, SIGPIPE note).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_seed_range(parser, args)
    from otmlib.losses import BackboneUnavailable
    from otmlib.train import TrainingDiverged

    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `otm info f.jpg | head`: first, as it is also a ConnectionError and OSError
        _quiet_stdout()
        return 0
    except (ImageError, ValueError, FileExistsError, FileNotFoundError, ConnectionError, BackboneUnavailable) as e:
        print(f"otm: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"otm: training stopped: {e}", file=sys.stderr)
        return 3
    except OSError as e:  # e.g. a read-only or full disk: one line, not a traceback
        print(f"otm: error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
