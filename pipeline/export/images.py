"""Images as the labeler saw them, in one file format per export.

The labels were made on `pipeline.io.decode`'s pixels: EXIF orientation applied, RGB (alpha over
white, 16-bit scaled to 8, gray replicated). A trainer reading the original bytes would see other
pixels (a rotated photo, a white-washed 16-bit PNG, an alpha channel), so exports write those
decoded pixels, with one suffix for every sample:

- `jpg` (default): a source that already is a baseline RGB JPEG with no EXIF rotation is copied
  byte for byte (every reader decodes it to the labeler's pixels); anything else is re-encoded at
  quality 95 with 4:4:4 chroma (no EXIF block, so no reader rotates it again).
- `png`: every image encoded losslessly from the decoded pixels.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.io.decode import decode_rgb

IMAGE_FORMATS = ("jpg", "png")
JPEG_QUALITY = 95
# zlib level; a 12 MP photo: 6.1 s and 23.8 MB (Pillow's default 6: 14.0 s and 25.5 MB; medians of 3)
PNG_LEVEL = 1


@dataclass(frozen=True)
class ExportImage:
    data: bytes
    suffix: str  # ".jpg" | ".png": one per export
    size: tuple[int, int]  # (H, W), orientation applied: must equal the label's
    copied: bool  # the source bytes, untouched


def export_image(data: bytes, image_format: str = "jpg") -> ExportImage:
    """The labeler's pixels of `data` as `image_format`; raises `SampleError` when they do not decode."""
    if image_format == "jpg":
        size = _copyable_jpeg_size(data)
        if size is not None:
            return ExportImage(data, ".jpg", size, True)
    rgb = decode_rgb(data)
    return ExportImage(encode_rgb(rgb, image_format), f".{image_format}", rgb.shape[:2], False)


def encode_rgb(rgb: np.ndarray, image_format: str) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    if image_format == "jpg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        img.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def _copyable_jpeg_size(data: bytes):
    """(H, W) when `data` is a baseline RGB JPEG without EXIF rotation, else None (from the header)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode != "RGB" or "progressive" in img.info or "progression" in img.info:
                return None
            if img.getexif().get(0x0112, 1) != 1:  # Orientation: any transform, not only the swapping ones
                return None
            width, height = img.size  # no decode: these bytes decoded when they were labeled
            return height, width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return None


__all__ = ["IMAGE_FORMATS", "ExportImage", "encode_rgb", "export_image"]
