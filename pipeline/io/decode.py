"""Encoded image bytes -> RGB uint8 array, or a typed `SampleError`.

Mode policy (every conversion is recorded as the sample's `source_mode`):

| Pillow mode                | action                                                   |
|----------------------------|----------------------------------------------------------|
| RGB                        | as is                                                    |
| 1, L                       | gray replicated to RGB                                   |
| LA, La, RGBA, RGBa, PA     | alpha-composited over white (transparent = white)        |
| P                          | palette expanded (over white when it has transparency)   |
| CMYK, YCbCr, RGBX          | Pillow's conversion to RGB                               |
| I;16, I;16B, I;16L, I;16N  | scaled to 8 bits (round(v / 257)), then gray to RGB      |
| I (32-bit int)             | as I;16 when every value is in 0..65535, else error      |
| F, HSV, LAB, anything else | error `unsupported_mode` (no safe, meaning-preserving map) |

Formats (docs/security.md): only raster decoders are ever reached, `Image.open(formats=...)`: the
formats of the extensions in `io.image_extensions` (`decode_formats`; bytes of any of them are
accepted under any of those extensions, as misnamed files are common), all of RASTER_FORMATS for
the readers of a finished output. Anything else, such as PostScript in a `.jpg` (Pillow's EPS
plugin would start Ghostscript), is an `unsupported_format` row; unrecognised bytes are `corrupt`.

White, not black, under transparency: cut-out objects are authored to be seen on white pages, and
a black background makes dark objects vanish into it.

JPEG draft mode (`io.jpeg_draft`, opt-in): when the limits carry the engine's inference size,
libjpeg scales a JPEG by 1/2, 1/4 or 1/8 in the DCT domain while decoding, to the smallest scale
that still covers that size on both sides (so the engine only ever downsamples). It changes
pixels slightly (labels agree on ~99.6% of pixels, docs/real_photos.md), hence opt-in. The
limits, the mode policy and EXIF orientation are judged as without it, and `Decoded.size` is
the full (oriented) size, at which the labels are made.
"""
from __future__ import annotations

import functools
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from pipeline.io.layout import ErrorKind
from pipeline.io.records import SampleError

log = logging.getLogger(__name__)

# Our own pixel limit (io.max_image_pixels) is checked on the header; Pillow's warning for the
# same condition would only repeat it once per image from many threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}
GRAY_MODES = {"1", "L"}
DIRECT_MODES = {"CMYK", "YCbCr", "RGBX"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that exchange width and height

# (height, width) of the full, oriented image -> the (height, width) the engine infers at
InferenceSize = Callable[[int, int], tuple[int, int]]

# error kinds (the prefix of the manifest `error` column)
CORRUPT = ErrorKind.CORRUPT
TOO_LARGE = ErrorKind.TOO_LARGE
TOO_SMALL = ErrorKind.TOO_SMALL
UNSUPPORTED_MODE = ErrorKind.UNSUPPORTED_MODE
UNSUPPORTED_FORMAT = ErrorKind.UNSUPPORTED_FORMAT
NO_IMAGE = ErrorKind.NO_IMAGE

# Pillow raster formats by file extension. Vector and document formats (EPS, PDF, WMF) and
# container formats with code-like parsers are left out on purpose: their bytes are never decoded.
FORMATS_BY_EXTENSION: dict[str, tuple[str, ...]] = {
    "jpg": ("JPEG",), "jpeg": ("JPEG",), "jpe": ("JPEG",), "jfif": ("JPEG",),  # phones' MPO too
    "png": ("PNG",), "webp": ("WEBP",), "bmp": ("BMP",), "dib": ("BMP",), "gif": ("GIF",),
    "tif": ("TIFF",), "tiff": ("TIFF",), "ppm": ("PPM",), "pgm": ("PPM",), "pbm": ("PPM",), "pnm": ("PPM",),
    "tga": ("TGA",), "qoi": ("QOI",), "avif": ("AVIF",), "jp2": ("JPEG2000",), "j2k": ("JPEG2000",),
}
RASTER_FORMATS = tuple(sorted({f for formats in FORMATS_BY_EXTENSION.values() for f in formats}))


def decode_formats(extensions: list[str]) -> tuple[str, ...]:
    """The Pillow formats decoded for `io.image_extensions` (unknown or non-raster ones add none)."""
    found = {f for ext in extensions for f in FORMATS_BY_EXTENSION.get(ext.lower().lstrip("."), ())}
    return tuple(sorted(found))


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int  # io.max_image_pixels: refuse before decoding anything bigger
    min_side: int  # the engine's patch size: a shorter side leaves no whole patch
    draft_to: Optional[InferenceSize] = None  # io.jpeg_draft: decode JPEGs no larger than needed for this
    formats: tuple[str, ...] = RASTER_FORMATS  # Pillow formats opened (decode_formats(io.image_extensions))


@dataclass
class Decoded:
    rgb: np.ndarray  # (h, w, 3) uint8, EXIF orientation applied; smaller than `size` when drafted
    source_mode: str  # Pillow mode of the stored image
    size: tuple[int, int]  # (H, W) of the full image, EXIF orientation applied: the labels' size


_NO_LIMITS = DecodeLimits(max_pixels=2**62, min_side=0)


def configure_pillow(max_pixels: int) -> None:
    """Let Pillow's own bomb check agree with ours; it would otherwise refuse at 2x its default."""
    Image.MAX_IMAGE_PIXELS = max(max_pixels, Image.MAX_IMAGE_PIXELS or 0)


def decode_image(data: bytes, limits: DecodeLimits) -> Decoded:
    img = _open(data, limits)
    width, height = img.size
    if width * height > limits.max_pixels:
        raise SampleError(TOO_LARGE, f"{width}x{height} = {width * height} pixels exceeds io.max_image_pixels "
                                     f"({limits.max_pixels})")
    if min(width, height) < limits.min_side:
        raise SampleError(TOO_SMALL, f"{width}x{height} has a side shorter than one patch ({limits.min_side} px)")
    if limits.draft_to is not None:
        _draft(img, limits.draft_to)
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise SampleError(TOO_LARGE, _bomb(exc, limits)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or damaged pixel data
        raise SampleError(CORRUPT, f"cannot decode pixels: {exc}") from exc
    img, swapped = _exif_transpose(img)
    mode = img.mode
    size = (width, height) if swapped else (height, width)  # the header's, not the (drafted) pixels'
    return Decoded(rgb=np.ascontiguousarray(to_rgb(img)), source_mode=mode, size=size)


def decode_rgb(data: bytes) -> np.ndarray:
    """The pixels the labeler saw, for readers of a finished output (training loader, evaluation,
    report): the same opening, EXIF orientation and mode policy as `decode_image`, without the
    labeling limits (the image was accepted when it was labeled). A `SampleError` when it does not
    decode."""
    return decode_image(data, _NO_LIMITS).rgb


def to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 per the mode policy above."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode in GRAY_MODES or mode in DIRECT_MODES:
        return np.asarray(img.convert("RGB"))
    if mode == "P":
        has_alpha = "transparency" in img.info
        return _over_white(img.convert("RGBA")) if has_alpha else np.asarray(img.convert("RGB"))
    if mode in ALPHA_MODES:
        return _over_white(img.convert("RGBA"))
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        return _sixteen_bit_to_rgb(img)
    raise SampleError(UNSUPPORTED_MODE, f"Pillow mode {mode!r} has no safe conversion to RGB")


def _bomb(exc: Exception, limits: DecodeLimits) -> str:
    # Pillow's own text quotes its limit (twice MAX_IMAGE_PIXELS), not the key the user can change.
    return f"more pixels than io.max_image_pixels ({limits.max_pixels}): {exc}"


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=openable_formats(limits.formats))
    except Image.DecompressionBombError as exc:
        raise SampleError(TOO_LARGE, _bomb(exc, limits)) from exc
    except UnidentifiedImageError as exc:
        other = sniff_format(data)
        if other is not None:
            raise SampleError(UNSUPPORTED_FORMAT, f"{other} data is not decoded (accepted: "
                                                  f"{', '.join(openable_formats(limits.formats)) or 'none'})") from None
        raise SampleError(CORRUPT, "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise SampleError(CORRUPT, f"cannot read image header: {exc}") from exc


@functools.lru_cache(maxsize=None)
def openable_formats(formats: tuple[str, ...]) -> list[str]:
    """`formats` that this Pillow build can open (AVIF and JPEG 2000 depend on optional libraries)."""
    Image.init()
    return [f for f in formats if f in Image.OPEN]


def sniff_format(data: bytes) -> Optional[str]:
    """The Pillow format whose signature `data` starts with, by the plugins' prefix tests alone
    (no plugin opens anything); None when none matches."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # noqa: BLE001 - a prefix test that trips on odd bytes says "not this one"
            continue
    return None


def open_png(data: bytes) -> Image.Image:
    """A PNG of a finished output (label and confidence masks), by the PNG decoder only."""
    return Image.open(io.BytesIO(data), formats=["PNG"])


def _exif_transpose(img: Image.Image) -> tuple[Image.Image, bool]:
    """The image with its EXIF orientation applied, and whether that exchanged width and height."""
    try:
        return ImageOps.exif_transpose(img), _orientation(img) in SWAPPING_ORIENTATIONS
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
        # A damaged EXIF block says nothing reliable about orientation: keep the stored one.
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return img, False


def _orientation(img: Image.Image) -> int:
    return img.getexif().get(ExifTags.Base.Orientation, 1)  # what `ImageOps.exif_transpose` reads


def _draft(img: Image.Image, inference_size: InferenceSize) -> None:
    """Ask libjpeg for the smallest DCT scale whose result still covers the engine's inference
    size on both sides (Pillow picks the largest 1/s with s <= stored // requested per side)."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile):  # also MPO, the phones' JPEG variant
        return
    width, height = img.size  # stored, before EXIF orientation
    try:
        swapped = _orientation(img) in SWAPPING_ORIENTATIONS
    except Exception:  # noqa: BLE001 - unreadable EXIF: decode exactly, as nothing is known of it
        return
    oriented = (width, height) if swapped else (height, width)
    need_h, need_w = inference_size(*oriented)
    if swapped:
        need_h, need_w = need_w, need_h
    if need_h < height or need_w < width:  # the engine shrinks it: decoding less is worth it
        img.draft(img.mode, (max(1, need_w), max(1, need_h)))  # its own mode: never a conversion


def _over_white(rgba: Image.Image) -> np.ndarray:
    arr = np.asarray(rgba).astype(np.float32)  # (H, W, 4)
    alpha = arr[..., 3:4] / 255.0
    out = arr[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.rint(out).astype(np.uint8)


def _sixteen_bit_to_rgb(img: Image.Image) -> np.ndarray:
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise SampleError(UNSUPPORTED_MODE, f"Pillow mode {img.mode!r} with values outside 0..65535")
    gray = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255 exactly
    return np.repeat(gray[..., None], 3, axis=2)
