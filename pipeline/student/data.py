"""What the student trains on: paired (image, label, confidence) samples at the student's scale.

- `StudentTransform`: resize to the student's short side, then a random resized crop + flip (the
  loader's `RandomResizedCropFlip`, so labels stay nearest-neighbour and the ignore value intact),
  and a mild brightness/contrast jitter of the image only.
- `pseudo_label_dataset`: the existing `PseudoLabelDataset` over an output directory.
- `class_pixel_counts`: per-class pixel totals of the kept samples, read from the manifests alone
  (the class-balancing weights come from them; no mask is decoded for it).
- `GroundTruthDataset`: image shards paired with gt label shards (confidence 1), for the ceiling.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.evaluation.outputs import OutputDir, decode_image, decode_label_png, ok_rows
from pipeline.io.masks import to_image_size
from pipeline.io.tarfiles import iter_members
from pipeline.student.config import DataRecipe
from pipeline.training import PseudoLabelDataset, RandomResizedCropFlip, SampleFilter
from pipeline.training.transforms import Box, crop_resize

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) after resizing so the short side is `short_side` (unchanged when 0)."""
    if short_side <= 0:
        return height, width
    f = short_side / min(height, width)
    return max(1, int(round(height * f))), max(1, int(round(width * f)))


@dataclass
class StudentTransform:
    recipe: DataRecipe
    train: bool = True

    def __call__(self, image: np.ndarray, label: np.ndarray, conf: np.ndarray, rng: np.random.Generator) -> Tensors:
        size = scaled_size(label.shape[0], label.shape[1], self.recipe.short_side)
        img, lab, cf = crop_resize(image, label, conf, Box(0, 0, label.shape[0], label.shape[1]), size, False)
        if not self.train:
            return img, torch.from_numpy(lab.astype(np.int64)), torch.from_numpy(cf.astype(np.float32) / 255.0)
        # Back to uint8 HWC for the paired crop (the resize above was the antialiased one).
        resized = (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        crop = RandomResizedCropFlip((self.recipe.crop, self.recipe.crop), scale=(self.recipe.scale_min, 1.0),
                                     ratio=(3 / 4, 4 / 3), flip_prob=0.5 if self.recipe.flip else 0.0)
        img_t, lab_t, cf_t = crop(resized, lab, cf, rng)
        if self.recipe.color_jitter > 0:
            a = self.recipe.color_jitter
            gain = 1.0 + rng.uniform(-a, a)  # contrast
            bias = rng.uniform(-a, a) / 2  # brightness
            mean = img_t.mean()
            img_t = ((img_t - mean) * gain + mean + bias).clamp_(0.0, 1.0)
        return img_t, lab_t, cf_t


def pseudo_label_dataset(output: str, recipe: DataRecipe, seed: int, images_root: Optional[str] = None,
                         storage_options: Optional[dict[str, Any]] = None) -> PseudoLabelDataset:
    return PseudoLabelDataset(
        output, SampleFilter(min_mean_confidence=recipe.min_mean_confidence),
        transform=StudentTransform(recipe), shuffle_shards=True, shuffle_buffer=64, seed=seed,
        images_root=images_root, storage_options=storage_options,
    )


def class_pixel_counts(output: str, num_classes: int, min_mean_confidence: float = 0.0,
                       storage_options: Optional[dict[str, Any]] = None) -> np.ndarray:
    """int64 (C,): labeled pixels per class over the ok samples the filter keeps (from manifests)."""
    out = OutputDir(output, storage_options)
    manifest = out.load_manifest()
    rows = ok_rows(manifest[SampleFilter(min_mean_confidence=min_mean_confidence).mask(manifest, out.info)])
    counts = np.zeros(num_classes, np.int64)
    for classes, pixels in zip(rows["classes"], rows["class_pixels"]):
        if classes is None or pixels is None:
            continue
        np.add.at(counts, np.asarray(classes, np.int64), np.asarray(pixels, np.int64))
    return counts


class GroundTruthDataset(IterableDataset):
    """Image shards joined by key with gt label shards (`KEY.label.png`), confidence 1 everywhere.

    Same contract as `PseudoLabelDataset` (tuples after a PairedTransform, `set_epoch`, shards split
    over workers); the gt values must be class indices or `ignore_index`.
    """

    def __init__(self, image_shards: list[str], label_shards: list[str], transform: StudentTransform,
                 num_classes: int, ignore_index: int = 255, seed: int = 0):
        super().__init__()
        if len(image_shards) != len(label_shards):
            raise ValueError(f"{len(image_shards)} image shards but {len(label_shards)} label shards")
        self.pairs = list(zip(image_shards, label_shards))
        self.transform, self.num_classes, self.ignore_index = transform, num_classes, ignore_index
        self.seed, self.epoch = seed, 0
        self.class_names = [str(i) for i in range(num_classes)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Tensors]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.pairs))
        rng = np.random.default_rng([self.seed, self.epoch, wid])
        for i in order[wid::nw]:
            images_url, labels_url = self.pairs[i]
            labels = {_key(n): d for n, d in iter_members(labels_url) if n.endswith(".label.png")}
            for name, data in iter_members(images_url):
                key, ext = _key(name), name.rsplit(".", 1)[-1].lower()
                if ext not in ("jpg", "jpeg", "png", "webp") or key not in labels:
                    continue
                image = decode_image(data)
                label = to_image_size(decode_label_png(labels[key]), *image.shape[:2])  # labels.max_side
                yield self.transform(image, label, np.full(label.shape, 255, np.uint8), rng)


def _key(name: str) -> str:
    directory, base = posixpath.split(name)
    return posixpath.join(directory, base.split(".", 1)[0])
