"""`pseudolabel export`: an output's images and pseudo-labels in the layouts trainers read.

- `samples`: choose samples (SampleFilter), join image bytes with labels, map ignore/unsure to 255.
- `layouts`: mmsegmentation and VOC folders of palette PNGs, split lists, classes and palette.
- `hf`: Parquet + dataset card that `datasets.load_dataset(DEST)` reads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import UserError
from pipeline.export.layouts import LAYOUTS, ExportSummary, write_folders
from pipeline.export.samples import IGNORE_INDEX, iter_export_samples, select
from pipeline.training.selection import SampleFilter

FORMATS = ("mmseg", "voc", "hf")


def export_output(output: str, dest: str | Path, fmt: str, *, sample_filter: Optional[SampleFilter] = None,
                  min_confidence: float = 0.0, val_share: float = 0.0, images_root: Optional[str] = None,
                  overwrite: bool = False) -> ExportSummary:
    """Write `output`'s kept samples to `dest` in format `fmt` (mmseg | voc | hf)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not 0.0 <= val_share < 1.0 or not 0.0 <= min_confidence <= 1.0:
        raise UserError("--val-share must be in 0..1 (exclusive) and --min-confidence in 0..1")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise UserError(f"export destination {dest} is not empty; choose a new folder or pass --overwrite")
    selection = select(output, sample_filter, images_root)
    info = selection.info
    summary = ExportSummary(str(dest), fmt)
    samples = iter_export_samples(selection, min_confidence, val_share, summary.skipped)
    dest.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        from pipeline.export.hf import write_hf

        return write_hf(dest, samples, list(info.names), list(info.colors), summary=summary)
    return write_folders(dest, fmt, samples, list(info.names), list(info.colors), summary)


__all__ = ["FORMATS", "IGNORE_INDEX", "LAYOUTS", "ExportSummary", "export_output"]
