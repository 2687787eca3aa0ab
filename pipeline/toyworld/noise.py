"""Cheap, vectorised noise fields in [0, 1] used by the material painters. All take a numpy Generator."""
from __future__ import annotations

import numpy as np


def value_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float | None = None) -> np.ndarray:
    """Smooth value noise: random values on a grid of `cell` pixels, interpolated with smoothstep. (h, w) float32."""
    cell_x = cell_y if cell_x is None else cell_x
    gh, gw = int(h / cell_y) + 2, int(w / cell_x) + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.arange(h, dtype=np.float32) / cell_y
    xs = np.arange(w, dtype=np.float32) / cell_x
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = _smoothstep(ys - y0)[:, None], _smoothstep(xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx  # (h, w)
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def fractal_noise(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Sum of value noise at halving cell sizes, normalised to [0, 1]. (h, w) float32."""
    total = np.zeros((h, w), np.float32)
    amp, norm = 1.0, 0.0
    for _ in range(octaves):
        total += amp * value_noise(rng, h, w, max(cell, 1.0))
        norm += amp
        amp *= 0.5
        cell /= 2
    return total / norm


def speckle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Per-pixel white noise in [0, 1]. (h, w) float32."""
    return rng.random((h, w), dtype=np.float32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)
