"""Things: procedural shapes drawn on a local square canvas, each with its own parts and colours.

A shape painter takes (rng, size) and returns `(mask, rgb)` for a `size` x `size` canvas: `mask` is
bool (size, size), True where the thing is; `rgb` is float32 (size, size, 3) in [0, 1], meaningful
only under the mask. Shapes are hard-edged, so the mask is exact ground truth.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from pipeline.toyworld.materials import jitter_color
from pipeline.toyworld.noise import speckle

ShapePainter = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def _draw(size: int, parts: list[tuple[str, object, int]]) -> np.ndarray:
    """Rasterise parts in order onto a part-index map. Each part is (kind, geometry, index) with kind
    "polygon" (list of (x, y)) or "ellipse" ((x0, y0, x1, y1)); later parts overwrite earlier ones."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for kind, geom, index in parts:
        if kind == "polygon":
            draw.polygon([(float(x), float(y)) for x, y in geom], fill=index)
        elif kind == "ellipse":
            draw.ellipse([float(v) for v in geom], fill=index)
        else:
            raise ValueError(f"unknown part kind {kind!r}")
    return np.asarray(canvas)


def _rotate(points: np.ndarray, angle: float, center: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    p = points - center
    return np.stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c], 1) + center


def _ellipse_points(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _local_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    return (yy - c) / (size / 2), (xx - c) / (size / 2)  # in [-1, 1]


def paint_ball(rng, size):
    m = _draw(size, [("ellipse", (0, 0, size - 1, size - 1), 1)]) > 0
    yy, xx = _local_grid(size)
    ly, lx = rng.uniform(-0.6, -0.2), rng.uniform(-0.5, 0.5)  # light direction (upper side)
    r2 = yy**2 + xx**2
    shade = np.clip(1.05 - 0.55 * r2 - 0.25 * (yy * ly + xx * lx) * -1, 0.35, 1.1)
    base = jitter_color(rng, (0.85, 0.10, 0.10))
    rgb = base[None, None, :] * shade[..., None]
    spot = np.exp(-((yy - ly * 0.6) ** 2 + (xx - lx * 0.6) ** 2) / 0.03)
    rgb = rgb + spot[..., None] * 0.7
    if rng.random() < 0.5:  # a white band round the ball
        band = np.abs(yy * 0.8 + xx * 0.6 + rng.uniform(-0.3, 0.3)) < 0.12
        rgb = np.where(band[..., None], 0.92 * shade[..., None], rgb)
    return m, np.clip(rgb, 0, 1)


def paint_star(rng, size):
    n = 5
    outer, inner = size / 2 - 1, (size / 2 - 1) * rng.uniform(0.38, 0.5)
    a0 = rng.uniform(0, 2 * np.pi)
    angles = a0 + np.arange(2 * n) * np.pi / n
    radii = np.where(np.arange(2 * n) % 2 == 0, outer, inner)
    c = (size - 1) / 2
    pts = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], 1)
    m = _draw(size, [("polygon", pts, 1)]) > 0
    yy, xx = _local_grid(size)
    base = jitter_color(rng, (0.98, 0.82, 0.08), 0.05)
    shade = 1.0 - 0.3 * np.sqrt(yy**2 + xx**2)
    rgb = base[None, None, :] * shade[..., None]
    return m, np.clip(rgb, 0, 1)


def paint_fish(rng, size):
    c = (size - 1) / 2
    body = _ellipse_points(c - size * 0.1, c, size * 0.36, size * 0.2)
    tail = np.array([[c + size * 0.18, c], [c + size * 0.48, c - size * 0.2], [c + size * 0.48, c + size * 0.2]])
    angle = rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.5 else 0.0)
    parts = [("polygon", _rotate(tail, angle, c), 1), ("polygon", _rotate(body, angle, c), 1)]
    eye = _rotate(np.array([[c - size * 0.32, c - size * 0.04]]), angle, c)[0]
    er = max(size * 0.035, 1.5)
    parts.append(("ellipse", (eye[0] - er, eye[1] - er, eye[0] + er, eye[1] + er), 2))
    idx = _draw(size, parts)
    yy, xx = _local_grid(size)
    u = xx * np.cos(angle) + yy * np.sin(angle)  # along the body
    orange = jitter_color(rng, (1.0, 0.52, 0.08), 0.06)
    stripes = (np.abs(u + 0.05) < 0.07) | (np.abs(u - 0.32) < 0.06) | (np.abs(u + 0.42) < 0.05)
    rgb = np.where(stripes[..., None], np.float32(0.97), orange[None, None, :])
    rgb = np.where((idx == 2)[..., None], np.float32(0.05), rgb)
    return idx > 0, np.clip(rgb.astype(np.float32), 0, 1)


def paint_kite(rng, size):
    c = (size - 1) / 2
    pts = np.array([[c, 1.0], [c + size * 0.36, c - size * 0.12], [c, size - 2.0], [c - size * 0.36, c - size * 0.12]])
    angle = rng.uniform(-0.7, 0.7)
    pts = _rotate(pts, angle, c)
    m = _draw(size, [("polygon", pts, 1)]) > 0
    yy, xx = _local_grid(size)
    # quadrants of the kite in its own frame alternate two tones; the spars are dark lines
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    light = jitter_color(rng, (0.62, 0.25, 0.85), 0.06)
    dark = light * np.float32(0.65)
    tone = ((u > 0) ^ (v > -0.24))[..., None]
    rgb = np.where(tone, light[None, None, :], dark[None, None, :])
    spar = (np.abs(u) < 0.035) | (np.abs(v + 0.24) < 0.035)
    rgb = np.where(spar[..., None], np.float32(0.2), rgb)
    return m, np.clip(rgb.astype(np.float32), 0, 1)


def paint_flower(rng, size):
    c = (size - 1) / 2
    n = int(rng.integers(5, 8))
    pr = size * 0.2
    dist = size / 2 - pr - 1
    a0 = rng.uniform(0, 2 * np.pi)
    parts = []
    for k in range(n):
        a = a0 + 2 * np.pi * k / n
        px, py = c + dist * np.cos(a), c + dist * np.sin(a)
        parts.append(("ellipse", (px - pr, py - pr, px + pr, py + pr), 1))
    cr = size * 0.17
    parts.append(("ellipse", (c - cr, c - cr, c + cr, c + cr), 2))
    idx = _draw(size, parts)
    yy, xx = _local_grid(size)
    petal = jitter_color(rng, (0.95, 0.42, 0.70), 0.06)
    centre = jitter_color(rng, (0.95, 0.78, 0.10), 0.05)
    shade = 0.8 + 0.25 * np.sqrt(yy**2 + xx**2)
    rgb = np.where((idx == 2)[..., None], centre[None, None, :], petal[None, None, :] * shade[..., None])
    return idx > 0, np.clip(rgb.astype(np.float32), 0, 1)


def paint_house(rng, size):
    wall_top = size * rng.uniform(0.38, 0.48)
    x0, x1 = size * 0.1, size * 0.9
    roof = np.array([[0.0, wall_top + 1], [size / 2, 1.0], [size - 1.0, wall_top + 1]])
    parts = [("polygon", [(x0, wall_top), (x1, wall_top), (x1, size - 1), (x0, size - 1)], 1), ("polygon", roof, 2)]
    ww = size * 0.16
    for wx in (x0 + size * 0.1, x1 - size * 0.1 - ww):
        wy = wall_top + size * 0.1
        parts.append(("polygon", [(wx, wy), (wx + ww, wy), (wx + ww, wy + ww), (wx, wy + ww)], 3))
    dx = size / 2 - size * 0.08
    parts.append(("polygon", [(dx, size * 0.7), (dx + size * 0.16, size * 0.7), (dx + size * 0.16, size - 1), (dx, size - 1)], 4))
    idx = _draw(size, parts)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wall = jitter_color(rng, (0.93, 0.86, 0.70), 0.05)
    siding = 1 - 0.18 * ((yy % 6) < 1.2)
    roof_c = jitter_color(rng, (0.45, 0.16, 0.14), 0.1)
    shingles = 1 - 0.25 * (((yy % 7) < 1.5) | ((xx + 6 * np.floor(yy / 7)) % 12 < 1.2))
    rgb = np.zeros((size, size, 3), np.float32)
    rgb[idx == 1] = (wall[None, :] * siding[idx == 1][:, None])
    rgb[idx == 2] = (roof_c[None, :] * shingles[idx == 2][:, None])
    rgb[idx == 3] = jitter_color(rng, (0.15, 0.25, 0.45), 0.1)
    rgb[idx == 4] = jitter_color(rng, (0.40, 0.22, 0.10), 0.1)
    rgb *= (0.95 + 0.08 * speckle(rng, size, size))[..., None]
    return idx > 0, np.clip(rgb, 0, 1)


THING_PAINTERS: dict[str, ShapePainter] = {
    "ball": paint_ball,
    "star": paint_star,
    "fish": paint_fish,
    "kite": paint_kite,
    "flower": paint_flower,
    "house": paint_house,
}

# Drawn size range (pixels, at 224 px) per thing; fractions of the scene side.
SIZE_RANGE: dict[str, tuple[float, float]] = {
    "ball": (0.18, 0.38),
    "star": (0.25, 0.45),
    "fish": (0.28, 0.5),
    "kite": (0.25, 0.45),
    "flower": (0.25, 0.42),
    "house": (0.3, 0.5),
}
