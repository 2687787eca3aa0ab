"""SFR (semantic feedback refinement): a first-pass segmentation turned into an attention prior.

Steps (golden README step 6, the authors' `create_patch_matrix` and `generate_attention_sfr`):
per-pixel query labels -> per-patch majority label -> same-label matrix -> path check with
distance decay -> per-row 1-D Gaussian blur, ReLU, row normalisation -> max-normalised float16
prior. Everything here is batched over crops; the geometry (paths, decay) depends only on the patch
grid and is built once per grid size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.engine.shape_cache import shape_cache

GEOMETRY_CACHE_MB = 1024  # ~37 whole 336x448 grids; a 336x2048 panorama's (2.4 GB) is built, not kept


def pixel_labels(probs: Tensor, temp_thd: float) -> Tensor:
    """Argmax query per pixel, query 0 where the top probability is below `temp_thd`. (B, Q, H, W) -> (B, H, W)"""
    top, label = probs.max(dim=1)
    return torch.where(top < temp_thd, torch.zeros_like(label), label)


def patch_majority(labels: Tensor, patch: int, num_labels: int) -> Tensor:
    """Most frequent label in each patch, the smallest on ties (as torch.mode breaks them, which the
    reference uses); partial patches dropped. (B, H, W) labels in [0, num_labels) -> (B, gh, gw).
    Counted with one scatter-add: torch.mode sorts every patch, and on a GPU runs slice by slice."""
    cells = patch_cells(labels, patch)
    b, gh, gw, size = cells.shape
    cells = cells.reshape(b, gh * gw, size)
    counts = torch.zeros(b, gh * gw, num_labels, dtype=torch.int32, device=labels.device)
    counts.scatter_add_(2, cells, torch.ones_like(cells, dtype=torch.int32))
    return counts.argmax(dim=-1).reshape(b, gh, gw)  # argmax returns the first (smallest) of tied maxima


def patch_cells(labels: Tensor, patch: int) -> Tensor:
    """The labels of each full patch side by side: (B, H, W) -> (B, gh, gw, patch * patch)."""
    b, h, w = labels.shape
    gh, gw = h // patch, w // patch
    cells = labels[:, : gh * patch, : gw * patch].reshape(b, gh, patch, gw, patch)
    return cells.permute(0, 1, 3, 2, 4).reshape(b, gh, gw, patch * patch)


@dataclass(frozen=True)
class PathPoints:
    """The reference's path-check samples for a (gh, gw) patch grid, N = gh * gw patches."""

    path: Tensor  # (N, N, M+1) long: patch index of each checked point; unchecked points repeat the start
    decay: Tensor  # (N, N) float32: exp(-steps / M)
    steps: Tensor  # (N, N) long: Chebyshev distance; points 0..steps are checked


def path_points(gh: int, gw: int, device: str = "cpu") -> PathPoints:
    n = gh * gw
    idx = torch.arange(n, device=device)
    rc = torch.stack([idx // gw, idx % gw], dim=-1)  # (N, 2) row, col
    start = rc[:, None, :].expand(n, n, 2)
    end = rc[None, :, :].expand(n, n, 2)
    steps = (end - start).abs().amax(dim=-1)  # (N, N) Chebyshev distance
    m = int(steps.max())
    # The reference samples M + 1 points for every pair, M being the longest distance in the grid,
    # and checks only the first `steps + 1` of them: short pairs check the part next to the start.
    t = torch.linspace(0, 1, m + 1, device=device)[None, None, :, None]  # float32 as in the reference
    points = torch.round(start[:, :, None, :].float() * (1 - t) + end[:, :, None, :].float() * t).long()
    path = points[..., 0] * gw + points[..., 1]  # (N, N, M+1)
    checked = torch.arange(m + 1, device=device)[None, None, :] <= steps[:, :, None]
    path = torch.where(checked, path, idx[:, None, None].expand_as(path))
    decay = torch.exp(-steps / m) if m > 0 else torch.ones(n, n, device=device)
    return PathPoints(path=path, decay=decay.float(), steps=steps)


@dataclass(frozen=True)
class GridGeometry:
    """Path-check tables for a (gh, gw) patch grid, built once per grid size."""

    path_bits: Tensor  # (W, N, N) int64: bit p % 64 of word p // 64 set when patch p lies on the checked path
    decay: Tensor  # (N, N) float32: exp(-steps / M)


# ~28 MB for a whole 336x448 image's grid, ~2.4 GB for a 336x2048 panorama's: bounded by bytes.
@shape_cache(GEOMETRY_CACHE_MB)
def grid_geometry(gh: int, gw: int, device: str = "cpu") -> GridGeometry:
    """The path points as bit sets: checking a pair is then a few word ANDs instead of M + 1 gathers
    (6x faster for a 224 crop; 10x for a whole 336x448 image, whose paths have up to 28 points)."""
    pts = path_points(gh, gw, device)
    n, words = gh * gw, (gh * gw + 63) // 64
    path = pts.path.reshape(n * n, -1)
    # The rounded line is monotone in both coordinates, so a repeated patch repeats its predecessor
    # (unchecked points repeat the start, which k = 0 holds). Without repeats the OR of the points'
    # bits is their sum, and one scatter-add builds every word (a loop over words x points took 7 s
    # for a 336x448 image's grid; this takes ~0.1 s). Bit 63 wraps in two's complement: still exact.
    repeat = torch.zeros_like(path, dtype=torch.bool)
    repeat[:, 1:] = path[:, 1:] == path[:, :-1]
    repeat |= torch.arange(path.shape[1], device=device) > pts.steps.reshape(n * n, 1)
    one = torch.ones((), dtype=torch.int64, device=device)
    values = torch.where(repeat, 0, one << (path % 64))
    bits = torch.zeros(n * n, words, dtype=torch.int64, device=device)
    bits.scatter_add_(1, path // 64, values)
    bits = bits.T.reshape(words, n, n).contiguous()  # word-major: each word contiguous
    return GridGeometry(path_bits=bits, decay=pts.decay)


def pack_bits(mask: Tensor) -> Tensor:
    """(..., N) bool -> (..., ceil(N / 64)) int64 with bit i % 64 of word i // 64 set where mask[i]."""
    n = mask.shape[-1]
    words = (n + 63) // 64
    padded = F.pad(mask.to(torch.int64), (0, words * 64 - n)).reshape(*mask.shape[:-1], words, 64)
    powers = torch.ones((), dtype=torch.int64, device=mask.device) << torch.arange(64, device=mask.device)
    return (padded * powers).sum(-1)  # distinct powers of two: the sum is the OR (bit 63 wraps exactly)


def same_label_matrix(patch_labels: Tensor, delete_same_entity: bool) -> Tensor:
    """(B, gh, gw) patch labels -> (B, N, N) float: 1 for same label, decayed where the path leaves the label."""
    b, gh, gw = patch_labels.shape
    flat = patch_labels.reshape(b, gh * gw)
    same = flat[:, :, None] == flat[:, None, :]  # (B, N, N)
    if not delete_same_entity:
        return same.float()
    geo = grid_geometry(gh, gw, str(flat.device))
    other = ~pack_bits(same)  # (B, N, W): patches whose label differs from each start's
    hits = torch.zeros(same.shape, dtype=torch.int64, device=same.device)
    for w in range(other.shape[-1]):  # word by word: the (B, N, N) temporaries stay in cache
        hits |= geo.path_bits[w] & other[:, :, w, None]
    valid = hits == 0  # no checked point of the path has another label
    same = same.float()
    return torch.where(valid, same, same * geo.decay)


def blur_rows(matrix: Tensor, std: float) -> Tensor:
    """1-D Gaussian blur of every row along the flattened patch index, zero padding; ReLU; rows sum to 1."""
    b, n, _ = matrix.shape
    size = min(n, int(6 * std + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size, dtype=torch.float32, device=matrix.device) - size // 2
    kernel = torch.exp(-(x**2) / (2 * std**2))
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    # In float32 even inside the caller's bf16/fp16 autocast (which would cast conv1d down), as the
    # reference blurs; the prior is stored in float16 only at the end (prior_from_matrix).
    with torch.autocast(matrix.device.type, enabled=False):
        rows = matrix.float().reshape(b * n, 1, n)
        blurred = F.conv1d(rows, kernel, padding=size // 2).reshape(b, n, n)
    blurred = F.relu(blurred)
    return blurred / (blurred.sum(dim=-1, keepdim=True) + 1e-8)


def sfr_prior(patch_labels: Tensor, gaussian_std: float, delete_same_entity: bool) -> Tensor:
    """Attention prior (B, 1, T, T) float16 with T = N + 1; class-token row and column zero."""
    return prior_from_matrix(same_label_matrix(patch_labels, delete_same_entity), gaussian_std)


def prior_from_matrix(same: Tensor, gaussian_std: float) -> Tensor:
    """(B, N, N) same-label matrix -> blurred, max-normalised float16 prior (B, 1, N + 1, N + 1)."""
    b, n, _ = same.shape
    block = blur_rows(same, gaussian_std)
    prior = torch.zeros(b, n + 1, n + 1, device=block.device)
    prior[:, 1:, 1:] = block
    peak = prior.amax(dim=(-2, -1), keepdim=True)
    # Normalised by its maximum, then stored in float16: both as in the reference.
    return (prior / peak).to(torch.float16).unsqueeze(1)

