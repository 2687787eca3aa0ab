"""The samples an export writes: original image bytes joined with their pseudo-label, filtered.

Samples are chosen from the manifests by the existing `SampleFilter` (shards with no kept sample are
never opened), the image tar and mask tar of a shard are streamed side by side, and each label is
mapped to what trainers expect: class indices 0..C-1, and the trainer's ignore index (255) for
pixels the run left unlabeled or whose stored confidence is below `min_confidence`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluation.outputs import (
    DatasetInfo, OutputDir, decode_conf_png, decode_label_png, group_members, iter_tar_members,
)
from pipeline.training.selection import SampleFilter, Selection, ShardSelection, select_shards

log = logging.getLogger(__name__)

IGNORE_INDEX = 255  # mmsegmentation's, VOC's and most trainers' ignore value


@dataclass
class ExportSample:
    key: str  # sample key; may hold "/" (becomes sub-folders)
    image: bytes  # the original encoded image, untouched
    image_ext: str  # its member extension as stored (e.g. "jpg", "PNG")
    label: np.ndarray  # uint8 (H, W): class index, or IGNORE_INDEX
    split: str  # "train" | "val"


def safe_key(key: str) -> bool:
    """Keys become relative paths: refuse absolute ones and `..` components."""
    parts = key.split("/")
    return bool(key) and not key.startswith("/") and ".." not in parts and "" not in parts


def split_of(key: str, val_share: float) -> str:
    """Deterministic split by a hash of the key, so re-exports and new samples never move a sample."""
    if val_share <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_share else "train"


def trainer_label(label: np.ndarray, conf: np.ndarray, info: DatasetInfo, min_confidence: float) -> np.ndarray:
    """Our label (ignore = the dtype's max) -> uint8 with IGNORE_INDEX for ignored and unsure pixels."""
    out = label.astype(np.int64)
    bad = out == info.ignore_index
    if min_confidence > 0:
        bad |= conf.astype(np.float64) / 255.0 < min_confidence
    out[bad] = IGNORE_INDEX
    return out.astype(np.uint8)


def select(output: str, sample_filter: Optional[SampleFilter], images_root: Optional[str] = None) -> Selection:
    selection = select_shards(OutputDir(output), sample_filter, images_root=images_root)
    if selection.info.num_classes > IGNORE_INDEX:
        raise UserError(f"{output} has {selection.info.num_classes} classes; palette PNG exports hold at most "
                        f"{IGNORE_INDEX} classes plus the ignore index {IGNORE_INDEX}")
    return selection


def iter_export_samples(selection: Selection, min_confidence: float = 0.0, val_share: float = 0.0,
                        skipped: Optional[dict[str, int]] = None) -> Iterator[ExportSample]:
    """Every kept sample of `selection`, in shard and input order."""
    skipped = skipped if skipped is not None else {}
    for shard in selection.shards:
        yield from _iter_shard(shard, selection.info, min_confidence, val_share, skipped)


def _iter_shard(shard: ShardSelection, info: DatasetInfo, min_confidence: float, val_share: float,
                skipped: dict[str, int]) -> Iterator[ExportSample]:
    masks = group_members(iter_tar_members(shard.mask_url, shard.mask_members, shard.storage_options),
                          ("label", "conf"))
    pending: dict[str, dict[str, bytes]] = {}
    done = False
    try:
        for key, name, data in iter_tar_members(shard.source_url, shard.image_members, shard.storage_options):
            while key not in pending and not done:  # both tars are in input order: this buffers ~nothing
                try:
                    mkey, parts = next(masks)
                    pending[mkey] = parts
                except StopIteration:
                    done = True
            parts = pending.pop(key, None)
            if parts is None:
                skipped["no_mask"] = skipped.get("no_mask", 0) + 1
                continue
            if not safe_key(key):
                log.warning("%s: key %r cannot be a relative path; skipped", shard.shard, key)
                skipped["unsafe_key"] = skipped.get("unsafe_key", 0) + 1
                continue
            label = trainer_label(decode_label_png(parts["label"]), decode_conf_png(parts["conf"]), info, min_confidence)
            ext = name[len(key) + 1:]  # image members are named KEY.EXT (see image_members)
            yield ExportSample(key, data, ext, label, split_of(key, val_share))
    finally:
        masks.close()
