"""Test fixture of the `pseudolabel run` output format (docs_contract.md), built from numpy arrays.

`write_output_dir` writes input WebDataset shards (the originals) and an output directory exactly
as documented: masks/NAME.tar (KEY.label.png + KEY.conf.png per ok sample, input order),
manifest/NAME.parquet (manifest-v1 schema, one row per input sample), dataset.json, _done/NAME.json
and _stats.json. It knows nothing of the labeling stage: it builds the files from the typed
records of the format (pipeline.io.records, paths from pipeline.io.layout), as the writer does.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from pipeline.io import layout
from pipeline.io.layout import RowStatus, ShardStatus
from pipeline.io.records import DatasetMeta, DoneRecord, ManifestRow, VocabEntry
from pipeline.io.tarfiles import write_tar
from pipeline.io.writers import manifest_bytes

PALETTE = [(0, 0, 0), (220, 20, 60), (0, 128, 0), (30, 144, 255), (255, 215, 0), (148, 0, 211), (255, 140, 0)]


@dataclass
class FakeSample:
    key: str
    image: Optional[np.ndarray]  # uint8 HxWx3; None for a sample whose image could not be decoded
    label: Optional[np.ndarray] = None  # class indices, ignore value where ignored; None = error row
    conf: Optional[np.ndarray] = None  # float probabilities in 0..1, same shape as label
    error: Optional[str] = None  # error kind and message of a failure row
    image_ext: str = "png"


@dataclass
class FakeOutput:
    root: Path
    input_dir: Path
    shards: dict[str, list[FakeSample]]
    names: list[str]
    ignore_index: int
    source_shards: dict[str, str] = field(default_factory=dict)  # NAME -> input tar path


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _encode_image(image: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(ext, ext.upper()))
    return buf.getvalue()


def write_output_dir(
    root: Path,
    shards: dict[str, list[FakeSample]],
    names: Sequence[str],
    *,
    input_dir: Optional[Path] = None,
    label_dtype: str = "uint8",
    colors: Optional[Sequence[tuple[int, int, int]]] = None,
) -> FakeOutput:
    """Write input shards under `input_dir` (default root/../inputs) and the output under `root`."""
    root = Path(root)
    input_dir = Path(input_dir) if input_dir is not None else root.parent / "inputs"
    ignore = 255 if label_dtype == "uint8" else 65535
    np_dtype = np.uint8 if label_dtype == "uint8" else np.uint16
    colors = list(colors) if colors is not None else [PALETTE[i % len(PALETTE)] for i in range(len(names))]
    out = FakeOutput(root, input_dir, shards, list(names), ignore)
    now = datetime.now(timezone.utc)
    input_dir.mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for shard, samples in shards.items():
        source = input_dir / f"{shard}.tar"
        out.source_shards[shard] = str(source)
        write_tar(source, [(f"{s.key}.{s.image_ext}", _encode_image(s.image, s.image_ext)) for s in samples if s.image is not None]
                  + [(f"{s.key}.txt", b"unused") for s in samples if s.image is None])
        mask_members: list[tuple[str, bytes]] = []
        rows = []
        for index, s in enumerate(samples):
            row = ManifestRow(
                key=s.key, sample_index=index, source_shard=str(source),
                image_member=s.image_ext if s.image is not None else None,
                status=RowStatus.OK if s.label is not None else RowStatus.ERROR, error=s.error, labeled_at=now,
            )
            if s.image is not None:
                row.height, row.width = int(s.image.shape[0]), int(s.image.shape[1])
            if s.label is not None:
                label = s.label.astype(np_dtype)
                conf_u8 = np.round(255 * np.clip(s.conf, 0, 1)).astype(np.uint8)
                mask_members.append((layout.label_member(s.key), _png(label)))
                mask_members.append((layout.conf_member(s.key), _png(conf_u8)))
                valid = label[label != ignore]
                classes, counts = np.unique(valid, return_counts=True)
                row.mask_shard = layout.mask_shard_path(shard)
                row.label_member, row.conf_member = layout.label_member(s.key), layout.conf_member(s.key)
                row.mean_confidence = float(np.mean(s.conf))
                row.ignored_pixels = int((label == ignore).sum())
                row.classes, row.class_pixels = [int(c) for c in classes], [int(c) for c in counts]
            rows.append(row)
        write_tar(root / layout.mask_shard_path(shard), mask_members)
        _write(root / layout.manifest_path(shard), manifest_bytes(rows))
        n_ok = sum(s.label is not None for s in samples)
        record = DoneRecord(
            shard=shard, source=str(source), status=ShardStatus.DONE, samples=len(samples), ok=n_ok,
            errors=len(samples) - n_ok, started_at=now.isoformat(), finished_at=now.isoformat(),
            seconds=0.1, worker="fixture", config_fingerprint="fixture0000000000",
            mask_shard=layout.mask_shard_path(shard), manifest=layout.manifest_path(shard),
        )
        _write(root / layout.done_path(shard), record.to_json())
    meta = DatasetMeta(
        vocabulary=[VocabEntry(i, n, [n], tuple(colors[i])) for i, n in enumerate(names)],
        num_classes=len(names), ignore_index=ignore, label_dtype=label_dtype,
        config={"labels": {"min_confidence": 0.0}}, config_fingerprint="fixture0000000000",
        model={"name": "fixture", "pretrained": "none", "checkpoint_sha256": None},
        versions={}, created_at=now.isoformat(),
    )
    _write(root / layout.DATASET_JSON, meta.to_json())
    (root / layout.STATS_JSON).write_text(json.dumps({"fixture": True}))
    return out


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def synthetic_sample(
    rng: np.random.Generator, key: str, size: tuple[int, int], num_classes: int, *, ignore: int = 255,
    ignore_share: float = 0.1, classes: Optional[Sequence[int]] = None,
) -> FakeSample:
    """An image of flat-coloured blocks whose label is the block's class (learnable from colour).

    Each class c >= 1 has colour PALETTE[c]; class 0 is the black background. A random share of
    pixels is ignored (label = ignore, low confidence); confidence is high elsewhere. `classes`
    limits the block classes (default 1..num_classes-1).
    """
    choices = list(classes) if classes is not None else list(range(1, num_classes))
    h, w = size
    label = np.zeros((h, w), dtype=np.int64)
    for _ in range(3):
        c = int(choices[int(rng.integers(len(choices)))])
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = int(rng.integers(y0 + h // 4, h + 1)), int(rng.integers(x0 + w // 4, w + 1))
        label[y0:y1, x0:x1] = c
    image = np.array([PALETTE[c % len(PALETTE)] for c in range(num_classes)], dtype=np.uint8)[label]
    noise = rng.integers(-12, 13, size=image.shape)
    image = np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    conf = rng.uniform(0.6, 1.0, size=(h, w)).astype(np.float32)
    ignored = rng.random((h, w)) < ignore_share
    conf[ignored] = rng.uniform(0.0, 0.3, size=int(ignored.sum()))
    label[ignored] = ignore
    return FakeSample(key=key, image=image, label=label, conf=conf)
