"""Last-block attention of the training-free base methods, with the ResCLIP plug-ins.

All tensors are batch-first: q, k, v are (B, heads, T, head_dim) with T = 1 + patches (class token
first). Priors are (B, 1, T, T) or (T, T) and broadcast over heads.

Order of operations follows the authors' `custom_attn` (clip/model.py), which is also the paper's:
scores -> [SFR mix] -> [+ NACLIP window] -> softmax -> [RCS mix].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class Mix:
    """`tau * ((1 - lam) * A + lam * P)`: how SFR and RCS blend a prior P into attention A."""

    tau: float
    lam: float

    def __call__(self, attn: Tensor, prior: Tensor) -> Tensor:
        return self.tau * ((1 - self.lam) * attn + self.lam * prior)


@dataclass(frozen=True)
class Plugins:
    sfr_prior: Optional[Tensor] = None  # (B, 1, T, T) float16, max-normalised per crop (see sfr.py)
    sfr_mix: Optional[Mix] = None
    rcs_attn: Optional[Tensor] = None  # (B, heads, T, T) mean attention of the RCS layers
    rcs_mix: Optional[Mix] = None
    window: Optional[Tensor] = None  # (T, T) NACLIP Gaussian window prior


def _sfr(scores: Tensor, p: Plugins) -> Tensor:
    if p.sfr_prior is None:
        return scores
    mix = p.sfr_mix
    # The reference multiplies lam by the float16 prior in float16 before adding the float32 term:
    # keep that rounding so that our numbers match its numbers.
    prior_term = (mix.lam * p.sfr_prior).float()
    return mix.tau * ((1 - mix.lam) * scores + prior_term)


def _rcs(attn: Tensor, p: Plugins) -> Tensor:
    return attn if p.rcs_attn is None else p.rcs_mix(attn, p.rcs_attn)


def _scale(q: Tensor) -> float:
    return q.shape[-1] ** -0.5


def vanilla(q: Tensor, k: Tensor, p: Plugins) -> Tensor:
    scores = (q * _scale(q)) @ k.transpose(-2, -1)  # (B, h, T, T)
    return _rcs(torch.softmax(_sfr(scores, p), dim=-1), p)


def clearclip(q: Tensor, k: Tensor, p: Plugins) -> Tensor:
    scores = (q @ q.transpose(-2, -1)) * _scale(q)
    return _rcs(torch.softmax(_sfr(scores, p), dim=-1), p)


def sclip(q: Tensor, k: Tensor, p: Plugins) -> Tensor:
    s = _scale(q)
    attn_q = torch.softmax(_sfr((q @ q.transpose(-2, -1)) * s, p), dim=-1)
    attn_k = torch.softmax(_sfr((k @ k.transpose(-2, -1)) * s, p), dim=-1)
    return _rcs(attn_q + attn_k, p)


def naclip(q: Tensor, k: Tensor, p: Plugins) -> Tensor:
    scores = _sfr((k @ k.transpose(-2, -1)) * _scale(k), p)
    if p.window is not None:
        scores = scores + p.window
    return _rcs(torch.softmax(scores, dim=-1), p)


@dataclass(frozen=True)
class BaseMethod:
    attention: Callable[[Tensor, Tensor, Plugins], Tensor]
    residual: bool  # "w_resi": x + attn, then the MLP; otherwise the block returns the attention output alone
    uses_window: bool = False


# Residual structure as in the authors' code: SCLIP and vanilla keep CLIP's residual and MLP
# ("w_resi"); NACLIP and ClearCLIP drop both ("wo_resi").
BASE_METHODS: dict[str, BaseMethod] = {
    "vanilla": BaseMethod(vanilla, residual=True),
    "sclip": BaseMethod(sclip, residual=True),
    "clearclip": BaseMethod(clearclip, residual=False),
    "naclip": BaseMethod(naclip, residual=False, uses_window=True),
}


def gaussian_window(grid_h: int, grid_w: int, std: float) -> Tensor:
    """NACLIP's prior: exp(-|p_i - p_j|^2 / (2 std^2)) between patches, zero on the class token. (T, T)"""
    rows = torch.arange(grid_h, dtype=torch.float32).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float32).repeat(grid_h)
    dist2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    window = torch.zeros(grid_h * grid_w + 1, grid_h * grid_w + 1)
    window[1:, 1:] = torch.exp(-dist2 / (2 * std**2))
    return window


def attention_map(q: Tensor, k: Tensor) -> Tensor:
    """CLIP's own attention probabilities softmax(q k^T / sqrt(d)), (B, h, T, T)."""
    return torch.softmax((q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1), dim=-1)

