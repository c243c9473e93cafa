"""Inference speed of G (one-to-many) and the baseline on CPU, against the machine's matmul floor.

    OMP_NUM_THREADS=2 python benchmarks/bench_inference.py [--size 512] [--repeats 3] [--json out.json]

For each model, precision (float32; bfloat16 under ``torch.autocast('cpu')``) and memory layout
(NCHW, channels_last) it times ``G(x)`` on a ``size`` x ``size`` grey image after one warm-up and
reports seconds per megapixel. The floor is G's analytic cost (``count_flops_per_pixel``, MACs)
at the rate of a large matmul in the same precision: ``2 * MACs * 1e6 / rate`` s/MP.
Not a test: timings depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from otmlib.models import Generator, GeneratorConfig, count_flops_per_pixel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN kernel choice
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Sustained GFLOP/s of an n x n @ n x n matmul in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / _median_seconds(lambda: a @ b, repeats) / 1e9


def time_generator(G: Generator, size: int, dtype: torch.dtype, repeats: int, layout: str) -> float:
    """Median seconds of one forward pass of ``G`` on a 1 x C x size x size image."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    G = G.to(memory_format=fmt)
    x = (torch.rand(1, G.cfg.channels, size, size) * 255).contiguous(memory_format=fmt)
    kw = {"seed": 0} if G.cfg.noise else {}
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else nullcontext()

    def run() -> None:
        with torch.inference_mode(), autocast:
            G(x, **kw)

    return _median_seconds(run, repeats)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="side of the square grey test image")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median)")
    ap.add_argument("--matmul", type=int, default=2048, help="side of the matmul that sets the rate")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    layouts = ["nchw", "channels_last"]
    ap.add_argument("--layouts", nargs="+", default=layouts, choices=layouts, help="memory formats")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    mp = args.size * args.size / 1e6
    rates = {d: matmul_gflops(DTYPES[d], args.matmul, args.repeats) for d in args.dtypes}
    rows = []
    for name, noise in (("one-to-many", True), ("baseline", False)):
        cfg = GeneratorConfig(noise=noise)
        G = Generator(cfg).eval()
        macs = count_flops_per_pixel(cfg)
        for layout, d in itertools.product(args.layouts, args.dtypes):
            s = time_generator(G, args.size, DTYPES[d], args.repeats, layout)
            floor = 2 * macs * 1e6 / (rates[d] * 1e9)
            rows.append(
                {
                    "model": name,
                    "layout": layout,
                    "dtype": d,
                    "macs_per_pixel": macs,
                    "s_per_mp": s / mp,
                    "gflops": 2 * macs * args.size**2 / s / 1e9,
                    "floor_s_per_mp": floor,
                    "of_floor": floor / (s / mp),
                }
            )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
        "size": args.size,
        "repeats": args.repeats,
        "matmul_n": args.matmul,
        "matmul_gflops": rates,
    }
    print(
        f"torch {meta['torch']}, {meta['threads']} threads, {args.size}x{args.size} grey, "
        f"median of {args.repeats}; matmul {args.matmul}^3: "
        + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items())
    )
    print()
    print("| model | layout | dtype | MACs/pixel | s/MP | GFLOP/s | floor s/MP | % of floor |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['layout']} | {r['dtype']} | {r['macs_per_pixel'] / 1e3:.1f}k | "
            f"{r['s_per_mp']:.2f} | "
            f"{r['gflops']:.0f} | {r['floor_s_per_mp']:.2f} | {100 * r['of_floor']:.0f}% |"
        )
    result = {"meta": meta, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
