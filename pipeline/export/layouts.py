"""Folder layouts trainers read: mmsegmentation's custom-dataset layout and Pascal VOC's.

Both hold the original image bytes and one palette PNG per sample (mode "P": pixel values are
class indices, 255 = ignore, colours from the output's palette), split lists of keys without
suffix, and the class names and palette:

    mmseg:  img_dir/{train,val}/KEY.EXT   ann_dir/{train,val}/KEY.png   splits/{train,val}.txt
            metainfo.json (classes, palette, img_suffix, seg_map_suffix, ignore_index)
            -> BaseSegDataset(data_root=DEST, data_prefix=dict(img_path="img_dir/train",
               seg_map_path="ann_dir/train"), ann_file="splits/train.txt", img_suffix=".EXT",
               seg_map_suffix=".png", metainfo=<metainfo.json's classes and palette>)
    voc:    JPEGImages/KEY.EXT   SegmentationClass/KEY.png
            ImageSets/Segmentation/{train,val,trainval}.txt   labels.txt   metainfo.json

Keys with "/" become sub-folders; split files list them as they are, so `root/prefix/LINE + suffix`
finds every file (the way both frameworks build paths).
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from pipeline.export.samples import IGNORE_INDEX, ExportSample

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


@dataclass
class ExportSummary:
    dest: str
    format: str
    samples: dict[str, int] = field(default_factory=dict)  # per split
    image_suffixes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def write_folders(dest: Path, fmt: str, samples: Iterable[ExportSample], names: list[str],
                  colors: list[tuple[int, int, int]], summary: Optional[ExportSummary] = None) -> ExportSummary:
    layout = LAYOUTS[fmt]
    summary = summary or ExportSummary(str(dest), fmt)
    lists: dict[str, list[str]] = {}
    suffixes: set[str] = set()
    for s in samples:
        image_path = dest / layout.image_dir.format(split=s.split) / f"{s.key}.{s.image_ext}"
        label_path = dest / layout.label_dir.format(split=s.split) / f"{s.key}.png"
        _write(image_path, s.image)
        _write(label_path, palette_png(s.label, colors))
        lists.setdefault(s.split, []).append(s.key)
        suffixes.add(f".{s.image_ext}")
    for split, keys in lists.items():
        _write(dest / layout.split_file.format(split=split), "".join(k + "\n" for k in keys).encode())
        summary.samples[split] = len(keys)
    if fmt == "voc" and len(lists) > 1:
        _write(dest / layout.split_file.format(split="trainval"),
               "".join(k + "\n" for split in ("train", "val") for k in lists.get(split, [])).encode())
    if fmt == "voc":
        _write(dest / "labels.txt", "".join(n + "\n" for n in names).encode())
    summary.image_suffixes = sorted(suffixes)
    meta = {
        "classes": list(names), "palette": [list(map(int, c)) for c in colors], "ignore_index": IGNORE_INDEX,
        "img_suffix": summary.image_suffixes[0] if len(suffixes) == 1 else summary.image_suffixes,
        "seg_map_suffix": ".png", "splits": summary.samples, "layout": fmt,
    }
    _write(dest / "metainfo.json", (json.dumps(meta, indent=2) + "\n").encode())
    return summary


def _write(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename, so an interrupted export leaves no torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
