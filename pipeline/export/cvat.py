"""CVAT "Segmentation mask 1.1": the least confident samples, for people to correct.

    DEST/images/NAME.jpg          create a CVAT task from these (the pixels the labeler saw)
    DEST/segmentation_mask_1.1.zip   then Actions > Upload annotations > "Segmentation mask 1.1":
        labelmap.txt                 `label:R,G,B::` per line, `background:0,0,0::` first
        ImageSets/Segmentation/default.txt   item names without extension, least confident first
        SegmentationClass/NAME.png   RGB mask: each pixel the colour of its label in labelmap.txt
    DEST/keys.csv                 name, key, mean confidence, original path, source shard

The layout is CVAT's documented one (docs.cvat.ai, "Segmentation Mask" format). Pixels the run
left unlabeled or below --min-confidence are `background` (0,0,0), which CVAT imports as no
annotation; a vocabulary class named `background` is that same label. Every other class gets its
palette colour, made unique and never black. There is no SegmentationObject folder: the labels are
semantic, with no instances.

Item names are the keys made safe for every CVAT back end: "/" becomes "__" and any character
other than letters, digits, ".", "_" and "-" becomes "_" (a clash gets "-2", "-3"...); keys.csv
maps each name back to its key and original file.
"""
from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from pipeline.export.layouts import ExportSummary, prepare
from pipeline.export.samples import IGNORE_INDEX, ExportSample

BACKGROUND = "background"
ZIP_NAME = "segmentation_mask_1.1.zip"
KEYS_COLUMNS = ["name", "key", "mean_confidence", "image", "original_path", "source_shard"]


Color = tuple[int, int, int]


def labelmap(names: list[str], colors: list[Color]) -> tuple[list[tuple[str, Color]], np.ndarray]:
    """([(label, colour)], lut): the labelmap rows and class index -> labelmap row (ignore -> 0)."""
    rows: list[tuple[str, tuple[int, int, int]]] = [(BACKGROUND, (0, 0, 0))]
    used = {(0, 0, 0)}
    lut = np.zeros(256, dtype=np.int64)  # IGNORE_INDEX and anything unknown -> background
    for index, name in enumerate(names):
        if name == BACKGROUND:
            continue
        color = _unique_color(tuple(int(v) for v in colors[index]) if index < len(colors) else (0, 0, 0), used)
        used.add(color)
        lut[index] = len(rows)
        rows.append((name.replace(":", "_"), color))  # ":" separates labelmap fields
    return rows, lut


def _unique_color(color: tuple[int, int, int], used: set[tuple[int, int, int]]) -> tuple[int, int, int]:
    rng = np.random.default_rng(sum(color) + 7)  # deterministic: the same palette gives the same map
    while color in used:
        color = tuple(int(v) for v in rng.integers(1, 256, size=3))
    return color


def safe_name(key: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "__")).lstrip(".") or "item"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def color_mask(label: np.ndarray, rows: list[tuple[str, tuple[int, int, int]]], lut: np.ndarray) -> bytes:
    palette = np.array([c for _, c in rows], dtype=np.uint8)
    rgb = palette[lut[label.astype(np.int64)]]  # (H, W, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_cvat(dest: Path, samples: Iterable[ExportSample], names: list[str], colors: list[tuple[int, int, int]],
               summary: ExportSummary, image_format: str = "jpg") -> ExportSummary:
    rows, lut = labelmap(names, colors)
    lut[IGNORE_INDEX] = 0
    items: list[tuple[float, str]] = []  # (mean confidence, name): the review order
    taken: set[str] = set()
    (dest / "images").mkdir()
    with zipfile.ZipFile(dest / ZIP_NAME, "w", zipfile.ZIP_DEFLATED) as zf, \
            open(dest / "keys.csv", "w", newline="", encoding="utf-8") as keys_file:
        keys = csv.writer(keys_file)
        keys.writerow(KEYS_COLUMNS)
        for s in samples:
            image = prepare(s, image_format, summary)
            if image is None:
                continue
            name = safe_name(s.key, taken)
            (dest / "images" / f"{name}{image.suffix}").write_bytes(image.data)
            zf.writestr(f"SegmentationClass/{name}.png", color_mask(s.label, rows, lut))
            items.append((s.mean_confidence, name))
            keys.writerow([name, s.key, _conf(s.mean_confidence), f"images/{name}{image.suffix}",
                           s.original_path, s.source])
        items.sort(key=lambda item: (item[0] != item[0], item[0]))  # NaN last
        zf.writestr("ImageSets/Segmentation/default.txt", "".join(f"{name}\n" for _, name in items))
        zf.writestr("labelmap.txt", "# label:color_rgb:parts:actions\n"
                    + "".join(f"{label}:{r},{g},{b}::\n" for label, (r, g, b) in rows))
    summary.samples = {"review": len(items)}
    summary.image_suffixes = [f".{image_format}"]
    return summary


def _conf(value: float) -> str:
    return "" if value != value else f"{value:.4f}"
