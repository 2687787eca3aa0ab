"""Builders of hostile tar shards (threat 7 of docs/security.md), shared by the tests and by
jobs/hostile_input.py's figures. Each is built in a few MiB of memory at most."""
from __future__ import annotations

import bz2
import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

BLOCK = 512


def png_bytes(seed: int = 0, size: tuple[int, int] = (48, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    pad = (-len(data)) % BLOCK
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + b"\0" * pad


def huge_pax_keys(path: Path, count: int = 10, key_bytes: int = 20 << 20) -> Path:
    """One ordinary sample, then `count` samples whose key (a PAX `path` record) is `key_bytes` long."""
    with open(path, "wb") as f:
        f.write(_member("ok.png", png_bytes()))
        for i in range(count):
            f.write(_member(f"{i}" + "k" * (key_bytes - 1) + ".png", png_bytes(i + 1)))
        f.write(b"\0" * (2 * BLOCK))
    return path


def bomb(path: Path, inflated: int = 1 << 30, compress=bz2) -> Path:
    """A compressed tar: one ordinary sample, then one member of `inflated` zero bytes (not an
    image extension, so a reader skips it by reading through it), then one more sample. Built in
    milliseconds: gzip and bzip2 readers take concatenated streams, so one compressed 4 MiB block
    of zeros is repeated."""
    block = 1 << 22
    assert inflated % block == 0
    info = tarfile.TarInfo("filler.bin")
    info.size = inflated
    with open(path, "wb") as raw:
        raw.write(compress.compress(_member("ok.png", png_bytes()) + info.tobuf(tarfile.PAX_FORMAT)))
        zeros = compress.compress(b"\0" * block)
        for _ in range(inflated // block):
            raw.write(zeros)
        raw.write(compress.compress(_member("after.png", png_bytes(3)) + b"\0" * (2 * BLOCK)))
    return path


# Keys a web crawl can produce; each must become an unsafe_key row, never a file name.
HOSTILE_KEYS = {
    "newline": "photo\nevil",
    "carriage_return": "photo\revil",
    "line_separator": "photo\u2028evil",
    "nul_escape": "photo\x1b[31m",
    "bidi_override": "photo\u202egpj.exe",
    "long_component": "d/" + "x" * 260,
    "long_key": "/".join(["y" * 150] * 10),
}


def keys_shard(path: Path) -> Path:
    members = [("ok.png", png_bytes())]
    members += [(f"{key}.png", png_bytes(i + 1)) for i, key in enumerate(HOSTILE_KEYS.values())]
    with open(path, "wb") as f:
        for name, data in members:
            f.write(_member(name, data))
        f.write(b"\0" * (2 * BLOCK))
    return path
