"""Geometric augmentations applied identically to an image and its label and confidence maps.

Images are resampled bilinearly (antialiased when shrinking); labels and confidences by nearest
neighbour, so every output label value (the ignore index included) is a value of the input. Both
resamplers use the same pixel-centre mapping, so masks stay aligned with the image.

A transform takes numpy arrays (image uint8 HxWx3, label integer HxW, confidence uint8 HxW as
stored, p = value / 255) and a `numpy.random.Generator`, and returns torch tensors
(image float32 3xHxW in 0..1 or normalised, label int64 HxW, confidence float32 HxW in 0..1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

# CLIP's normalisation, for heads trained on top of CLIP features.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class PairedTransform(Protocol):
    def __call__(self, image: np.ndarray, label: np.ndarray, conf: np.ndarray, rng: np.random.Generator) -> Tensors: ...


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    height: int
    width: int


def sample_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Box:
    """A random box covering `scale` of the area with aspect (w/h) in `ratio`; centre crop fallback."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return Box(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return Box((height - h) // 2, (width - w) // 2, h, w)


def nearest_indices(start: int, length: int, out: int) -> np.ndarray:
    """Source indices of `out` output pixels over [start, start + length): centre-aligned nearest."""
    idx = np.floor((np.arange(out) + 0.5) * (length / out)).astype(np.int64)
    return start + np.clip(idx, 0, length - 1)


def crop_resize(
    image: np.ndarray, label: np.ndarray, conf: np.ndarray, box: Box, size: tuple[int, int], flip: bool
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Crop `box` from all three maps, resize to `size` (H, W) and optionally flip horizontally."""
    out_h, out_w = size
    crop = image[box.top: box.top + box.height, box.left: box.left + box.width]
    img = torch.from_numpy(np.array(crop, copy=True)).permute(2, 0, 1).float().div_(255.0)  # (3, h, w)
    if (box.height, box.width) != (out_h, out_w):
        shrinking = box.height > out_h or box.width > out_w
        img = F.interpolate(img[None], size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=shrinking)[0]
        img = img.clamp_(0.0, 1.0)
    rows = nearest_indices(box.top, box.height, out_h)
    cols = nearest_indices(box.left, box.width, out_w)
    lab = label[np.ix_(rows, cols)]
    cf = conf[np.ix_(rows, cols)]
    if flip:
        img = img.flip(-1)
        lab = lab[:, ::-1]
        cf = cf[:, ::-1]
    return img, lab, cf


def _to_tensors(img: torch.Tensor, lab: np.ndarray, cf: np.ndarray, mean, std) -> Tensors:
    if mean is not None:
        m = torch.tensor(mean, dtype=img.dtype).view(3, 1, 1)
        s = torch.tensor(std, dtype=img.dtype).view(3, 1, 1)
        img = (img - m) / s
    label = torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))
    confidence = torch.from_numpy(np.ascontiguousarray(cf).astype(np.float32) / 255.0)
    return img.contiguous(), label, confidence


@dataclass
class RandomResizedCropFlip:
    """Training augmentation: random resized crop to `size` (H, W), then a horizontal flip."""

    size: tuple[int, int]
    scale: tuple[float, float] = (0.25, 1.0)  # share of the image area the crop covers
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect (width / height)
    flip_prob: float = 0.5
    mean: Optional[tuple[float, float, float]] = None  # normalisation; None = keep 0..1
    std: Optional[tuple[float, float, float]] = None

    def __call__(self, image: np.ndarray, label: np.ndarray, conf: np.ndarray, rng: np.random.Generator) -> Tensors:
        _check_shapes(image, label, conf)
        box = sample_crop_box(label.shape[0], label.shape[1], self.scale, self.ratio, rng)
        flip = bool(rng.random() < self.flip_prob)
        return _to_tensors(*crop_resize(image, label, conf, box, self.size, flip), self.mean, self.std)


@dataclass
class Resize:
    """Deterministic resize of the whole image to `size` (H, W): validation, or no augmentation."""

    size: tuple[int, int]
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None

    def __call__(self, image: np.ndarray, label: np.ndarray, conf: np.ndarray, rng: np.random.Generator) -> Tensors:
        _check_shapes(image, label, conf)
        box = Box(0, 0, label.shape[0], label.shape[1])
        return _to_tensors(*crop_resize(image, label, conf, box, self.size, False), self.mean, self.std)


def _check_shapes(image: np.ndarray, label: np.ndarray, conf: np.ndarray) -> None:
    if image.shape[:2] != label.shape or conf.shape != label.shape:
        raise ValueError(f"image {image.shape[:2]}, label {label.shape} and confidence {conf.shape} sizes differ")
