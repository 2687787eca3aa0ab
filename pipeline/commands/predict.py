"""`pseudolabel predict IMAGE... --out DIR`: label single images for quick looks and acceptance checks.

Writes DIR/<stem>.npz (pred (H, W) class index, confidence uint8 round(255 p); with --probs also
probs float32 (C, H, W): 16 GB for a 24 MP photo and 171 classes) and DIR/<stem>.overlay.png, an
overlay of the labels on the image (never DIR/<stem>.png: that may be the input). Every input is
checked before the model loads; a bad image is reported in one line and the others are labeled
(exit 1 at the end).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.cli import add_config_arguments
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.io.decode import RASTER_FORMATS, openable_formats
from pipeline.overlay import blend, with_legend

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders (the images directly in them)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--probs", action="store_true",
                        help="also write the full class probabilities (C x H x W float32) to the .npz")
    parser.add_argument("--student", metavar="PATH",
                        help="label with a student of `pseudolabel train` (DIR/student.pt) instead of CLIP "
                             "(same as --set model.student=PATH)")
    add_config_arguments(parser)


RASTER = openable_formats(RASTER_FORMATS)  # the only Pillow decoders predict reaches (docs/security.md)
EXIT_SOME_FAILED = 1  # some images could not be labeled (each reported); the others were written
OVERLAY_SUFFIX = ".overlay.png"  # never `<stem>.png`: `predict x.png --out .` must not replace x.png


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path, formats=RASTER) as im:  # raster decoders only (docs/security.md)
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc


def outputs_of(out_dir: Path, path: Path) -> tuple[Path, Path]:
    return out_dir / f"{path.stem}.npz", out_dir / f"{path.stem}{OVERLAY_SUFFIX}"


def check_inputs(paths: list[Path], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Before the model loads: (readable images, one line per bad one). Refuses outright when an
    output would land on an input or two inputs would share outputs."""
    first: dict[str, Path] = {}
    for p in paths:
        other = first.setdefault(p.stem, p)
        if other != p:
            raise UserError(f"inputs {other} and {p} share the file stem {p.stem!r}: both would write "
                            f"{out_dir / p.stem}.npz; label them into separate --out folders")
    inputs = {p.resolve() for p in paths if p.exists()}
    for p in paths:
        for target in outputs_of(out_dir, p):
            if target.resolve() in inputs:
                raise UserError(f"output {target} would overwrite the input image {target}; use another --out")
    good, bad = [], []
    for p in paths:
        try:
            with Image.open(p, formats=RASTER) as im:  # the header only: catches typos and non-images
                im.size
            good.append(p)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            bad.append(f"cannot read image {p}: {getattr(exc, 'strerror', None) or exc}")
    return good, bad


def expand_folders(paths: list[Path], extensions: list[str]) -> list[Path]:
    """A folder stands for the images directly in it (sorted; the extensions `run` reads, any case)."""
    wanted = {f".{e.lower().lstrip('.')}" for e in extensions}
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
            continue
        images = sorted(c for c in p.iterdir() if c.is_file() and c.suffix.lower() in wanted
                        and not c.name.startswith("."))
        if not images:
            raise UserError(f"folder {p} holds no image ({', '.join(extensions)}) directly in it")
        out.extend(images)
    return out


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides + ([f"model.student={args.student}"] if args.student else []))
    out_dir = Path(args.out)
    paths, failures = check_inputs(expand_folders([Path(p) for p in args.images], cfg.io.image_extensions), out_dir)
    for line in failures:
        print(f"pseudolabel predict: {line}", file=sys.stderr)
    if not paths:
        raise UserError(f"none of the {len(failures)} input image(s) can be read; nothing to label")
    segmenter = _load_engine(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), cfg.batch_size):
        failures += _label_batch(segmenter, paths[start : start + cfg.batch_size], out_dir, args.probs)
    if failures:
        print(f"pseudolabel predict: {len(failures)} of {len(args.images)} image(s) failed (see above)", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _load_engine(cfg):
    if cfg.model.student:
        from pipeline.student.engine import StudentEngine

        segmenter = StudentEngine.from_config(cfg)
    else:
        from pipeline.engine import Segmenter

        segmenter = Segmenter.from_config(cfg)
    log.info("model %s, %d classes, device %s", segmenter.model_identity["pretrained"], segmenter.num_classes,
             segmenter.device)
    return segmenter


def _label_batch(segmenter, batch: list[Path], out_dir: Path, probs: bool) -> list[str]:
    """Label and write one batch; a bad image is reported (one line) and the others go on."""
    failures, images, kept = [], [], []
    for p in batch:
        try:
            images.append(read_rgb(p))
            kept.append(p)
        except UserError as exc:
            failures.append(str(exc))
            print(f"pseudolabel predict: {exc}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        results = segmenter.predict(images, return_probs=probs) if images else []
    except (ValueError, RuntimeError):  # one image the engine rejects: find it, label the rest
        results = None
    log.info("%d image(s) in %.2fs", len(kept), time.perf_counter() - t0)
    for i, (path, image) in enumerate(zip(kept, images)):
        try:
            res = results[i] if results is not None else segmenter.predict([image], return_probs=probs)[0]
        except (ValueError, RuntimeError) as exc:
            failures.append(f"cannot label {path}: {exc}")
            print(f"pseudolabel predict: cannot label {path}: {str(exc).splitlines()[0]}", file=sys.stderr)
            continue
        arrays = {"pred": compact_pred(res.pred, segmenter.num_classes), "confidence": compact_confidence(res.confidence)}
        if probs:
            arrays["probs"] = res.probs
        npz, overlay = outputs_of(out_dir, path)
        np.savez_compressed(npz, **arrays)
        colors, names = segmenter.vocabulary.colors, segmenter.vocabulary.names
        Image.fromarray(with_legend(blend(image, res.pred, colors), res.pred, names, colors)).save(overlay)
        print(f"{path} -> {npz}, {overlay.name}  ({_summary(res.pred, segmenter.vocabulary.names)})")
    return failures


def compact_pred(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices as the CLIP path stores them: uint8 (uint16 past 256 classes), whatever the engine."""
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    return pred if pred.dtype == dtype else pred.astype(dtype)


def compact_confidence(confidence: np.ndarray) -> np.ndarray:
    """Confidence as the CLIP path stores it: uint8 round(255 p) (a float map is 4x the bytes)."""
    if confidence.dtype == np.uint8:
        return confidence
    return np.clip(np.rint(confidence.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _summary(pred: np.ndarray, names: list[str], top: int = 3) -> str:
    counts = np.bincount(pred.ravel(), minlength=len(names))
    order = np.argsort(-counts)[:top]
    return ", ".join(f"{names[i]} {100 * counts[i] / pred.size:.0f}%" for i in order if counts[i])
