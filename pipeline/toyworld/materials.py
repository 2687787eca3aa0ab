"""Procedural textures for the stuff classes: one painter per class, each (rng, h, w) -> (h, w, 3) float32 in [0, 1].

Every painter draws its own colour jitter, scale and orientation from `rng`, so two regions of the
same material differ in detail but share the look that identifies the class at patch scale.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.toyworld.noise import fractal_noise, speckle, value_noise

Painter = Callable[[np.random.Generator, int, int], np.ndarray]


def jitter_color(rng: np.random.Generator, rgb: tuple[float, float, float], amount: float = 0.08) -> np.ndarray:
    """Base colour with a per-channel and a brightness jitter. (3,) float32."""
    base = np.asarray(rgb, np.float32)
    base = base * (1 + rng.uniform(-amount, amount, 3).astype(np.float32))
    return base * np.float32(1 + rng.uniform(-amount, amount))


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours a, b (3,) by weight t (h, w) -> (h, w, 3)."""
    return a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _rotated(rng: np.random.Generator, h: int, w: int, max_angle: float = np.pi) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame rotated by a random angle (u along the pattern, v across it)."""
    yy, xx = _grid(h, w)
    a = rng.uniform(-max_angle, max_angle)
    c, s = np.float32(np.cos(a)), np.float32(np.sin(a))
    return xx * c + yy * s, -xx * s + yy * c


def paint_sky(rng, h, w):
    top = jitter_color(rng, (0.30, 0.52, 0.90))
    bottom = jitter_color(rng, (0.62, 0.78, 0.97))
    yy, _ = _grid(h, w)
    img = _mix(top, bottom, yy / max(h - 1, 1))
    clouds = fractal_noise(rng, h, w, rng.uniform(40, 90), octaves=3)
    cover = rng.uniform(0.45, 0.65)
    t = np.clip((clouds - cover) * 4, 0, 1)
    return _mix_img(img, np.float32(0.97), t)


def paint_grass(rng, h, w):
    dark = jitter_color(rng, (0.10, 0.38, 0.08))
    light = jitter_color(rng, (0.35, 0.70, 0.20))
    blades = value_noise(rng, h, w, rng.uniform(5, 9), rng.uniform(1.0, 1.8))
    patches = value_noise(rng, h, w, 40)
    t = np.clip(0.65 * blades + 0.35 * patches, 0, 1)
    return _mix(dark, light, t)


def paint_sand(rng, h, w):
    base = jitter_color(rng, (0.87, 0.76, 0.50))
    u, v = _rotated(rng, h, w, 0.4)
    warp = value_noise(rng, h, w, 30) * 8
    ripples = 0.5 + 0.5 * np.sin((v + warp) * rng.uniform(0.35, 0.55))
    grain = speckle(rng, h, w)
    shade = 0.9 + 0.08 * ripples + 0.08 * (grain - 0.5)
    return base[None, None, :] * shade[..., None]


def paint_water(rng, h, w):
    deep = jitter_color(rng, (0.05, 0.22, 0.50))
    light = jitter_color(rng, (0.25, 0.50, 0.80))
    yy, xx = _grid(h, w)
    warp = value_noise(rng, h, w, 24, 48) * 6
    waves = 0.5 + 0.5 * np.sin(yy * rng.uniform(0.5, 0.8) + warp + xx * 0.05)
    crest = np.clip((waves - 0.8) * 5, 0, 1)
    t = 0.35 * value_noise(rng, h, w, 50) + 0.65 * crest
    return _mix(deep, light, t)


def paint_brick(rng, h, w):
    brick = jitter_color(rng, (0.62, 0.24, 0.16))
    mortar = jitter_color(rng, (0.78, 0.76, 0.72), 0.04)
    bh = int(rng.integers(10, 16))
    bw = int(rng.integers(24, 36))
    oy, ox = rng.integers(0, 64, 2)
    yy, xx = _grid(h, w)
    row = np.floor((yy + oy) / bh)
    xs = xx + ox + (row % 2) * (bw / 2)
    col = np.floor(xs / bw)
    in_y = (yy + oy) - row * bh
    in_x = xs - col * bw
    is_mortar = (in_y < 2) | (in_x < 2)
    # one shade per brick: hash of (row, col) into [0, 1)
    shade = np.modf(np.sin(row * 12.9898 + col * 78.233) * 43758.5453)[0] % 1.0
    body = brick[None, None, :] * (0.8 + 0.3 * shade[..., None]) * (0.93 + 0.14 * speckle(rng, h, w)[..., None])
    return np.where(is_mortar[..., None], mortar[None, None, :], body)


def paint_snow(rng, h, w):
    white = jitter_color(rng, (0.95, 0.96, 0.99), 0.03)
    shadow = jitter_color(rng, (0.76, 0.82, 0.92), 0.04)
    t = fractal_noise(rng, h, w, rng.uniform(30, 60), octaves=2)
    img = _mix(white, shadow, np.clip((t - 0.35) * 1.6, 0, 1))
    sparkle = (speckle(rng, h, w) > 0.985).astype(np.float32)
    return np.clip(img + 0.06 * sparkle[..., None], 0, 1)


def paint_wood(rng, h, w):
    dark = jitter_color(rng, (0.36, 0.20, 0.08))
    light = jitter_color(rng, (0.66, 0.44, 0.22))
    u, v = _rotated(rng, h, w, 0.2) if rng.random() < 0.5 else _rotated_quarter(rng, h, w)
    plank = rng.uniform(18, 30)
    seam = ((v % plank) < 1.5).astype(np.float32)
    plank_id = np.floor(v / plank)
    warp = value_noise(rng, h, w, 12, 60) * 5
    grain = 0.5 + 0.5 * np.sin((v + warp) * rng.uniform(0.9, 1.4) + plank_id * 1.7)
    img = _mix(dark, light, 0.25 + 0.6 * grain)
    return img * (1 - 0.5 * seam[..., None])


def _rotated_quarter(rng, h, w):
    u, v = _rotated(rng, h, w, 0.2)
    return v, u


def paint_road(rng, h, w):
    base = jitter_color(rng, (0.30, 0.30, 0.32), 0.06)
    grain = speckle(rng, h, w)
    stains = value_noise(rng, h, w, 35)
    img = base[None, None, :] * (0.85 + 0.2 * grain[..., None] + 0.12 * (stains[..., None] - 0.5))
    u, v = _rotated(rng, h, w, np.pi)
    line_color = np.float32([0.95, 0.95, 0.9]) if rng.random() < 0.5 else np.float32([0.95, 0.8, 0.15])
    period = rng.uniform(70, 110)
    offset = rng.uniform(0, period)
    dash = ((u % 40) < 22) if rng.random() < 0.6 else np.ones_like(u, bool)
    line = (np.abs(((v + offset) % period) - period / 2) < 2.5) & dash
    return np.where(line[..., None], line_color[None, None, :], img)


def _mix_img(img: np.ndarray, value: np.float32, t: np.ndarray) -> np.ndarray:
    return img * (1 - t[..., None]) + value * t[..., None]


STUFF_PAINTERS: dict[str, Painter] = {
    "sky": paint_sky,
    "grass": paint_grass,
    "sand": paint_sand,
    "water": paint_water,
    "brick": paint_brick,
    "snow": paint_snow,
    "wood": paint_wood,
    "road": paint_road,
}
