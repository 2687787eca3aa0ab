"""PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020), vectorised over a batch.

Each pixel's logits become an affinity-weighted average of its 8 neighbours at each dilation.
Affinities come from the image: -|x - x_nb| / (1e-8 + 0.1 * std), where std is the unbiased std
over the 3x3 neighbourhoods of all dilations (9 values each, centre included), averaged over the
colour channels and softmax-normalised over the neighbours. Borders are replicate-padded.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Neighbour offsets in the order of the reference kernels (row-major 3x3 without the centre).
_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shifted(x: Tensor, dilation: int, with_centre: bool) -> list[Tensor]:
    """Views of x moved by each neighbour offset (times `dilation`), replicate padding. Each (B, C, H, W)."""
    h, w = x.shape[-2:]
    d = dilation
    padded = F.pad(x, [d, d, d, d], mode="replicate")
    offsets = _OFFSETS[:4] + [(0, 0)] + _OFFSETS[4:] if with_centre else _OFFSETS
    return [padded[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w] for dy, dx in offsets]


def pamr_affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """Neighbour weights from the image (B, 3, H, W): (B, 1, P, H, W) with P = 8 * len(dilations)."""
    neighbourhood = torch.stack([v for d in dilations for v in _shifted(image, d, True)], dim=2)
    std = neighbourhood.std(dim=2, keepdim=True)  # (B, 3, 1, H, W), unbiased
    neighbours = torch.stack([v for d in dilations for v in _shifted(image, d, False)], dim=2)
    aff = -(image.unsqueeze(2) - neighbours).abs() / (1e-8 + 0.1 * std)
    return torch.softmax(aff.mean(dim=1, keepdim=True), dim=2)


def pamr(image: Tensor, logits: Tensor, iterations: int, dilations: Sequence[int] = (8, 16),
         compiled: bool = False) -> Tensor:
    """Refine logits (B, Q, H, W) with the affinities of `image` (B, 3, H, W) of the same size.
    `compiled` runs the affinities and the iterations through torch.compile, which fuses the
    element-wise passes (one per neighbour and step in eager mode) into few passes over memory."""
    if iterations <= 0:
        return logits
    affinity = _compiled(pamr_affinity) if compiled else pamr_affinity
    aff = affinity(image.float(), tuple(dilations))[:, 0]  # (B, P, H, W)
    run = _compiled(propagate) if compiled else propagate
    return run(logits.float(), aff, tuple(dilations), iterations)


def propagate(logits: Tensor, weights: Tensor, dilations: tuple[int, ...], iterations: int) -> Tensor:
    for _ in range(iterations):
        # Accumulate neighbour by neighbour: the (B, Q, P, H, W) stack would not fit for large vocabularies.
        out = torch.zeros_like(logits)
        neighbours = [v for d in dilations for v in _shifted(logits, d, False)]
        for n, nb in enumerate(neighbours):
            out.addcmul_(weights[:, n : n + 1], nb)
        logits = out
    return logits


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=False)
