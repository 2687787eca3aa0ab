"""Dry run of the training loader over an output directory: what a filter keeps, and a few batches.

    python -m pipeline.training OUTPUT [--min-mean-confidence 0.5] [--require cat --require dog]
        [--require-all] [--exclude person] [--pixel-min-confidence 0.3] [--size 224] [--batch-size 8]
        [--workers 2] [--batches 2] [--images-root DIR]
"""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.training", description=__doc__.splitlines()[0])
    p.add_argument("output", metavar="OUTPUT", help="output directory of `pseudolabel run`")
    p.add_argument("--min-mean-confidence", type=float, default=0.0, help="keep samples with mean confidence >= this")
    p.add_argument("--require", action="append", default=[], metavar="CLASS", help="keep samples containing this class (repeatable: any of them)")
    p.add_argument("--require-all", action="store_true", help="with several --require: keep samples containing all of them")
    p.add_argument("--exclude", action="append", default=[], metavar="CLASS", help="drop samples containing this class (repeatable)")
    p.add_argument("--pixel-min-confidence", type=float, default=0.0, help="pixels below this confidence become ignore")
    p.add_argument("--size", type=int, default=224, help="crop size of the random resized crop")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--batches", type=int, default=2, help="batches to load and describe (0 = only the selection)")
    p.add_argument("--images-root", metavar="DIR", help="read input shards from DIR/<name>.tar")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.training import PseudoLabelDataset, RandomResizedCropFlip, SampleFilter, make_dataloader

    args = build_parser().parse_args(argv)
    sample_filter = SampleFilter(
        min_mean_confidence=args.min_mean_confidence, required_classes=args.require,
        require_all=args.require_all, excluded_classes=args.exclude,
    )
    try:
        ds = PseudoLabelDataset(
            args.output, sample_filter, transform=RandomResizedCropFlip((args.size, args.size)),
            pixel_min_confidence=args.pixel_min_confidence, images_root=args.images_root,
        )
        sel = ds.selection
        print(f"selected {sel.kept_rows} of {sel.total_rows} samples in {len(sel.shards)} shards; "
              f"{len(sel.rejected_shards)} shards skipped without opening; ignore index {ds.ignore_index}")
        if args.batches > 0 and sel.shards:
            loader = make_dataloader(ds, batch_size=args.batch_size, num_workers=args.workers)
            for i, (image, label, conf) in enumerate(loader):
                if i >= args.batches:
                    break
                ignored = (label == ds.ignore_index).float().mean().item()
                print(f"batch {i}: image {tuple(image.shape)}, label {tuple(label.shape)}, "
                      f"confidence {tuple(conf.shape)}, ignored {100 * ignored:.1f}%")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
