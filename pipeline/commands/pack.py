"""`pseudolabel pack DIR OUT [--per-shard N]`: WebDataset shards from a folder of images, the first
step for a user who has a folder: then `pseudolabel run OUT LABELS ...`."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="folder tree of images")
    parser.add_argument("out", metavar="OUT", help="folder for the shards (PREFIX-000000.tar, ...)")
    parser.add_argument("--per-shard", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default 'shard')")
    parser.add_argument("--extensions", default="jpg,jpeg,png,webp",
                        help="image extensions to take, any case (default jpg,jpeg,png,webp)")


def main(args: argparse.Namespace) -> int:
    from pipeline.io.pack import pack_folder

    result = pack_folder(args.folder, args.out, args.per_shard, args.prefix,
                         [e for e in args.extensions.split(",") if e.strip()])
    skipped = f"; left out {result.skipped}" if result.skipped else ""
    print(f"packed {result.samples} images into {len(result.shards)} shards under {args.out}{skipped}")
    return 0
