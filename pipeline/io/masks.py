"""Prediction + confidence -> label PNG, confidence PNG and per-class pixel counts.

Label PNGs hold one class index per pixel: uint8 while class indices fit below 255, uint16 ("I;16")
beyond; the type's maximum marks ignored pixels (confidence < labels.min_confidence). uint8 labels
are grayscale ("L") by default, or with `labels.png_mode: palette` indexed ("P") with the
vocabulary's colours (ignore = black), so a label file looks right in any image viewer; the pixel
values are the same class indices either way and every reader decodes both alike.

The confidence arrives as float probabilities (engines that keep floats) or already quantised to
uint8 round(255 p) on the engine's device (the Segmenter), with the ignore mask and mean computed
there from the float values.

Stored size (docs/host_budget.md). Labels are stored with their long side at most
`labels.max_side` and the confidence at most `labels.confidence_max_side` (0: the image's size),
aspect kept (`stored_size`): the engine's information is at its inference size (336 short side),
and full-size PNGs of 2-12 MP photos cost more host time and bytes than the GPU's work. The
manifest keeps the image's width and height; every reader brings a smaller map back to the
image's size by nearest neighbour (`to_image_size`), and the class pixel counts are scaled to the
image's pixels.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

UINT8_MAX_CLASSES = 255  # indices 0..254; 255 is the ignore value


@dataclass(frozen=True)
class LabelFormat:
    num_classes: int
    min_confidence: float  # labels.min_confidence
    compression: int  # io.png_compression (zlib level)
    # labels.png_mode "palette": RGB per class index for "P" label PNGs; None = grayscale "L"
    palette: Optional[tuple[tuple[int, int, int], ...]] = None
    max_side: int = 0  # labels.max_side: longest side of a stored label map (0: the image's size)
    confidence_max_side: int = 0  # labels.confidence_max_side: the same for the confidence map

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


def encode_masks(pred: np.ndarray, confidence: np.ndarray, fmt: LabelFormat,
                 ignored: Optional[np.ndarray] = None, mean_confidence: Optional[float] = None,
                 image_size: Optional[tuple[int, int]] = None) -> EncodedMasks:
    """pred: (h, w) int class indices; confidence: (h, w) float probability of the chosen class, or
    uint8 round(255 p) with `ignored` (p < min_confidence; None = nothing ignored) and `mean_confidence`
    computed from the float values where they were (the engine's device). (h, w) is the stored
    label size of an image of `image_size` (H, W; default (h, w)): `stored_size(H, W, max_side)`,
    a larger map is shrunk to it here (nearest). Class and ignored pixel counts are of the image."""
    image_size = tuple(image_size or np.shape(pred))
    label_size = stored_size(*image_size, fmt.max_side)
    if tuple(np.shape(pred)) != label_size:  # an engine that labels at the image size
        pred = resize_nearest(np.asarray(pred), *label_size)
        confidence = resize_nearest(np.asarray(confidence), *label_size)
        ignored = resize_nearest(np.asarray(ignored), *label_size) if ignored is not None else None
    if pred.shape != confidence.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and confidence {confidence.shape} must be the same (H, W)")
    if confidence.dtype == np.uint8:
        conf_u8 = confidence
        if ignored is None:
            ignored = np.zeros(pred.shape, bool) if fmt.min_confidence <= 0 else conf_u8 < fmt.min_confidence * 255
        mean = float(mean_confidence) if mean_confidence is not None else float(conf_u8.mean()) / 255 if conf_u8.size else 0.0
    else:
        confidence = np.asarray(confidence, dtype=np.float32)
        ignored = confidence < fmt.min_confidence  # (H, W) bool
        conf_u8 = np.rint(np.clip(confidence, 0.0, 1.0) * 255.0).astype(np.uint8)
        mean = float(confidence.mean()) if confidence.size else 0.0
    labels = pred.astype(fmt.dtype)
    if ignored.any():
        labels[ignored] = fmt.ignore_index
    counts = np.bincount(labels.ravel(), minlength=fmt.ignore_index + 1)
    # the classes' counts and the ignored count last, scaled to the image's pixels
    counts = scale_counts(np.append(counts[: fmt.num_classes], counts[fmt.ignore_index]), image_size[0] * image_size[1])
    present = np.flatnonzero(counts[: fmt.num_classes])
    conf_size = stored_size(*image_size, min(s for s in (fmt.max_side, fmt.confidence_max_side) if s > 0)
                            if fmt.max_side > 0 or fmt.confidence_max_side > 0 else 0)
    return EncodedMasks(
        label_png=_png(labels, fmt.compression, fmt.palette),
        conf_png=_png(resize_nearest(conf_u8, *conf_size), fmt.compression),
        mean_confidence=mean,
        ignored_pixels=int(counts[-1]),
        classes=[int(c) for c in present],
        class_pixels=[int(counts[c]) for c in present],
    )


def stored_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) of a map stored for an image of (height, width): the long side brought down to
    `max_side` (0: no cap; never up), the short side rounded, at least 1."""
    if max_side <= 0 or max(height, width) <= max_side:
        return int(height), int(width)
    scale = max_side / max(height, width)
    if height >= width:
        return max_side, max(1, int(width * scale + 0.5))
    return max(1, int(height * scale + 0.5)), max_side


def resize_nearest(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) -> (height, width) by nearest neighbour at pixel centres (source index floor((i + 0.5)
    * h / height)); the array itself when the size is already that."""
    if arr.shape[:2] == (height, width):
        return arr
    rows = ((np.arange(height) + 0.5) * (arr.shape[0] / height)).astype(np.intp)
    cols = ((np.arange(width) + 0.5) * (arr.shape[1] / width)).astype(np.intp)
    return arr[rows[:, None], cols]


def to_image_size(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """A stored label or confidence map at its image's (height, width), for readers: a map stored
    smaller (labels.max_side, labels.confidence_max_side) is resized back by nearest neighbour; a
    map of any other size is returned as it is, for the caller's size check to report."""
    if arr.shape[:2] == (height, width) or not is_stored_size(arr.shape[:2], height, width, slack=1):
        return arr
    return resize_nearest(arr, height, width)


def is_stored_size(map_size: tuple[int, int], height: int, width: int, slack: int = 0) -> bool:
    """Whether a map of (h, w) is the image's (height, width) or `stored_size` of it for its long
    side (verify: exactly); `slack` pixels of rounding allowed (a confidence map brought to the
    size of the capped labels, not of the image, may round its short side the other way)."""
    h, w = (int(v) for v in map_size)
    if (h, w) == (height, width):
        return True
    if max(h, w) >= max(height, width):
        return False
    eh, ew = stored_size(height, width, max(h, w))
    return abs(eh - h) <= slack and abs(ew - w) <= slack


def scale_counts(counts: np.ndarray, pixels: int) -> np.ndarray:
    """Pixel counts of a stored map scaled to an image of `pixels` pixels: integers summing to exactly
    `pixels` (largest remainders), so a manifest's class_pixels still add up to width x height."""
    total = int(counts.sum())
    if total == pixels or total == 0:
        return counts
    exact = counts.astype(np.float64) * (pixels / total)
    scaled = np.floor(exact).astype(np.int64)
    short = pixels - int(scaled.sum())
    if short > 0:
        scaled[np.argsort(scaled - exact, kind="stable")[:short]] += 1  # largest remainders first
    return scaled


def label_format(engine: Any, cfg: Any) -> LabelFormat:
    """The label format of a run: the engine's class count, `labels.*` and `io.png_compression`."""
    palette = None
    if cfg.labels.png_mode == "palette":
        palette = label_palette(engine.vocabulary.colors, engine.num_classes)
    return LabelFormat(engine.num_classes, cfg.labels.min_confidence, cfg.io.png_compression, palette,
                       cfg.labels.max_side, cfg.labels.confidence_max_side)


def label_palette(colors: Sequence[Sequence[int]], num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The "P" palette for uint8 labels: class colours, black for the rest (the ignore value)."""
    if num_classes > UINT8_MAX_CLASSES:
        raise ValueError(f"labels.png_mode palette needs at most {UINT8_MAX_CLASSES} classes (uint8 labels); "
                         f"this vocabulary has {num_classes}: use png_mode gray")
    return tuple(tuple(int(v) for v in colors[i][:3]) for i in range(num_classes))


def _png(arr: np.ndarray, compression: int, palette: Optional[Sequence[Sequence[int]]] = None) -> bytes:
    # uint16 arrays become Pillow mode "I;16", stored as 16-bit grayscale PNG.
    img = Image.fromarray(arr)
    if palette is not None:  # the same bytes, read as palette indices
        img = Image.frombuffer("P", img.size, np.ascontiguousarray(arr, dtype=np.uint8), "raw", "P", 0, 1)
        img.putpalette([v for rgb in palette for v in rgb])
    buf = io.BytesIO()
    # zlib's run-length strategy: mask rows are long runs; measured (jobs/host_options.py, 3 MP, level
    # 1) 2.5x faster and 3x smaller label PNGs than the default strategy, confidence PNGs 20% faster
    # and 7% smaller. The pixels are the same; any PNG reader decodes it.
    img.save(buf, format="PNG", compress_level=compression, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def image_size(data: bytes) -> Optional[tuple[int, int]]:
    """(height, width) of an encoded image after EXIF orientation, from its header only (no pixel
    decoding); None when it cannot be read. For readers that bring stored maps to the image size."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)  # 5-8: rotated by 90 degrees, sides swap
    except (OSError, ValueError, SyntaxError):
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
