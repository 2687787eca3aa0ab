"""`pseudolabel export`: an output's images and pseudo-labels in the layouts trainers read.

- `samples`: choose samples (SampleFilter, the N least confident), join image bytes with labels,
  map ignore/unsure to 255; keys that cannot be file names are skipped samples.
- `images`: the image files, the pixels the labeler saw, one suffix per export.
- `layouts`: mmsegmentation and VOC folders of palette PNGs, split lists, classes and palette.
- `hf`: Parquet + dataset card that `datasets.load_dataset(DEST)` reads.
- `cvat`: CVAT "Segmentation mask 1.1" annotations + images, for people to correct.
- `staging`: everything is written into a fresh folder beside DEST, renamed into place at the end.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import UserError
from pipeline.export.images import IMAGE_FORMATS
from pipeline.export.layouts import LAYOUTS, ExportSummary, write_folders
from pipeline.export.samples import IGNORE_INDEX, iter_export_samples, select, shard_confidences
from pipeline.export.staging import staged_dest
from pipeline.training.selection import SampleFilter

FORMATS = ("mmseg", "voc", "hf", "cvat")


def export_output(output: str, dest: str | Path, fmt: str, *, sample_filter: Optional[SampleFilter] = None,
                  min_confidence: float = 0.0, val_share: float = 0.0, images_root: Optional[str] = None,
                  overwrite: bool = False, image_format: str = "jpg", lowest: Optional[int] = None) -> ExportSummary:
    """Write `output`'s kept samples to `dest` in format `fmt` (mmseg | voc | hf | cvat)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 0.0 <= val_share < 1.0 or not 0.0 <= min_confidence <= 1.0:
        raise UserError("--val-share must be in 0..1 (exclusive) and --min-confidence in 0..1")
    if image_format not in IMAGE_FORMATS:
        raise UserError(f"--image-format {image_format!r}: choose one of {', '.join(IMAGE_FORMATS)}")
    if fmt == "voc" and image_format != "jpg":
        raise UserError("--format voc: VOC readers (torchvision's VOCSegmentation) open JPEGImages/KEY.jpg; "
                        "use --image-format jpg, or --format mmseg for PNG images")
    if lowest is not None and lowest < 1:
        raise UserError(f"--lowest must be at least 1, got {lowest}")
    if fmt == "cvat" and lowest is None:
        raise UserError("--format cvat needs --lowest N: the N least confident samples to review")
    dest = Path(dest)
    selection = select(output, sample_filter, images_root, lowest)
    info = selection.info
    confidences = shard_confidences(output)
    with staged_dest(dest, overwrite) as stage:
        summary = ExportSummary(str(dest), fmt)
        samples = iter_export_samples(selection, min_confidence, 0.0 if fmt == "cvat" else val_share,
                                      summary.skip, confidences)
        if fmt == "hf":
            from pipeline.export.hf import write_hf

            return write_hf(stage, samples, list(info.names), list(info.colors), summary=summary,
                            image_format=image_format)
        if fmt == "cvat":
            from pipeline.export.cvat import write_cvat

            return write_cvat(stage, samples, list(info.names), list(info.colors), summary, image_format)
        return write_folders(stage, fmt, samples, list(info.names), list(info.colors), summary, image_format)


__all__ = ["FORMATS", "IGNORE_INDEX", "IMAGE_FORMATS", "LAYOUTS", "ExportSummary", "export_output"]
