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


def with_legend(overlay: np.ndarray, pred: np.ndarray, names: Sequence[str], colors: Sequence[tuple[int, int, int]],
                max_items: int = 12) -> np.ndarray:
    """The overlay with a white band below it: a swatch and the name of each class present, the
    largest first (at most `max_items`, then "+N more"). Names are drawn as plain text."""
    from PIL import Image, ImageDraw, ImageFont

    counts = np.bincount(pred.ravel().astype(np.int64), minlength=len(names))[: len(names)]
    present = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i]]
    width = overlay.shape[1]
    font = ImageFont.load_default()
    row_h, pad = 14, 4
    # Lay the entries out left to right, wrapping at the image width.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, x, rows = [], pad, 1
    for i in present[:max_items]:
        text = f"{names[i]} {100 * counts[i] / pred.size:.0f}%"
        w = 12 + int(probe.textlength(text, font=font)) + 10
        if x + w > width and x > pad:
            x, rows = pad, rows + 1
        items.append((x, rows - 1, i, text))
        x += w
    more = len(present) - len(items)
    band = Image.new("RGB", (width, rows * row_h + 2 * pad + (row_h if more else 0)), "white")
    draw = ImageDraw.Draw(band)
    for x, row, i, text in items:
        y = pad + row * row_h
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=tuple(colors[i]), outline="black")
        draw.text((x + 12, y), text, fill="black", font=font)
    if more:
        draw.text((pad, pad + rows * row_h), f"+{more} more classes", fill="black", font=font)
    return np.concatenate([overlay, np.asarray(band)], axis=0)
