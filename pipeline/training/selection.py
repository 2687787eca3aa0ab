"""Choose training samples from the manifests alone, before any tar file is opened.

A `SampleFilter` keeps ok rows by mean confidence and by the classes they contain; `select_shards`
returns one `ShardSelection` per shard that keeps at least one sample. Shards with none are left
out, so their image and mask tars are never read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import UserError
from pipeline.io.layout import RowStatus
from pipeline.evaluation.outputs import (
    DatasetInfo, OutputDir, image_members, mask_members, ok_rows, per_shard, resolve_source,
)

log = logging.getLogger(__name__)

# Manifest columns the selection reads (plus classes/class_pixels when a class filter is set).
_SELECT_COLUMNS = ("key", "source_shard", "image_member", "status", "mask_shard", "label_member", "conf_member",
                   "mean_confidence")


@dataclass
class SampleFilter:
    """Which ok samples to train on. Classes are given by index or by name/synonym."""

    min_mean_confidence: float = 0.0  # keep rows whose manifest mean_confidence >= this
    required_classes: Sequence[str | int] = ()  # keep rows containing any of these (all, with require_all)
    require_all: bool = False
    excluded_classes: Sequence[str | int] = ()  # drop rows containing any of these
    min_class_pixels: int = 1  # a class "is contained" when it has at least this many pixels

    def mask(self, manifest: pd.DataFrame, info: DatasetInfo) -> pd.Series:
        """Boolean Series over `manifest` rows: True for rows to train on."""
        keep = (manifest["status"] == RowStatus.OK) & manifest["mask_shard"].notna()
        if self.min_mean_confidence > 0:
            keep &= manifest["mean_confidence"].fillna(-1.0) >= self.min_mean_confidence
        required = {info.class_index(c) for c in self.required_classes}
        excluded = {info.class_index(c) for c in self.excluded_classes}
        if required or excluded:
            present = [self._present(c, n) for c, n in zip(manifest["classes"], manifest["class_pixels"])]
            if required:
                test = required.issubset if self.require_all else (lambda s: not required.isdisjoint(s))
                keep &= pd.Series([test(p) for p in present], index=manifest.index)
            if excluded:
                keep &= pd.Series([excluded.isdisjoint(p) for p in present], index=manifest.index)
        return keep

    def _present(self, classes: Any, counts: Any) -> set[int]:
        if classes is None or (isinstance(classes, float) and np.isnan(classes)):
            return set()
        if counts is None or (isinstance(counts, float) and np.isnan(counts)):
            return {int(c) for c in classes}
        return {int(c) for c, n in zip(classes, counts) if int(n) >= self.min_class_pixels}


def drop_superseded(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` without those whose photo was packed again, changed (pipeline.io.pack.superseded):
    a student trains on the folder as it is now, not on two versions of one photo."""
    from pipeline.io.pack import superseded_in

    older = superseded_in(list(rows["source_shard"].unique()))
    if not older:
        return rows
    stems = [str(url).rsplit("/", 1)[-1].split(".")[0] for url in rows["source_shard"]]
    stale = [(stem, str(key)) in older for stem, key in zip(stems, rows["key"])]
    log.info("left out %d rows of photos packed again after they changed (their newer version is kept)", sum(stale))
    return rows[[not s for s in stale]]


@dataclass
class ShardSelection:
    """The kept samples of one shard and where to read them. Picklable (sent to loader workers)."""

    shard: str  # NAME of NAME.parquet
    source_url: str  # input image shard
    mask_url: str  # OUTPUT/masks/NAME.tar
    keys: list[str]  # kept sample keys, input order
    image_members: dict[str, str]  # image member name -> key
    mask_members: dict[str, tuple[str, str]]  # mask member name -> (key, "label" | "conf")
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class Selection:
    """Result of `select_shards`: the kept shards plus counts for logs and tests."""

    shards: list[ShardSelection]
    info: DatasetInfo
    total_rows: int
    kept_rows: int
    rejected_shards: list[str]  # shards with no kept sample (never opened)

    @property
    def num_samples(self) -> int:
        return self.kept_rows


def select_shards(
    output_dir: str | OutputDir,
    sample_filter: Optional[SampleFilter] = None,
    *,
    images_root: Optional[str] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
    latest_only: bool = True,
) -> Selection:
    """Apply `sample_filter` to every manifest of `output_dir` and group the kept rows by shard.

    images_root: read input shards from `images_root/<file name of source_shard>` instead of the
    recorded `source_shard` (for outputs whose inputs moved).
    latest_only: leave out a photo's older version when `pack` packed it again after it changed
    (the folder's `_pack/` index says so); exports pass False and report those rows themselves.
    """
    output = output_dir if isinstance(output_dir, OutputDir) else OutputDir(str(output_dir), storage_options)
    info = output.info
    filter_columns = ["classes", "class_pixels"] if (sample_filter and (sample_filter.required_classes or
                                                                        sample_filter.excluded_classes)) else []
    manifest = output.load_manifest(columns=[*_SELECT_COLUMNS, *filter_columns])
    sample_filter = sample_filter or SampleFilter()
    kept = ok_rows(manifest[sample_filter.mask(manifest, info)])
    kept = kept[kept["image_member"].notna()]
    if latest_only:
        kept = drop_superseded(kept)
    shards: list[ShardSelection] = []
    for name, rows in per_shard(kept):
        sources = rows["source_shard"].unique()
        masks = rows["mask_shard"].unique()
        if len(sources) != 1 or len(masks) != 1:
            raise UserError(f"manifest of shard {name} names several source or mask shards ({sources}, {masks})")
        keys = [str(k) for k in rows["key"]]
        shards.append(ShardSelection(
            shard=name,
            source_url=resolve_source(str(sources[0]), images_root),
            mask_url=output.url(str(masks[0])),
            keys=keys,
            image_members=image_members(rows),
            mask_members=mask_members(rows),
            storage_options=dict(output.storage_options),
        ))
    kept_names = {s.shard for s in shards}
    rejected = [str(n) for n in dict.fromkeys(manifest["shard"]) if n not in kept_names]
    log.info(
        "selected %d of %d samples in %d shards (%d shards with no kept sample are skipped)",
        len(kept), len(manifest), len(shards), len(rejected),
    )
    return Selection(shards, info, len(manifest), len(kept), rejected)
