"""`pseudolabel pack DIR OUT [--per-shard N]`: WebDataset shards from a folder of images, the first
step for a user who has a folder: then `pseudolabel run OUT LABELS ...`. Packing the same folder
into the same OUT again adds only its new (or changed) images, under new shard names."""
from __future__ import annotations

import argparse

from pipeline.io.pack import DEFAULT_EXTENSIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="folder tree of images")
    parser.add_argument("old_out", metavar="OUT", nargs="?", help=argparse.SUPPRESS)  # old spelling of --out
    parser.add_argument("--out", metavar="SHARDS", help="folder for the shards (PREFIX-000000.tar, ...); packing "
                                                        "into it again adds only new images, in new shards")
    parser.add_argument("--per-shard", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--prefix", default="shard", help="shard file name prefix (default 'shard')")
    parser.add_argument("--extensions", default=",".join(DEFAULT_EXTENSIONS),
                        help="image extensions to take, any case (default %(default)s, what `run` reads; "
                             "for others also pass `run --set io.image_extensions=[...]`)")


def main(args: argparse.Namespace) -> int:
    from pipeline.cli import resolve_out
    from pipeline.io.pack import pack_folder

    args.out = resolve_out(args, "old_out", "pack")
    result = pack_folder(args.folder, args.out, args.per_shard, args.prefix,
                         [e.strip() for e in args.extensions.split(",") if e.strip()])
    print(summary_line(result, args.out))
    for line in detail_lines(result):
        print(f"  {line}")
    return 0


def summary_line(result, out: str) -> str:
    shards = f"{len(result.shards)} new shard{'s' if len(result.shards) != 1 else ''}"
    kept = f"; {result.unchanged} already packed, left as they are" if result.unchanged else ""
    return f"packed {result.samples} images into {shards} under {out}{kept}"


def detail_lines(result) -> list[str]:
    lines = []
    if result.changed:
        more = len(result.changed) - 5
        names = ", ".join(result.changed[:5]) + (f" and {more} more" if more > 0 else "")
        lines.append(f"{len(result.changed)} changed since they were packed, packed again as new "
                     f"(exports use the newer version): {names}")
    if result.gone:
        lines.append(f"{result.gone} packed earlier are no longer in the folder (their shards are kept)")
    left = sum(result.skipped.values())
    if left:
        lines.append(f"left out {left} file{'s' if left != 1 else ''}:")
        lines += [f"  {line}" for line in result.describe_left_out()]
    return lines
