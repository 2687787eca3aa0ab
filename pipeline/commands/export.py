"""`pseudolabel export OUTPUT DEST --format mmseg|voc|hf`: an output as folders or a dataset trainers read.

Images are copied byte for byte; labels become palette PNGs (value = class index, 255 = ignore,
which also marks pixels below --min-confidence). Samples are chosen with the training loader's
SampleFilter (--min-mean-confidence, --require, --exclude).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output directory of `pseudolabel run`")
    parser.add_argument("dest", metavar="DEST", help="export folder (new or empty, unless --overwrite)")
    parser.add_argument("--format", required=True, choices=("mmseg", "voc", "hf"), help="target layout")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="pixels whose confidence is below this become the ignore index 255")
    parser.add_argument("--min-mean-confidence", type=float, default=0.0, help="drop samples below this mean confidence")
    parser.add_argument("--require", action="append", default=[], metavar="CLASS", help="keep samples containing CLASS")
    parser.add_argument("--exclude", action="append", default=[], metavar="CLASS", help="drop samples containing CLASS")
    parser.add_argument("--val-share", type=float, default=0.0,
                        help="share of samples in a val split, chosen by a hash of the key (default 0: train only)")
    parser.add_argument("--images-root", metavar="DIR", help="read input shards from DIR/<shard file name>")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty DEST")


def main(args: argparse.Namespace) -> int:
    from pipeline.export import export_output
    from pipeline.training.selection import SampleFilter

    sample_filter = SampleFilter(min_mean_confidence=args.min_mean_confidence, required_classes=args.require,
                                 excluded_classes=args.exclude)
    summary = export_output(args.output, args.dest, args.format, sample_filter=sample_filter,
                            min_confidence=args.min_confidence, val_share=args.val_share,
                            images_root=args.images_root, overwrite=args.overwrite)
    splits = ", ".join(f"{k} {v}" for k, v in summary.samples.items()) or "no sample"
    skipped = f"; skipped {summary.skipped}" if summary.skipped else ""
    print(f"exported {splits} samples to {summary.dest} ({summary.format}){skipped}")
    return 0
