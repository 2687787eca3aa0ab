"""Ray Data / Ray Train ingestion of pseudo-labels.

`build_ray_dataset` makes a `ray.data.Dataset` with one input row per kept shard (chosen from the
manifests, so rejected shards are never opened) expanded by `flat_map` into one row per sample:
`{"image": float32 (3, H, W), "label": int64 (H, W), "confidence": float32 (H, W)}` plus `"key"`
(str) with `include_key=True` (leave it out for `iter_torch_batches`, which cannot batch strings).

With Ray Train, pass the dataset to the trainer and read each worker's split in the loop:

    ds = build_ray_dataset("out/", SampleFilter(min_mean_confidence=0.5),
                           transform=RandomResizedCropFlip((224, 224)))
    trainer = TorchTrainer(loop, datasets={"train": ds}, scaling_config=ScalingConfig(num_workers=4))
    # in loop(): for batch in ray.train.get_dataset_shard("train").iter_torch_batches(batch_size=16):
    #                loss = F.cross_entropy(head(batch["image"]), batch["label"], ignore_index=IGNORE)

A transform (fixed output size) is needed for batching; without one, rows keep their original
sizes and only batch_size=1 batches work.
"""
from __future__ import annotations

import zlib
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluation.outputs import OutputDir
from pipeline.training.loader import iter_shard
from pipeline.training.selection import SampleFilter, ShardSelection, select_shards
from pipeline.training.transforms import PairedTransform


class _ShardExpander:
    """flat_map callable: one shard row -> its samples as numpy rows (picklable for Ray workers)."""

    def __init__(
        self, transform: Optional[PairedTransform], pixel_min_confidence: float, ignore_index: int, seed: int,
        include_key: bool,
    ):
        self.include_key = include_key
        self.transform = transform
        self.pixel_min_confidence = pixel_min_confidence
        self.ignore_index = ignore_index
        self.seed = seed

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        selection: ShardSelection = row["selection"]
        rng = np.random.default_rng([self.seed, zlib.crc32(selection.shard.encode())])
        for sample in iter_shard(selection):
            label = sample.label
            if self.pixel_min_confidence > 0:
                low = sample.conf.astype(np.float64) / 255.0 < self.pixel_min_confidence
                label = np.where(low, self.ignore_index, label)
            if self.transform is not None:
                image_t, label_t, conf_t = self.transform(sample.image, label, sample.conf, rng)
                image, label_out, conf = image_t.numpy(), label_t.numpy(), conf_t.numpy()
            else:
                image = np.ascontiguousarray(sample.image.transpose(2, 0, 1), dtype=np.float32) / 255.0
                label_out = label.astype(np.int64)
                conf = sample.conf.astype(np.float32) / 255.0
            row = {"image": image, "label": label_out, "confidence": conf}
            if self.include_key:
                row["key"] = sample.key
            yield row


def build_ray_dataset(
    output_dir: str,
    sample_filter: Optional[SampleFilter] = None,
    *,
    transform: Optional[PairedTransform] = None,
    pixel_min_confidence: float = 0.0,
    seed: int = 0,
    include_key: bool = False,
    images_root: Optional[str] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
):
    """A lazy `ray.data.Dataset` of the kept samples (see the module docstring for the row layout).

    Call after `ray.init()` (or let Ray start a local cluster). Each kept shard is one block of
    the input, so reading parallelises across shards.
    """
    import ray

    selection = select_shards(OutputDir(str(output_dir), storage_options), sample_filter, images_root=images_root)
    if not selection.shards:
        raise UserError(f"no sample of {output_dir} passes the filter {sample_filter}")
    items = [{"shard": s.shard, "selection": s} for s in selection.shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    expander = _ShardExpander(transform, pixel_min_confidence, selection.info.ignore_index, seed, include_key)
    return ds.flat_map(expander)
