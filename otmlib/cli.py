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

    i = sub.add_parser("info", help="print a JPEG file's quantisation tables and layout")
    i.add_argument("files", nargs="+", help="JPEG files")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ImageError, ValueError) as e:
        print(f"otm: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `otm info f.jpg | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("otm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
