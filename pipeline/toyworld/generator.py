"""Scene generator: 2-3 stuff regions with procedural boundaries, then 0-3 things on top.

`generate_scene(seed, index)` is a pure function of its arguments (its own numpy Generator seeded by
`[seed, index]`), so any scene can be regenerated alone, in any order, on any machine with the same
numpy. Named splits use fixed seeds (`SPLIT_SEEDS`) so train, validation and test never overlap.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.toyworld.classes import NAMES, STUFF, THINGS
from pipeline.toyworld.materials import STUFF_PAINTERS
from pipeline.toyworld.noise import value_noise
from pipeline.toyworld.shapes import SIZE_RANGE, THING_PAINTERS

SCENE_SIZE = 224  # ViT-B/16 geometry: 14 x 14 patches of 16 px
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
CAPTION_MIN_SHARE = 0.005  # a class is named in the caption when it covers at least this share of pixels
SKY = NAMES.index("sky")


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # uint8 (H, W, 3) RGB
    label: np.ndarray  # uint8 (H, W) class index per pixel (every pixel has a class)
    classes: tuple[int, ...]  # classes named in the caption, largest area first
    caption: str  # "a photo of grass, sky and ball."
    seed: int
    index: int

    @property
    def key(self) -> str:
        return scene_key(self.seed, self.index)


def scene_key(seed: int, index: int) -> str:
    return f"toy{seed:02d}_{index:07d}"


def split_seed(split: str | int) -> int:
    if isinstance(split, int):
        return split
    try:
        return SPLIT_SEEDS[split]
    except KeyError:
        raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLIT_SEEDS)} (or pass an integer seed)") from None


def generate_scene(seed: int, index: int, size: int = SCENE_SIZE) -> Scene:
    rng = np.random.default_rng([seed, index])
    n_stuff = int(rng.choice([2, 3], p=[0.5, 0.5]))
    stuff = [STUFF[i] for i in rng.choice(len(STUFF), n_stuff, replace=False)]
    label = _stuff_layout(rng, size, stuff)
    image = np.zeros((size, size, 3), np.float32)
    for cls in stuff:
        region = label == cls
        if region.any():
            image[region] = STUFF_PAINTERS[NAMES[cls]](rng, size, size)[region]
    n_things = int(rng.choice([0, 1, 2, 3], p=[0.15, 0.35, 0.3, 0.2]))
    for _ in range(n_things):
        cls = THINGS[int(rng.integers(len(THINGS)))]
        _place_thing(rng, image, label, cls)
    image = image * np.float32(rng.uniform(0.9, 1.1)) + rng.normal(0, 0.012, image.shape).astype(np.float32)
    image8 = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    classes = present_classes(label, CAPTION_MIN_SHARE)
    return Scene(image8, label, classes, caption_for(classes), seed, index)


def generate_scenes(split: str | int, count: int, start: int = 0, size: int = SCENE_SIZE) -> Iterator[Scene]:
    seed = split_seed(split)
    for index in range(start, start + count):
        yield generate_scene(seed, index, size)


def present_classes(label: np.ndarray, min_share: float = 0.0) -> tuple[int, ...]:
    """Classes covering more than `min_share` of the pixels, largest first."""
    counts = np.bincount(label.ravel(), minlength=len(NAMES))
    order = np.argsort(-counts, kind="stable")
    return tuple(int(c) for c in order if counts[c] > 0 and counts[c] >= min_share * label.size)


def caption_for(classes: tuple[int, ...] | list[int], template: str = "a photo of {}.") -> str:
    return template.format(join_names([NAMES[c] for c in classes]))


def join_names(names: list[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _stuff_layout(rng: np.random.Generator, size: int, stuff: list[int]) -> np.ndarray:
    """Partition the canvas among `stuff` classes: wavy horizontal bands or a warped Voronoi diagram."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    k = len(stuff)
    if rng.random() < 0.5:
        order = sorted(stuff, key=lambda c: (c != SKY, rng.random()))  # sky, when present, on top
        cuts = np.sort(rng.uniform(0.2, 0.8, k - 1)) if k > 2 else rng.uniform(0.3, 0.7, 1)
        cuts = np.maximum.accumulate(np.maximum(cuts, np.arange(1, k) * 0.18))
        band = np.zeros((size, size), np.int64)
        for cut in cuts:
            amp = rng.uniform(0, 0.08) * size
            freq = rng.uniform(0.5, 3.0) * 2 * np.pi / size
            wobble = (value_noise(rng, 1, size, 1, 30)[0] - 0.5) * rng.uniform(0, 0.12) * size
            edge = cut * size + amp * np.sin(freq * xx[0] + rng.uniform(0, 2 * np.pi)) + wobble  # (W,)
            band += yy > edge[None, :]
        return np.asarray(order, np.uint8)[band]
    points = rng.uniform(0.1, 0.9, (k, 2)).astype(np.float32) * size
    warp = rng.uniform(10, 35)
    wy = (value_noise(rng, size, size, 56) - 0.5) * 2 * warp
    wx = (value_noise(rng, size, size, 56) - 0.5) * 2 * warp
    d = (yy[None] + wy[None] - points[:, 0, None, None]) ** 2 + (xx[None] + wx[None] - points[:, 1, None, None]) ** 2
    return np.asarray(stuff, np.uint8)[np.argmin(d, 0)]


def _place_thing(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, cls: int) -> None:
    """Draw a thing of class `cls` at a random place (possibly cut by the border), in place."""
    size_px = image.shape[0]
    lo, hi = SIZE_RANGE[NAMES[cls]]
    s = max(int(rng.uniform(lo, hi) * size_px), 8)
    mask, rgb = THING_PAINTERS[NAMES[cls]](rng, s)
    y0 = int(rng.integers(-s // 5, size_px - s + s // 5 + 1))
    x0 = int(rng.integers(-s // 5, size_px - s + s // 5 + 1))
    ys, xs = slice(max(y0, 0), min(y0 + s, size_px)), slice(max(x0, 0), min(x0 + s, size_px))
    local = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    m = mask[local]
    image[ys, xs][m] = rgb[local][m]
    label[ys, xs][m] = cls
