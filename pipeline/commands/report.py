"""`pseudolabel report OUTPUT [--out DIR]`: a static HTML report that opens offline."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output directory of `pseudolabel run` (path or URL)")
    parser.add_argument("--out", metavar="DIR", help="report folder (default OUTPUT/report; required for remote outputs)")
    parser.add_argument("--samples", type=int, default=24, help="random samples in the overlay grid (default 24)")
    parser.add_argument("--extremes", type=int, default=8, help="samples in the lowest/highest confidence rows (default 8)")
    parser.add_argument("--stats-samples", type=int, default=500, help="masks read for pixel statistics (default 500)")
    parser.add_argument("--thumb-size", type=int, default=256, help="longest side of thumbnails in pixels (default 256)")
    parser.add_argument("--images-root", metavar="DIR", help="read input shards from DIR/<name>.tar instead of the recorded source_shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample choice")


def main(args: argparse.Namespace) -> int:
    from pipeline.report import ReportOptions, build_report

    options = ReportOptions(
        grid_samples=args.samples, extremes=args.extremes, stats_samples=args.stats_samples,
        thumb_size=args.thumb_size, images_root=args.images_root, seed=args.seed,
    )
    index = build_report(args.output, args.out, options)
    print(index)
    return 0
