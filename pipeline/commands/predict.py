"""`pseudolabel predict IMAGE... --out DIR`: label single images for quick looks and acceptance checks.

Writes DIR/<stem>.npz (pred (H, W) class index, confidence uint8 round(255 p); with --probs also
probs float32 (C, H, W): 16 GB for a 24 MP photo and 171 classes) and DIR/<stem>.png, an overlay
of the labels on the image.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.cli import add_config_arguments
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.overlay import blend

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--probs", action="store_true",
                        help="also write the full class probabilities (C x H x W float32) to the .npz")
    parser.add_argument("--student", metavar="PATH",
                        help="label with a student of `pseudolabel train` (DIR/student.pt) instead of CLIP "
                             "(same as --set model.student=PATH)")
    add_config_arguments(parser)


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc


def main(args: argparse.Namespace) -> int:
    from pipeline.engine import Segmenter

    cfg = load_config(args.config, args.overrides + ([f"model.student={args.student}"] if args.student else []))
    paths = [Path(p) for p in args.images]
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise UserError("two input images share a file stem; their outputs would overwrite each other")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.student:
        from pipeline.student.engine import StudentEngine

        segmenter = StudentEngine.from_config(cfg)
    else:
        segmenter = Segmenter.from_config(cfg)
    log.info("model %s, %d classes, device %s", segmenter.model_identity["pretrained"], segmenter.num_classes,
             segmenter.device)
    colors = segmenter.vocabulary.colors
    for start in range(0, len(paths), cfg.batch_size):
        batch = paths[start : start + cfg.batch_size]
        images = [read_rgb(p) for p in batch]
        t0 = time.perf_counter()
        results = segmenter.predict(images, return_probs=args.probs)
        log.info("%d image(s) in %.2fs", len(batch), time.perf_counter() - t0)
        for path, image, res in zip(batch, images, results):
            arrays = {"pred": res.pred, "confidence": res.confidence}
            if args.probs:
                arrays["probs"] = res.probs
            np.savez_compressed(out_dir / f"{path.stem}.npz", **arrays)
            Image.fromarray(blend(image, res.pred, colors)).save(out_dir / f"{path.stem}.png")
            print(f"{path} -> {out_dir / path.stem}.npz, .png  ({_summary(res.pred, segmenter.vocabulary.names)})")
    return 0


def _summary(pred: np.ndarray, names: list[str], top: int = 3) -> str:
    counts = np.bincount(pred.ravel(), minlength=len(names))
    order = np.argsort(-counts)[:top]
    return ", ".join(f"{names[i]} {100 * counts[i] / pred.size:.0f}%" for i in order if counts[i])
