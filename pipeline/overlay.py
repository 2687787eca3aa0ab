"""Colour overlays of label maps, for quick looks (`predict`) and reports."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def colorize(pred: np.ndarray, colors: Sequence[tuple[int, int, int]], ignore_index: int | None = None) -> np.ndarray:
    """Label map (H, W) -> RGB uint8 (H, W, 3); the ignore value (if any) is drawn black."""
    lut = np.zeros((max(len(colors), int(pred.max(initial=0)) + 1), 3), dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    if ignore_index is not None and ignore_index < len(lut):
        lut[ignore_index] = 0
    return lut[pred]


def blend(image: np.ndarray, pred: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = 0.5,
          ignore_index: int | None = None) -> np.ndarray:
    """Image (H, W, 3) uint8 with the coloured labels laid over it at `alpha`."""
    color = colorize(pred, colors, ignore_index).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
