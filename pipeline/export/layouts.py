"""Folder layouts trainers read: mmsegmentation's custom-dataset layout and Pascal VOC's.

Both hold the images as the labeler saw them, one suffix for all (`pipeline.export.images`), one
palette PNG per sample (mode "P": pixel values are class indices, 255 = ignore, colours from the
output's palette) of the image's size, split lists of keys without suffix, the class names and
palette, and `keys.csv` (key, split, image and label paths, original path, source shard, mean
confidence):

    mmseg:  img_dir/{train,val}/KEY.jpg   ann_dir/{train,val}/KEY.png   splits/{train,val}.txt
            metainfo.json (classes, palette, img_suffix, seg_map_suffix, ignore_index)
            -> BaseSegDataset(data_root=DEST, data_prefix=dict(img_path="img_dir/train",
               seg_map_path="ann_dir/train"), ann_file="splits/train.txt", img_suffix=".jpg",
               seg_map_suffix=".png", metainfo=<metainfo.json's classes and palette>)
    voc:    JPEGImages/KEY.jpg   SegmentationClass/KEY.png
            ImageSets/Segmentation/{train,val,trainval}.txt   labels.txt   metainfo.json

Every split file exists even when empty (--val-share 0: val.txt is empty, trainval.txt = train.txt),
so `VOCSegmentation(image_set="val"|"trainval")` and a val dataloader find their list.
Keys with "/" become sub-folders; split files list them as they are, so `root/prefix/LINE + suffix`
finds every file (the way both frameworks build paths).
"""
from __future__ import annotations

import csv
import errno
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Optional

import numpy as np
from PIL import Image

from pipeline.export.images import ExportImage, export_image
from pipeline.export.samples import IGNORE_INDEX, ExportSample
from pipeline.io.records import SampleError

IGNORE_COLOR = (224, 224, 192)  # VOC's colour for the ignore value


def palette_png(label: np.ndarray, colors: list[tuple[int, int, int]]) -> bytes:
    """uint8 (H, W) class indices -> palette PNG bytes (values unchanged; colours for viewers)."""
    flat = [0] * (256 * 3)
    for i, c in enumerate(colors[:IGNORE_INDEX]):
        flat[3 * i: 3 * i + 3] = [int(v) for v in c]
    flat[3 * IGNORE_INDEX: 3 * IGNORE_INDEX + 3] = list(IGNORE_COLOR)
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="P")
    img.putpalette(flat)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class LayoutPaths:
    image_dir: str  # relative folder of images, {split} filled in
    label_dir: str
    split_file: str


LAYOUTS = {
    "mmseg": LayoutPaths("img_dir/{split}", "ann_dir/{split}", "splits/{split}.txt"),
    "voc": LayoutPaths("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/{split}.txt"),
}


SPLITS = ("train", "val")
KEYS_COLUMNS = ["key", "split", "image", "label", "original_path", "source_shard", "mean_confidence"]
EXAMPLES = 3  # skipped keys named per reason


@dataclass
class ExportSummary:
    dest: str
    format: str
    samples: dict[str, int] = field(default_factory=dict)  # per split
    image_suffixes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> samples
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few keys
    copied: int = 0  # images written as their source bytes
    reencoded: int = 0  # images written from the decoded pixels

    def skip(self, reason: str, key: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        names = self.examples.setdefault(reason, [])
        if len(names) < EXAMPLES:
            names.append(key)

    def describe_skipped(self) -> list[str]:
        return [f"{n} {reason} (e.g. {', '.join(map(repr, self.examples.get(reason, [])))})"
                for reason, n in self.skipped.items()]


class KeysFile:
    """`keys.csv`, one row per exported sample, written as samples come (nothing held in memory)."""

    def __init__(self, path: Path):
        self.handle: IO[str] = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(KEYS_COLUMNS)

    def add(self, s: ExportSample, image: str, label: str, key: Optional[str] = None) -> None:
        conf = "" if s.mean_confidence != s.mean_confidence else f"{s.mean_confidence:.4f}"
        self.writer.writerow([key or s.key, s.split, image, label, s.original_path, s.source, conf])

    def close(self) -> None:
        self.handle.close()


def prepare(s: ExportSample, image_format: str, summary: ExportSummary) -> Optional[ExportImage]:
    """The sample's image file, or None (a skipped sample) when it cannot match its label."""
    try:
        image = export_image(s.image, image_format)
    except SampleError as exc:
        summary.skip(f"image_does_not_decode: {exc.kind}", s.key)
        return None
    if image.size != tuple(s.label.shape[:2]):
        summary.skip("size_mismatch: image and label sizes differ", s.key)
        return None
    if image.copied:
        summary.copied += 1
    else:
        summary.reencoded += 1
    return image


def write_folders(dest: Path, fmt: str, samples: Iterable[ExportSample], names: list[str],
                  colors: list[tuple[int, int, int]], summary: Optional[ExportSummary] = None,
                  image_format: str = "jpg") -> ExportSummary:
    layout = LAYOUTS[fmt]
    summary = summary or ExportSummary(str(dest), fmt)
    suffix = f".{image_format}"
    lists = {split: _open_list(dest / layout.split_file.format(split=split)) for split in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)
    keys = KeysFile(dest / "keys.csv")
    try:
        for s in samples:
            image = prepare(s, image_format, summary)
            if image is None:
                continue
            image_rel = f"{layout.image_dir.format(split=s.split)}/{s.key}{suffix}"
            label_rel = f"{layout.label_dir.format(split=s.split)}/{s.key}.png"
            if not _write_pair(dest, image_rel, image.data, label_rel, palette_png(s.label, colors), s.key, summary):
                continue
            lists[s.split].write(s.key + "\n")
            counts[s.split] += 1
            keys.add(s, image_rel, label_rel)
    finally:
        keys.close()
        for handle in lists.values():
            handle.close()
    for split in SPLITS:
        (dest / layout.image_dir.format(split=split)).mkdir(parents=True, exist_ok=True)
        (dest / layout.label_dir.format(split=split)).mkdir(parents=True, exist_ok=True)
    summary.samples = dict(counts)
    if fmt == "voc":  # trainval = train then val, what VOC's own trainval.txt is
        trainval = b"".join((dest / layout.split_file.format(split=sp)).read_bytes() for sp in SPLITS)
        _write(dest / layout.split_file.format(split="trainval"), trainval)
        _write(dest / "labels.txt", "".join(n + "\n" for n in names).encode())
    summary.image_suffixes = [suffix]
    meta = {
        "classes": list(names), "palette": [list(map(int, c)) for c in colors], "ignore_index": IGNORE_INDEX,
        "img_suffix": suffix, "seg_map_suffix": ".png", "splits": summary.samples, "layout": fmt,
        "split_files": _split_note(fmt, counts), "images": IMAGES_NOTE,
    }
    _write(dest / "metainfo.json", (json.dumps(meta, indent=2) + "\n").encode())
    return summary


IMAGES_NOTE = ("the pixels the labels were made on: EXIF orientation applied, RGB (alpha over white, 16-bit "
               "scaled to 8 bits); baseline RGB JPEGs without EXIF rotation are the source bytes")


def _split_note(fmt: str, counts: dict[str, int]) -> str:
    note = f"train {counts['train']}, val {counts['val']}"
    if fmt == "voc":
        note += ", trainval = train + val"
    if not counts["val"]:
        note += " (val is empty: export with --val-share > 0 for a validation split)"
    return note


def _open_list(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8", newline="\n")


def _write_pair(dest: Path, image_rel: str, image: bytes, label_rel: str, label: bytes, key: str,
                summary: ExportSummary) -> bool:
    """Both files of a sample, or neither (a name the file system refuses is a skipped sample)."""
    written: list[Path] = []
    try:
        for rel, data in ((image_rel, image), (label_rel, label)):
            path = dest / rel
            _write(path, data)
            written.append(path)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ, errno.ENOTDIR, errno.EISDIR):
            raise
        for path in written:
            path.unlink(missing_ok=True)
        summary.skip(f"name_refused: {exc.strerror}", key)
        return False


def _write(path: Path, data: bytes) -> None:
    """The export is written in a staging folder renamed at the end: plain writes suffice here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
