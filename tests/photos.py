"""Phone-folder-like image files for tests: the encodings and modes a real photo folder holds,
small. Each maker returns encoded bytes; `decode_rgb` of them is what the labeler sees."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene(w: int, h: int, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: flat regions plus a little noise, so labels are not pure noise."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[: h // 2] = (40, 90, 200)
    arr[h // 2:, : w // 2] = (30, 150, 40)
    arr[h // 2:, w // 2:] = (200, 60, 50)
    noise = rng.integers(-10, 11, size=arr.shape)
    return np.clip(arr.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def exif_rotated_jpeg(w: int, h: int, seed: int = 0, orientation: int = 6) -> bytes:
    """Stored w x h with EXIF orientation 6: viewers (and the labeler) see it h x w, rotated."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(scene(w, h, seed)), "JPEG", quality=90, exif=exif)


def jpeg(w: int, h: int, seed: int = 0, **kw) -> bytes:
    return _save(Image.fromarray(scene(w, h, seed)), "JPEG", quality=90, **kw)


def progressive_jpeg(w: int, h: int, seed: int = 0) -> bytes:
    return jpeg(w, h, seed, progressive=True)


def png(w: int, h: int, seed: int = 0) -> bytes:
    return _save(Image.fromarray(scene(w, h, seed)), "PNG")


def rgba_png(w: int, h: int, seed: int = 0) -> bytes:
    rgba = np.dstack([scene(w, h, seed), np.full((h, w), 255, np.uint8)])
    rgba[: h // 3, :, 3] = 0  # a transparent band: the labeler sees white there
    return _save(Image.fromarray(rgba, "RGBA"), "PNG")


def gray_png(w: int, h: int, seed: int = 0) -> bytes:
    return _save(Image.fromarray(scene(w, h, seed)[..., 1], "L"), "PNG")


def sixteen_bit_png(w: int, h: int) -> bytes:
    """I;16 gradient over the whole 0..65535 range: `.convert('RGB')` clips it to mostly white."""
    values = np.linspace(0, 65535, w * h).reshape(h, w).astype(np.uint16)
    return _save(Image.frombytes("I;16", (w, h), values.astype("<u2").tobytes()), "PNG")


def webp(w: int, h: int, seed: int = 0) -> bytes:
    return _save(Image.fromarray(scene(w, h, seed)), "WEBP", quality=90)


def tiff(w: int, h: int, seed: int = 0) -> bytes:
    return _save(Image.fromarray(scene(w, h, seed)), "TIFF")


def gif(w: int, h: int, seed: int = 0) -> bytes:
    return _save(Image.fromarray(scene(w, h, seed)).convert("P"), "GIF")


def truncated_jpeg(w: int, h: int, seed: int = 0) -> bytes:
    data = jpeg(w, h, seed)
    return data[: len(data) // 2]


# name -> (bytes maker, decoded (h, w)): the images of a phone folder that the labeler accepts
def phone_folder(size: int = 48) -> dict[str, bytes]:
    """Relative path -> bytes of a phone-like photo folder (small images; odd files included)."""
    s = size
    return {
        "IMG_0001.JPG": exif_rotated_jpeg(s + 16, s, 1),  # stored 64x48, seen 48x64
        "IMG_0002.jpeg": progressive_jpeg(s, s + 8, 2),
        "IMG_0003.JPG": jpeg(s + 8, s, 3),  # baseline RGB, no EXIF: copied as is
        "2024 holiday/CHELSEA.JPG": jpeg(s, s, 4),
        "2024 holiday/beach.day.2.jpg": jpeg(s + 4, s, 5),  # dots: key beach_day_2
        "2024 holiday/sub/sticker.png": rgba_png(s, s, 6),
        "scans/page 1.png": gray_png(s, s + 4, 7),
        "scans/raw16.png": sixteen_bit_png(s, s),
        "web/cat.webp": webp(s, s, 8),
        "web/scan.tif": tiff(s, s, 9),
        "web/anim.gif": gif(s, s, 10),
        "broken/truncated.jpg": truncated_jpeg(s, s, 11),
        "broken/empty.jpg": b"",
        "icon.png": png(8, 8, 12),
        "notes.txt": b"not an image",
        "IMG_0001.AAE": b"<?xml version='1.0'?><plist/>",
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "._IMG_0001.JPG": b"\x00\x05\x16\x07 resource fork",
    }


def write_folder(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
