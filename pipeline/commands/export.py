"""`pseudolabel export OUTPUT DEST --format mmseg|voc|hf|cvat`: an output as folders or a dataset
trainers read, or the least confident samples for people to correct (cvat, with --lowest N).

Images are the pixels the labeler saw (EXIF orientation applied, RGB), one suffix per export
(--image-format jpg|png; baseline RGB JPEGs are copied as they are); labels become palette PNGs
(value = class index, 255 = ignore, which also marks pixels below --min-confidence). Samples are
chosen with the training loader's SampleFilter (--min-mean-confidence, --require, --exclude).
docs/exports.md: each format, how to load it, what is tested.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output directory of `pseudolabel run`")
    parser.add_argument("dest", metavar="DEST", nargs="?", help=argparse.SUPPRESS)  # old spelling of --out
    parser.add_argument("--out", metavar="DEST", help="export folder (new or empty, unless --overwrite)")
    parser.add_argument("--format", required=True, choices=("mmseg", "voc", "hf", "cvat"),
                        help="target layout (cvat: CVAT 'Segmentation mask 1.1' of the --lowest N samples)")
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                        help="one suffix for every image: jpg (JPEG sources copied when they need no change, "
                             "others re-encoded at quality 95) or png (lossless); default jpg")
    parser.add_argument("--lowest", type=int, metavar="N",
                        help="only the N samples of lowest mean confidence (the review loop; required by cvat)")
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
    from pipeline.cli import resolve_out
    from pipeline.export import export_output
    from pipeline.training.selection import SampleFilter

    args.dest = resolve_out(args, "dest", "export")

    sample_filter = SampleFilter(min_mean_confidence=args.min_mean_confidence, required_classes=args.require,
                                 excluded_classes=args.exclude)
    summary = export_output(args.output, args.dest, args.format, sample_filter=sample_filter,
                            min_confidence=args.min_confidence, val_share=args.val_share,
                            images_root=args.images_root, overwrite=args.overwrite,
                            image_format=args.image_format, lowest=args.lowest)
    splits = ", ".join(f"{k} {v}" for k, v in summary.samples.items()) or "no sample"
    print(f"exported {splits} samples to {summary.dest} ({summary.format}, images {summary.image_suffixes[0]}: "
          f"{summary.copied} copied, {summary.reencoded} re-encoded as the labeler saw them)")
    for line in summary.describe_skipped():
        print(f"  skipped {line}")
    return 0
