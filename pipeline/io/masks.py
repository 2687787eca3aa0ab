"""Prediction + confidence -> label PNG, confidence PNG and per-class pixel counts.

Label PNGs are grayscale, one class index per pixel: uint8 ("L") while class indices fit below 255,
uint16 ("I;16") beyond; the type's maximum marks ignored pixels (confidence < labels.min_confidence).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

UINT8_MAX_CLASSES = 255  # indices 0..254; 255 is the ignore value


@dataclass(frozen=True)
class LabelFormat:
    num_classes: int
    min_confidence: float  # labels.min_confidence
    compression: int  # io.png_compression (zlib level)

    @property
    def dtype(self) -> type:
        return np.uint8 if self.num_classes <= UINT8_MAX_CLASSES else np.uint16

    @property
    def dtype_name(self) -> str:
        return "uint8" if self.dtype is np.uint8 else "uint16"

    @property
    def ignore_index(self) -> int:
        return int(np.iinfo(self.dtype).max)


@dataclass
class EncodedMasks:
    label_png: bytes
    conf_png: bytes
    mean_confidence: float
    ignored_pixels: int
    classes: list[int]  # present among non-ignored pixels, ascending
    class_pixels: list[int]  # count per entry of `classes`


def encode_masks(pred: np.ndarray, confidence: np.ndarray, fmt: LabelFormat) -> EncodedMasks:
    """pred: (H, W) int class indices; confidence: (H, W) float probability of the chosen class."""
    if pred.shape != confidence.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and confidence {confidence.shape} must be the same (H, W)")
    ignored = confidence < fmt.min_confidence  # (H, W) bool
    labels = pred.astype(fmt.dtype)
    labels[ignored] = fmt.ignore_index
    counts = np.bincount(pred[~ignored].ravel(), minlength=fmt.num_classes)
    present = np.flatnonzero(counts)
    conf_u8 = np.rint(np.clip(confidence, 0.0, 1.0) * 255.0).astype(np.uint8)
    return EncodedMasks(
        label_png=_png(labels, fmt.compression),
        conf_png=_png(conf_u8, fmt.compression),
        mean_confidence=float(confidence.mean()) if confidence.size else 0.0,
        ignored_pixels=int(ignored.sum()),
        classes=[int(c) for c in present],
        class_pixels=[int(counts[c]) for c in present],
    )


def _png(arr: np.ndarray, compression: int) -> bytes:
    # uint16 arrays become Pillow mode "I;16", stored as 16-bit grayscale PNG.
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compression)
    return buf.getvalue()

