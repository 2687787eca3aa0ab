"""Colour overlays of label maps, for quick looks (`predict`) and reports."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def color_lut(colors: Sequence[tuple[int, int, int]], size: int, ignore_index: int | None = None) -> np.ndarray:
    """(max(size, classes), 3) uint8 colour table; indices without a class, and the ignore value, are black."""
    lut = np.zeros((max(len(colors), size), 3), dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    if ignore_index is not None and ignore_index < len(lut):
        lut[ignore_index] = 0
    return lut


def colorize(pred: np.ndarray, colors: Sequence[tuple[int, int, int]], ignore_index: int | None = None) -> np.ndarray:
    """Label map (H, W) -> RGB uint8 (H, W, 3); the ignore value (if any) is drawn black."""
    return color_lut(colors, int(pred.max(initial=0)) + 1, ignore_index)[pred]


def blend(image: np.ndarray, pred: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = 0.5,
          ignore_index: int | None = None) -> np.ndarray:
    """Image (H, W, 3) uint8 with the coloured labels laid over it at `alpha`."""
    return blend_lut(image, pred, color_lut(colors, int(pred.max(initial=0)) + 1, ignore_index), alpha)


def blend_lut(image: np.ndarray | None, label: np.ndarray, lut: np.ndarray, alpha: float) -> np.ndarray:
    """Blend `lut[label]` colours over `image` at `alpha`; the colour map alone when there is no image."""
    colors = lut[np.clip(label.astype(np.int64), 0, len(lut) - 1)].astype(np.float32)
    if image is None:
        return colors.astype(np.uint8)
    blended = image.astype(np.float32) * (1 - alpha) + colors * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
