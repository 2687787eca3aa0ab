"""WebDataset shards of toy scenes: images in one shard set, ground-truth masks in a paired one.

Layout under `out_dir` (shard names are the same in both sets, samples in the same order):

    images/toyworld-{split}-000000.tar   KEY.jpg (or KEY.png), KEY.txt (caption), KEY.json (metadata)
    labels/toyworld-{split}-000000.tar   KEY.label.png (uint8 grayscale, class index per pixel)
    vocabulary.txt                       the class list the label values index
    dataset.json                         classes, palette, split, seed, counts, written last

Tar members get fixed metadata (pipeline.io.tarfiles), so the same arguments give byte-identical
shards. The labels live apart so a labelling run reads only images and an evaluation pairs the
pipeline's masks with `labels/` by shard name and key.
"""
from __future__ import annotations

import io
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from PIL import Image

from pipeline.io.atomic import write_atomic
from pipeline.io.tarfiles import iter_members, write_tar
from pipeline.toyworld.classes import CLASSES, NAMES, vocabulary_text
from pipeline.toyworld.generator import SCENE_SIZE, Scene, generate_scene, split_seed

ImageFormat = Literal["jpg", "png"]
LABEL_SUFFIX = "label.png"


@dataclass(frozen=True)
class ShardSet:
    images: list[Path]  # image shards, in order
    labels: list[Path]  # paired label shards, same names
    dataset_json: Path


def write_shards(out_dir: str | Path, split: str | int, count: int, per_shard: int = 100, start: int = 0,
                 image_format: ImageFormat = "jpg", jpeg_quality: int = 95, size: int = SCENE_SIZE) -> ShardSet:
    """Generate scenes `start .. start+count-1` of `split` and write them as paired shard sets."""
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if count < 1 or per_shard < 1:
        raise ValueError(f"count and per_shard must be positive (got {count}, {per_shard})")
    out = Path(out_dir)
    seed = split_seed(split)
    name = split if isinstance(split, str) else f"seed{seed}"
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for shard, first in enumerate(range(start, start + count, per_shard)):
        scenes = [generate_scene(seed, i, size) for i in range(first, min(first + per_shard, start + count))]
        shard_name = f"toyworld-{name}-{shard:06d}.tar"
        image_members, label_members = [], []
        for scene in scenes:
            image_members += _image_members(scene, image_format, jpeg_quality)
            label_members.append((f"{scene.key}.{LABEL_SUFFIX}", encode_label(scene.label)))
        images.append(write_tar(out / "images" / shard_name, image_members))
        labels.append(write_tar(out / "labels" / shard_name, label_members))
    (out / "vocabulary.txt").write_text(vocabulary_text())
    meta = {
        "schema_version": 1,
        "generator": "pipeline.toyworld",
        "split": name,
        "seed": seed,
        "start": start,
        "count": count,
        "per_shard": per_shard,
        "size": size,
        "image_format": image_format,
        "classes": [{"index": i, "name": c.name, "kind": c.kind, "color": list(c.color)} for i, c in enumerate(CLASSES)],
        "image_shards": [str(p.relative_to(out)) for p in images],
        "label_shards": [str(p.relative_to(out)) for p in labels],
    }
    dataset_json = out / "dataset.json"
    _atomic_write(dataset_json, json.dumps(meta, indent=2).encode())
    return ShardSet(images, labels, dataset_json)


def encode_label(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(label, np.uint8), mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_label(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    if img.mode != "L":
        raise ValueError(f"label PNG has mode {img.mode!r}, expected 'L' (uint8 class indices)")
    return np.asarray(img)


def read_tar(path: str | Path) -> Iterator[tuple[str, str, bytes]]:
    """(key, extension, bytes) for every member, in order; the key ends at the first dot of the name."""
    for name, data in iter_members(path):
        key, _, ext = posixpath.basename(name).partition(".")
        yield key, ext, data


def read_labels(path: str | Path) -> dict[str, np.ndarray]:
    """Ground-truth masks of one label shard: key -> uint8 (H, W)."""
    return {key: decode_label(data) for key, ext, data in read_tar(path) if ext == LABEL_SUFFIX}


def read_images(path: str | Path) -> dict[str, np.ndarray]:
    """RGB images of one image shard: key -> uint8 (H, W, 3)."""
    out = {}
    for key, ext, data in read_tar(path):
        if ext in ("jpg", "png"):
            out[key] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return out


def _image_members(scene: Scene, image_format: ImageFormat, jpeg_quality: int) -> list[tuple[str, bytes]]:
    buf = io.BytesIO()
    img = Image.fromarray(scene.image)
    if image_format == "jpg":
        img.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)  # 4:4:4: textures keep their colour
    else:
        img.save(buf, format="PNG", compress_level=6)
    meta = {"seed": scene.seed, "index": scene.index, "classes": [NAMES[c] for c in scene.classes]}
    return [
        (f"{scene.key}.{image_format}", buf.getvalue()),
        (f"{scene.key}.txt", scene.caption.encode()),
        (f"{scene.key}.json", json.dumps(meta).encode()),
    ]


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomic(path, data)
