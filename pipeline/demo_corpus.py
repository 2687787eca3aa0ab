"""A small, self-contained WebDataset corpus for demos and tests: procedural scenes in tar shards.

Each scene is a sky gradient over a textured ground with a few shapes (sun, house, tree, stripes).
Two samples are deliberately broken so a demo run shows failure rows: in the first shard one JPEG
is cut in half, and in the last shard one sample's image member is not an image at all.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.io.tarfiles import write_tar


def build_demo_corpus(out_dir: str | Path, shards: int = 3, per_shard: int = 8, seed: int = 0,
                      size: tuple[int, int] = (96, 72), corrupt: bool = True) -> list[Path]:
    """Write `shards` tar files `demo-000000.tar`, ... under `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(shards):
        path = out / f"demo-{s:06d}.tar"
        members = []
        for i in range(per_shard):
            key = f"{s:06d}{i:04d}"
            jpeg = _jpeg(scene(rng, size))
            if corrupt and s == 0 and i == 1:
                jpeg = jpeg[: len(jpeg) // 2]  # truncated JPEG
            if corrupt and s == shards - 1 and i == per_shard - 1:
                jpeg = b"this is not an image"
            members.append((f"{key}.jpg", jpeg))
            members.append((f"{key}.json", json.dumps({"scene": i, "shard": s}).encode()))
        write_tar(path, members)
        paths.append(path)
    return paths


def scene(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One procedural RGB scene of `size` (width, height)."""
    w, h = size
    horizon = int(h * rng.uniform(0.45, 0.7))
    top, bottom = np.array([90, 150, 230]), np.array([190, 220, 250])
    t = np.linspace(0.0, 1.0, horizon)[:, None, None]
    sky = (top * (1 - t) + bottom * t).repeat(w, axis=1)  # (horizon, W, 3)
    grass = np.array([60, 140, 50]) + rng.integers(-25, 25, size=(h - horizon, w, 1))  # noisy texture
    arr = np.concatenate([sky, np.broadcast_to(grass, (h - horizon, w, 3))], axis=0)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    r = int(rng.integers(4, 10))
    cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, max(r + 1, horizon - r)))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 220, 60))  # sun
    hx = int(rng.integers(0, w // 2))
    draw.rectangle([hx, horizon - h // 4, hx + w // 4, horizon], fill=(170, 60, 50))  # house
    draw.polygon([(hx - 2, horizon - h // 4), (hx + w // 8, horizon - h // 2.5), (hx + w // 4 + 2, horizon - h // 4)],
                 fill=(90, 40, 30))
    tx = int(rng.integers(w // 2, w - 6))
    draw.rectangle([tx, horizon - h // 6, tx + 3, horizon + 2], fill=(100, 70, 40))  # trunk
    draw.ellipse([tx - 7, horizon - h // 3, tx + 10, horizon - h // 8], fill=(30, 110, 40))  # crown
    for x in range(0, w, 6):  # a striped fence
        draw.line([(x, h - 8), (x, h - 2)], fill=(230, 230, 230), width=2)
    return img


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()
