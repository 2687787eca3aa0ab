"""The samples an export writes: original image bytes joined with their pseudo-label, filtered.

Samples are chosen from the manifests by the existing `SampleFilter` (shards with no kept sample are
never opened), optionally narrowed to the N of lowest mean confidence (`lowest`), the image tar
and mask tar of a shard are streamed side by side, and each label is mapped to what trainers
expect: class indices 0..C-1, and the trainer's ignore index (255) for pixels the run left
unlabeled or whose stored confidence is below `min_confidence`.

Keys become relative file paths: a key that no file system (or split-list reader) takes is a
skipped sample with a reason (`key_problem`), never a crash. Shards packed by `pseudolabel pack`
carry the original path of every key (`pipeline.io.pack.pack_index`); a key whose file was packed
again because it changed is taken from the newer shard only.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.io.layout import manifest_path
from pipeline.io.masks import image_size, to_image_size
from pipeline.evaluation.outputs import (
    DatasetInfo, OutputDir, decode_conf_png, decode_label_png, group_members, iter_tar_members,
)
from pipeline.training.selection import SampleFilter, Selection, ShardSelection, drop_superseded, select_shards

log = logging.getLogger(__name__)

IGNORE_INDEX = 255  # mmsegmentation's, VOC's and most trainers' ignore value


NAME_MAX = 255  # bytes of one path component on the common file systems (ext4, APFS, NTFS: 255 units)
KEY_MAX = 1024  # bytes of a whole key: the folder above it and the suffix still fit PATH_MAX (4096)
SUFFIX_ROOM = 8  # the longest suffix a layout appends to a key component (".png", ".jpg")

Skip = Callable[[str, str], None]  # (reason, key)


@dataclass
class ExportSample:
    key: str  # sample key; may hold "/" (becomes sub-folders)
    image: bytes  # the original encoded image, untouched (`pipeline.export.images` makes the file)
    image_ext: str  # its member extension as stored (e.g. "jpg", "PNG")
    label: np.ndarray  # uint8 (H, W): class index, or IGNORE_INDEX
    split: str  # "train" | "val"
    source: str = ""  # input shard URL
    original_path: str = ""  # the file `pseudolabel pack` took it from, when known
    mean_confidence: float = float("nan")


def key_problem(key: str) -> str:
    """Why `key` cannot be a relative file path listed in a split file, or "" when it can."""
    parts = key.split("/")
    if not key or key.startswith("/") or "" in parts:
        return "unsafe_key: empty or absolute path component"
    if "." in parts or ".." in parts:
        return "unsafe_key: '.' or '..' component"
    if any(ord(c) < 32 or c in "\\\x7f" for c in key):
        return "unsafe_key: control character or backslash"
    if any(p != p.strip() for p in parts):
        return "unsafe_key: leading or trailing space (split-file readers strip lines)"
    if len(key.encode()) > KEY_MAX or any(len(p.encode()) + SUFFIX_ROOM > NAME_MAX for p in parts):
        return "name_too_long: longer than a file system takes"
    return ""


def safe_key(key: str) -> bool:
    return not key_problem(key)


def split_of(key: str, val_share: float) -> str:
    """Deterministic split by a hash of the key, so re-exports and new samples never move a sample."""
    if val_share <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_share else "train"


def trainer_label(label: np.ndarray, conf: np.ndarray, info: DatasetInfo, min_confidence: float,
                  size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Our label (ignore = the dtype's max) -> uint8 with IGNORE_INDEX for ignored and unsure pixels,
    at the image's `size` (H, W) when given (maps stored smaller, labels.max_side, are resized back)."""
    if size is not None:
        label, conf = to_image_size(label, *size), to_image_size(conf, *size)
    conf = to_image_size(conf, *label.shape)  # confidence stored coarser than the labels
    out = label.astype(np.int64)
    bad = out == info.ignore_index
    if min_confidence > 0:
        bad |= conf.astype(np.float64) / 255.0 < min_confidence
    out[bad] = IGNORE_INDEX
    return out.astype(np.uint8)


def select(output: str, sample_filter: Optional[SampleFilter], images_root: Optional[str] = None,
           lowest: Optional[int] = None) -> Selection:
    """The kept samples; with `lowest`, only the `lowest` kept ones of least mean confidence."""
    out = OutputDir(output)
    # Superseded photos stay in: the export skips them itself, with a reason in its summary.
    selection = select_shards(out, sample_filter, images_root=images_root, latest_only=False)
    if selection.info.num_classes > IGNORE_INDEX:
        raise UserError(f"{output} has {selection.info.num_classes} classes; palette PNG exports hold at most "
                        f"{IGNORE_INDEX} classes plus the ignore index {IGNORE_INDEX}")
    if lowest is not None:
        selection = _lowest(out, selection, sample_filter or SampleFilter(), lowest)
    return selection


def _lowest(out: OutputDir, selection: Selection, sample_filter: SampleFilter, n: int) -> Selection:
    """Narrow `selection` to the `n` kept samples of lowest mean confidence (ties: input order)."""
    columns = ["key", "status", "mask_shard", "image_member", "mean_confidence", "source_shard"]
    if sample_filter.required_classes or sample_filter.excluded_classes:
        columns += ["classes", "class_pixels"]
    manifest = out.load_manifest(columns=columns)
    kept = manifest[sample_filter.mask(manifest, selection.info) & manifest["image_member"].notna()]
    kept = drop_superseded(kept)  # a photo packed again after it changed: only its newer version is up for review
    chosen = kept.sort_values("mean_confidence", kind="stable").head(n)
    wanted: dict[str, dict[str, float]] = {}
    for shard, key, conf in zip(chosen["shard"], chosen["key"], chosen["mean_confidence"]):
        wanted.setdefault(str(shard), {})[str(key)] = float(conf)
    shards = [_restrict(s, wanted[s.shard]) for s in selection.shards if s.shard in wanted]
    return Selection(shards, selection.info, selection.total_rows, len(chosen), selection.rejected_shards)


def _restrict(shard: ShardSelection, keys: dict[str, float]) -> ShardSelection:
    return ShardSelection(
        shard=shard.shard, source_url=shard.source_url, mask_url=shard.mask_url,
        keys=[k for k in shard.keys if k in keys],
        image_members={m: k for m, k in shard.image_members.items() if k in keys},
        mask_members={m: kp for m, kp in shard.mask_members.items() if kp[0] in keys},
        storage_options=shard.storage_options)


Confidences = Callable[[str], dict[str, float]]  # shard name -> {key: mean confidence}


def shard_confidences(output: str) -> Confidences:
    """Reads one shard's manifest at a time (O(1) in the number of shards held in memory)."""
    out = OutputDir(output)

    def read(shard: str) -> dict[str, float]:
        import pyarrow.parquet as pq

        with out.open(manifest_path(shard)) as f:
            table = pq.read_table(f, columns=["key", "mean_confidence"])
        return {str(k): float(c) for k, c in zip(table.column("key").to_pylist(),
                                                 table.column("mean_confidence").to_pylist()) if c is not None}
    return read


def iter_export_samples(selection: Selection, min_confidence: float = 0.0, val_share: float = 0.0,
                        skip: Optional[Skip] = None,
                        confidences: Optional[Confidences] = None) -> Iterator[ExportSample]:
    """Every kept sample of `selection`, in shard and input order; `skip(reason, key)` for the rest."""
    skip = skip or (lambda reason, key: None)
    for shard in selection.shards:
        conf = confidences(shard.shard) if confidences is not None else {}
        yield from _iter_shard(shard, selection.info, min_confidence, val_share, skip, conf)


def _iter_shard(shard: ShardSelection, info: DatasetInfo, min_confidence: float, val_share: float,
                skip: Skip, confidences: dict[str, float]) -> Iterator[ExportSample]:
    from pipeline.io.pack import pack_index, superseded

    originals = pack_index(shard.source_url) or {}
    newer = superseded(shard.source_url)
    shard_file = shard.source_url.rsplit("/", 1)[-1].split(".")[0]
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
                skip("no_mask: the mask shard lacks it", key)
                continue
            problem = key_problem(key)
            if problem:
                log.warning("%s: key %r skipped: %s", shard.shard, key, problem)
                skip(problem, key)
                continue
            if (shard_file, key) in newer:
                skip("superseded: the file changed and was packed again; the newer version is exported", key)
                continue
            label = trainer_label(decode_label_png(parts["label"]), decode_conf_png(parts["conf"]), info, min_confidence,
                                  image_size(data))
            ext = name[len(key) + 1:]  # image members are named KEY.EXT (see image_members)
            yield ExportSample(key, data, ext, label, split_of(key, val_share), shard.source_url,
                               originals.get(key, ""), confidences.get(key, float("nan")))
    finally:
        masks.close()
