"""Command line: `python -m pipeline.toyworld {shards,vocab,preview} ...`.

    python -m pipeline.toyworld shards --split test --count 200 --out out/toy-test
    python -m pipeline.toyworld vocab --out conf/vocabularies/toyworld.txt
    python -m pipeline.toyworld preview --split val --count 8 --out toy-preview.png
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

from pipeline.toyworld.classes import colorize, write_vocabulary
from pipeline.toyworld.generator import generate_scenes
from pipeline.toyworld.shards import write_shards


def _split(text: str):
    return int(text) if text.isdigit() else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.toyworld", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shards", help="write paired image/label WebDataset shards")
    s.add_argument("--split", type=_split, default="test", help="train | val | test | integer seed")
    s.add_argument("--count", type=int, default=200)
    s.add_argument("--start", type=int, default=0)
    s.add_argument("--per-shard", type=int, default=100)
    s.add_argument("--format", choices=["jpg", "png"], default="jpg")
    s.add_argument("--out", required=True)
    v = sub.add_parser("vocab", help="write the vocabulary file")
    v.add_argument("--out", required=True)
    p = sub.add_parser("preview", help="a PNG grid: scenes above their colourised masks")
    p.add_argument("--split", type=_split, default="val")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.command == "shards":
        result = write_shards(args.out, args.split, args.count, args.per_shard, args.start, args.format)
        print(f"wrote {len(result.images)} image shards and {len(result.labels)} label shards under {args.out}")
    elif args.command == "vocab":
        print(f"wrote {write_vocabulary(args.out)}")
    else:
        cols = [np.concatenate([s.image, colorize(s.label)], 0) for s in generate_scenes(args.split, args.count)]
        Image.fromarray(np.concatenate(cols, 1)).save(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
