"""PAMR (pixel-adaptive mask refinement, Araslanov & Roth 2020), vectorised over a batch.

Each pixel's logits become an affinity-weighted average of its 8 neighbours at each dilation.
Affinities come from the image: -|x - x_nb| / (1e-8 + 0.1 * std), where std is the unbiased std
over the 3x3 neighbourhoods of all dilations (9 values each, centre included), averaged over the
colour channels and softmax-normalised over the neighbours. Borders are replicate-padded.

The weights depend on the image only, so the refinement is a fixed linear map applied `iterations`
times. Two kernels compute it, with the same numbers:
- `sparse`: the neighbour weights as one CSR matrix (pixels x pixels, block-diagonal over the
  batch) times channels-last logits. One pass over the logits per iteration instead of one per
  neighbour: 2.5x faster than `shifted` on CPU, where PAMR is most of the engine's time.
- `shifted`: neighbour by neighbour over shifted views, 16 element-wise passes per iteration;
  `compiled` fuses them with torch.compile.
- `stencil`: affinities and iterations as one pure function of the image and the logits (no
  in-place updates), which torch.compile turns into one kernel per iteration that reads the 16
  neighbours of each pixel (replicate padding becomes clamped indices) and writes each pixel once;
  plus a few kernels for the affinities. Compiled on CUDA always, on CPU with `compiled`.
  On a GPU this replaces cuSPARSE's zero-filled output and CSR product per iteration.
`auto` picks `stencil` on CUDA, and on CPU `sparse` for shapes seen before (see `_resolve`).
"""
from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.engine.shape_cache import shape_cache

PamrKernel = Literal["auto", "sparse", "shifted", "stencil"]

# Neighbour offsets in the order of the reference kernels (row-major 3x3 without the centre).
_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
PATTERN_CACHE_MB = 512  # ~27 whole 336x448 images' patterns, ~80 crops of 224


def _shifted(x: Tensor, dilation: int, with_centre: bool) -> list[Tensor]:
    """Views of x moved by each neighbour offset (times `dilation`), replicate padding. Each (B, C, H, W)."""
    h, w = x.shape[-2:]
    d = dilation
    padded = F.pad(x, [d, d, d, d], mode="replicate")
    offsets = _OFFSETS[:4] + [(0, 0)] + _OFFSETS[4:] if with_centre else _OFFSETS
    return [padded[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w] for dy, dx in offsets]


def pamr_affinity(image: Tensor, dilations: Sequence[int]) -> Tensor:
    """Neighbour weights from the image (B, 3, H, W): (B, P, H, W) with P = 8 * len(dilations).

    Works one neighbour at a time on (B, 3, H, W) planes: stacking the 18-value neighbourhoods and
    reducing across the stack is 10x slower on CPU for the same result."""
    neighbours = [v for d in dilations for v in _shifted(image, d, False)]
    count = len(neighbours) + len(dilations)  # every dilation's neighbourhood includes the centre
    mean = torch.stack(neighbours).sum(0).add_(image, alpha=len(dilations)).div_(count)
    var = (image - mean).square_().mul_(len(dilations))
    for v in neighbours:
        var.add_((v - mean).square_())
    denom = var.div_(count - 1).sqrt_().mul_(0.1).add_(1e-8)  # unbiased std, as torch.std
    scores = image.new_empty((image.shape[0], len(neighbours)) + tuple(image.shape[-2:]))
    for n, v in enumerate(neighbours):
        torch.mean((image - v).abs_().div_(denom), dim=1, out=scores[:, n])
    return torch.softmax(scores.neg_(), dim=1)


def pamr(image: Tensor, logits: Tensor, iterations: int, dilations: Sequence[int] = (8, 16),
         kernel: PamrKernel = "sparse", compiled: bool = False) -> Tensor:
    """Refine logits (B, Q, H, W) with the affinities of `image` (B, 3, H, W) of the same size.
    `compiled` fuses the shifted kernel's element-wise passes, or the stencil on CPU, with torch.compile."""
    if iterations <= 0:
        return logits
    chosen = _resolve(kernel, logits.shape[-2:], tuple(dilations), logits.device)
    if chosen == "stencil":
        with torch.autocast(logits.device.type, enabled=False):  # float32, as the other kernels
            fuse = compiled or logits.device.type == "cuda"
            return stencil_pamr(image.float(), logits.float(), tuple(dilations), iterations, fuse)
    aff = pamr_affinity(image.float(), tuple(dilations))  # (B, P, H, W)
    if chosen == "sparse":
        # float32 throughout, also under autocast: the CSR product has no half-precision CPU kernel.
        with torch.autocast(logits.device.type, enabled=False):
            return propagate_sparse(logits.float(), aff, tuple(dilations), iterations)
    run = _compiled(propagate) if compiled else propagate
    return run(logits.float(), aff, tuple(dilations), iterations)


def _resolve(kernel: PamrKernel, size: Sequence[int], dilations: tuple[int, ...], device: torch.device) -> str:
    """`auto` is the compiled stencil on CUDA (one fused kernel per iteration; the compile is paid once
    per process and shape family). On CPU it is sparse for a shape seen before and shifted the first
    time: the sparse pattern costs about one shifted run to build, which only repeated shapes (crops,
    resized corpora) pay back."""
    if kernel != "auto":
        return kernel
    if device.type == "cuda":
        return "stencil"
    key = (int(size[0]), int(size[1]), dilations, str(device))
    if key in _SEEN:
        _SEEN.move_to_end(key)
        return "sparse"
    _SEEN[key] = None
    if len(_SEEN) > 1024:
        _SEEN.popitem(last=False)
    return "shifted"


_SEEN: OrderedDict[tuple, None] = OrderedDict()


def propagate(logits: Tensor, weights: Tensor, dilations: tuple[int, ...], iterations: int) -> Tensor:
    for _ in range(iterations):
        # Accumulate neighbour by neighbour: the (B, Q, P, H, W) stack would not fit for large vocabularies.
        out = torch.zeros_like(logits)
        neighbours = [v for d in dilations for v in _shifted(logits, d, False)]
        for n, nb in enumerate(neighbours):
            out.addcmul_(weights[:, n : n + 1], nb)
        logits = out
    return logits


def stencil_pamr(image: Tensor, logits: Tensor, dilations: tuple[int, ...], iterations: int,
                 compiled: bool = False) -> Tensor:
    """PAMR as pure element-wise expressions over shifted views. `compiled` runs the affinities and
    each iteration through torch.compile: one graph per iteration step, compiled once per shape
    family and reused for every iteration (unrolling all iterations into one graph makes the
    compile 10x longer for the same kernels). Eager, it computes the same numbers as `shifted`."""
    affinity, step = pamr_affinity_pure, stencil_step
    if compiled:
        affinity, step = _compiled(affinity), _compiled(step)
    weights = affinity(image, dilations)  # (B, P, H, W)
    for _ in range(iterations):
        logits = step(logits, weights, dilations)
    return logits


def stencil_step(logits: Tensor, weights: Tensor, dilations: tuple[int, ...]) -> Tensor:
    """One propagation: sum over the P neighbours of weight * shifted logits, (B, Q, H, W)."""
    neighbours = [v for d in dilations for v in _shifted(logits, d, False)]
    out = weights[:, :1] * neighbours[0]
    for n in range(1, len(neighbours)):
        out = out + weights[:, n : n + 1] * neighbours[n]
    return out


def pamr_affinity_pure(image: Tensor, dilations: tuple[int, ...]) -> Tensor:
    """`pamr_affinity` without in-place updates (the same formula), for the compiled stencil."""
    neighbours = [v for d in dilations for v in _shifted(image, d, False)]
    count = len(neighbours) + len(dilations)
    mean = (sum(neighbours) + image * len(dilations)) / count
    var = (image - mean).square() * len(dilations)
    for v in neighbours:
        var = var + (v - mean).square()
    denom = (var / (count - 1)).sqrt() * 0.1 + 1e-8
    scores = torch.stack([((image - v).abs() / denom).mean(dim=1) for v in neighbours], dim=1)
    return torch.softmax(-scores, dim=1)


def propagate_sparse(logits: Tensor, weights: Tensor, dilations: tuple[int, ...], iterations: int) -> Tensor:
    b, q, h, w = logits.shape
    pattern = _pattern(h, w, dilations, str(logits.device))
    if b > 1:
        pattern = pattern.tiled(b)
    flat = weights.reshape(-1)  # (B, P, H, W) order, as `_Pattern` indexes it
    values = flat.index_select(0, pattern.first)
    for src, dst in pattern.merges:  # each merge round's targets are distinct: deterministic, also on a GPU
        values[dst] += flat[src]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        matrix = torch.sparse_csr_tensor(pattern.rows, pattern.columns, values, (b * h * w, b * h * w),
                                         check_invariants=False)
    x = logits.permute(0, 2, 3, 1).reshape(b * h * w, q)  # channels-last: one row of Q per pixel
    for _ in range(iterations):
        x = matrix @ x
    return x.reshape(b, h, w, q).permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class _Pattern:
    """Canonical CSR pattern of the neighbour matrix: sorted, distinct columns in every row, as cuSPARSE
    requires. Near the borders clamping maps several neighbours to one pixel; their weights are summed
    into one entry in neighbour order: the first neighbour's weight is gathered, later ones are added
    in one merge round per duplicate rank. Weight indices point into the flat (B, P, H, W) tensor.
    Indices are int32 wherever they fit (a 224 crop has 800k entries; with int64 the CPU product
    also converts them on every call)."""

    pixels: int
    weights: int  # pixels * P
    rows: Tensor  # (pixels + 1,) row starts
    columns: Tensor  # (nnz,)
    first: Tensor  # (nnz,): the weight of each entry's first neighbour
    merges: tuple[tuple[Tensor, Tensor], ...]  # (weight index, entry) of the 2nd, 3rd... duplicates

    def tiled(self, batch: int) -> "_Pattern":
        """The block-diagonal pattern of `batch` images of this shape."""
        nnz = self.columns.numel()
        dtype = torch.int32 if batch * self.weights < 2**31 else torch.int64

        def tile(x: Tensor, step: int) -> Tensor:
            offsets = torch.arange(batch, device=x.device, dtype=dtype).view(batch, 1) * step
            return (x.to(dtype).view(1, -1) + offsets).reshape(-1)

        end = torch.full((1,), batch * nnz, dtype=dtype, device=self.rows.device)
        return _Pattern(
            pixels=batch * self.pixels, weights=batch * self.weights,
            rows=torch.cat([tile(self.rows[:-1], nnz), end]), columns=tile(self.columns, self.pixels),
            first=tile(self.first, self.weights),
            merges=tuple((tile(src, self.weights), tile(dst, nnz)) for src, dst in self.merges),
        )


# A pattern takes ~19 MB for a 336x448 image; shapes repeat across crops and images. Bounded by
# bytes, so a corpus of many photo shapes keeps its common ones (pipeline.engine.shape_cache).
@shape_cache(PATTERN_CACHE_MB)
def _pattern(h: int, w: int, dilations: tuple[int, ...], device: str) -> _Pattern:
    ys = torch.arange(h).view(h, 1)
    xs = torch.arange(w).view(1, w)
    cols = torch.stack([((ys + dy * d).clamp(0, h - 1) * w + (xs + dx * d).clamp(0, w - 1)).reshape(-1)
                        for d in dilations for dy, dx in _OFFSETS], dim=1)  # (HW, P), replicate padding
    n, p = cols.shape
    ordered, order = cols.sort(dim=1, stable=True)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    entry = first.reshape(-1).cumsum(0).reshape(n, p) - 1  # entry of each sorted slot
    slot = torch.arange(p).expand(n, p)
    rank = slot - (slot * first).cummax(dim=1).values  # 0 for a column's first neighbour, then 1, 2...
    src = order * n + torch.arange(n).view(n, 1)  # flat (neighbour, pixel) index of each sorted slot
    rows = torch.cat([torch.zeros(1, dtype=torch.long), first.sum(1).cumsum(0)])
    dtype = torch.int32 if n * p < 2**31 else torch.int64

    def put(x: Tensor) -> Tensor:
        return x.to(device=device, dtype=dtype)

    merges = tuple((put(src[rank == r]), put(entry[rank == r])) for r in range(1, int(rank.max()) + 1))
    return _Pattern(pixels=n, weights=n * p, rows=put(rows), columns=put(ordered[first]),
                    first=put(src[first]), merges=merges)


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    # dynamic=None: the first shape compiles static; a second shape recompiles once with symbolic
    # sizes, so batch sizes and image sizes share one kernel per function in a process.
    return torch.compile(fn, dynamic=None)
