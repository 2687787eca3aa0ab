"""Sliding-window crop plan (mmseg's `slide_inference`, as the authors use it)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Crop:
    y1: int
    y2: int
    x1: int
    x2: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y2 - self.y1, self.x2 - self.x1


def _starts(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    grids = max(size - crop + stride - 1, 0) // stride + 1
    spans = []
    for g in range(grids):
        end = min(g * stride + crop, size)
        spans.append((max(end - crop, 0), end))  # last crop is moved back inside the image
    return spans


def plan_crops(height: int, width: int, crop: int, stride: int) -> list[Crop]:
    """Crops covering the image; `crop == 0` means the whole image as one crop.
    An image smaller than the crop gives a smaller crop (no padding), as in the reference."""
    if crop <= 0:
        return [Crop(0, height, 0, width)]
    return [
        Crop(y1, y2, x1, x2)
        for y1, y2 in _starts(height, crop, stride)
        for x1, x2 in _starts(width, crop, stride)
    ]
