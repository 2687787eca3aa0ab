"""Training data: original image shards joined with our mask shards by key.

`PseudoLabelDataset` is a `torch.utils.data.IterableDataset`. Shards are split across DataLoader
workers (and across distributed ranks), each worker streams its shards' image tar and mask tar
side by side (both are in input order, so the join buffers almost nothing) and yields
`(image, label, confidence)` after a `PairedTransform`.

Only shards with at least one sample kept by the `SampleFilter` are ever opened: the choice is
made from the manifests (`select_shards`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.evaluation.outputs import (
    OutputDir, decode_conf_png, decode_label_png, group_members, iter_tar_members,
)
from pipeline.io.decode import decode_rgb
from pipeline.io.masks import to_image_size
from pipeline.io.records import SampleError
from pipeline.training.selection import SampleFilter, Selection, ShardSelection, select_shards
from pipeline.training.transforms import PairedTransform

log = logging.getLogger(__name__)


@dataclass
class RawSample:
    """One joined sample before augmentation (arrays at the original size)."""

    key: str
    image: np.ndarray  # uint8 (H, W, 3) RGB
    label: np.ndarray  # uint8 / uint16 (H, W): class index or ignore
    conf: np.ndarray  # uint8 (H, W): round(255 * p)


def iter_shard(selection: ShardSelection) -> Iterator[RawSample]:
    """Stream the kept samples of one shard, joining image and mask members by key.

    The mask tar is read lazily, in step with the image tar: masks read ahead of their image wait
    in a small buffer (empty when both tars share the input order, as the format promises).
    """
    opts = selection.storage_options
    masks = group_members(iter_tar_members(selection.mask_url, selection.mask_members, opts), ("label", "conf"))
    try:
        pending: dict[str, dict[str, bytes]] = {}
        masks_done = False
        for key, name, data in iter_tar_members(selection.source_url, selection.image_members, opts):
            while key not in pending and not masks_done:
                try:
                    mkey, parts = next(masks)
                except StopIteration:
                    masks_done = True
                    break
                pending[mkey] = parts
            parts = pending.pop(key, None)
            if parts is None:
                log.warning("%s: no label/confidence for sample %r in %s; skipped", selection.shard, key, selection.mask_url)
                continue
            try:
                image = decode_rgb(data)  # the labeler's decoder: the pixels the labels were made from
                # maps stored smaller (labels.max_side) back at the image's size
                label = to_image_size(decode_label_png(parts["label"]), *image.shape[:2])
                conf = to_image_size(decode_conf_png(parts["conf"]), *image.shape[:2])
            except (OSError, ValueError, SampleError) as exc:
                raise ValueError(f"{selection.shard}: sample {key!r} cannot be decoded ({name}): {exc}") from exc
            if image.shape[:2] != label.shape:
                raise ValueError(
                    f"{selection.shard}: sample {key!r}: image {name} in {selection.source_url} is "
                    f"{image.shape[1]}x{image.shape[0]} but its label is {label.shape[1]}x{label.shape[0]}; "
                    "is the source shard the one this output was made from?"
                )
            yield RawSample(key, image, label, conf)
    finally:
        masks.close()


class PseudoLabelDataset(IterableDataset):
    """`(image, label, confidence)` tensors from an output directory and its input shards.

    Example:
        ds = PseudoLabelDataset("out/", SampleFilter(min_mean_confidence=0.5),
                                transform=RandomResizedCropFlip((224, 224)))
        loader = DataLoader(ds, batch_size=16, num_workers=4)
        loss = F.cross_entropy(head(image), label, ignore_index=ds.ignore_index)

    Shards are the unit of parallelism: worker w of W (over all ranks) reads shards w, w + W, ...
    after a per-epoch shuffle of the shard order (`set_epoch`). Use more shards than workers.
    """

    def __init__(
        self,
        output_dir: str | Selection,
        sample_filter: Optional[SampleFilter] = None,
        *,
        transform: Optional[PairedTransform] = None,
        pixel_min_confidence: float = 0.0,
        shuffle_shards: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        images_root: Optional[str] = None,
        storage_options: Optional[Mapping[str, Any]] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        with_key: bool = False,
    ):
        """transform: None yields tensors at the original size (then use batch_size=1 or a custom
        collate). pixel_min_confidence: pixels with stored confidence below it become ignore.
        rank/world_size: default to torch.distributed's when it is initialised, else 0/1.
        with_key: yield `(image, label, confidence, key)` instead (debugging, bookkeeping)."""
        super().__init__()
        if isinstance(output_dir, Selection):
            self.selection = output_dir
        else:
            self.selection = select_shards(
                OutputDir(str(output_dir), storage_options), sample_filter, images_root=images_root
            )
        self.ignore_index = self.selection.info.ignore_index
        self.num_classes = self.selection.info.num_classes
        self.class_names = list(self.selection.info.names)
        self.transform = transform
        self.pixel_min_confidence = float(pixel_min_confidence)
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.epoch = 0
        self.rank, self.world_size = _distributed(rank, world_size)
        self.with_key = with_key

    def __len__(self) -> int:
        """Samples over all ranks and workers for one epoch (what the manifests promise)."""
        return self.selection.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shards_for(self, worker_id: int, num_workers: int) -> list[ShardSelection]:
        """The shards one DataLoader worker of this rank reads this epoch."""
        shards = list(self.selection.shards)
        if self.shuffle_shards:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(shards))
            shards = [shards[i] for i in order]
        slot = self.rank * num_workers + worker_id
        return shards[slot:: self.world_size * num_workers]

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards_for(worker_id, num_workers)
        if not shards:
            log.warning(
                "worker %d of rank %d has no shard (%d shards for %d readers)",
                worker_id, self.rank, len(self.selection.shards), self.world_size * num_workers,
            )
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker_id])
        samples = (s for shard in shards for s in iter_shard(shard))
        if self.shuffle_buffer > 1:
            samples = _shuffled(samples, self.shuffle_buffer, rng)
        for sample in samples:
            tensors = self.to_tensors(sample, rng)
            yield (*tensors, sample.key) if self.with_key else tensors

    def to_tensors(self, sample: RawSample, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        label = sample.label
        if self.pixel_min_confidence > 0:
            low = sample.conf.astype(np.float64) / 255.0 < self.pixel_min_confidence
            label = np.where(low, self.ignore_index, label)
        if self.transform is not None:
            return self.transform(sample.image, label, sample.conf, rng)
        image = torch.from_numpy(np.array(sample.image, copy=True)).permute(2, 0, 1).float().div_(255.0)
        return (
            image.contiguous(),
            torch.from_numpy(label.astype(np.int64)),
            torch.from_numpy(sample.conf.astype(np.float32) / 255.0),
        )


def make_dataloader(dataset: PseudoLabelDataset, batch_size: int, num_workers: int = 0, **kwargs: Any) -> DataLoader:
    """A DataLoader over `dataset` (persistent workers off, so `set_epoch` takes effect)."""
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers,
        pin_memory=kwargs.pop("pin_memory", torch.cuda.is_available()), **kwargs,
    )


def _shuffled(items: Iterator[RawSample], size: int, rng: np.random.Generator) -> Iterator[RawSample]:
    buffer: list[RawSample] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


def _distributed(rank: Optional[int], world_size: Optional[int]) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
