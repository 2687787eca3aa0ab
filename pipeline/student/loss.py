"""The confidence-aware loss: per-pixel cross-entropy on the teacher's labels, where

- pixels whose stored confidence is below `min_confidence` are ignored (MaskCLIP+/ReCo+ style:
  the teacher is mostly wrong where it is unsure, and a wrong label teaches the wrong thing);
- kept pixels are optionally weighted by that confidence (a soft version of the same idea);
- pixels below their class's threshold are ignored too (class-balanced selection,
  `pipeline.student.selection`: each class keeps its most confident share of pixels);
- classes are optionally re-weighted by (pixel share)^-power, so rare things are not drowned out
  by stuff; weights are normalised to mean 1 over the classes that occur.

The sum is divided by the number of valid pixels (not the sum of weights), so turning weights on
lowers the effective learning rate on unsure pixels instead of renormalising it away.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.student.config import ConfidenceRecipe


def class_weights(pixel_counts: np.ndarray, power: float) -> Optional[Tensor]:
    """float32 (C,) weights (share)^-power, mean 1 over present classes; None when power is 0."""
    if power <= 0:
        return None
    counts = np.asarray(pixel_counts, np.float64)
    present = counts > 0
    if not present.any():
        return None
    share = counts / counts.sum()
    w = np.ones_like(share)
    w[present] = share[present] ** (-power)
    w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def selected(label: Tensor, conf: Tensor, recipe: ConfidenceRecipe, ignore_index: int,
             class_min: Optional[Tensor] = None) -> Tensor:
    """bool (B, H, W): the pixels the loss learns from (labeled, above the global and class cuts)."""
    valid = label != ignore_index
    if recipe.min_confidence > 0:
        valid &= conf >= recipe.min_confidence
    if class_min is not None:
        safe = torch.where(valid, label, torch.zeros_like(label))
        valid &= conf >= class_min.to(conf.device)[safe]
    return valid


def confidence_loss(logits: Tensor, label: Tensor, conf: Tensor, recipe: ConfidenceRecipe, ignore_index: int,
                    weights: Optional[Tensor] = None, class_min: Optional[Tensor] = None) -> Tensor:
    """logits (B, C, H, W), label int64 (B, H, W), conf float (B, H, W) in 0..1 -> scalar loss.

    class_min: float (C,) per-class confidence thresholds (`selection.class_thresholds`), or None."""
    valid = selected(label, conf, recipe, ignore_index, class_min)
    target = torch.where(valid, label, torch.zeros_like(label))
    per_pixel = F.cross_entropy(logits.float(), target, weight=None, reduction="none")  # (B, H, W)
    w = valid.float()
    if recipe.weight:
        w = w * conf
    if weights is not None:
        w = w * weights.to(logits.device)[target]
    return (per_pixel * w).sum() / valid.sum().clamp(min=1)


def consistency_loss(student_logits: Tensor, target: Tensor, confident: Tensor) -> Tensor:
    """Cross-entropy of the strong view's logits (B, C, h, w) against the mean teacher's labels
    (B, h, w), on the pixels where it was confident; divided by all pixels (FixMatch's
    normalisation: an unsure batch teaches less instead of being re-amplified)."""
    per_pixel = F.cross_entropy(student_logits.float(), target, reduction="none")  # (B, h, w)
    return (per_pixel * confident.float()).sum() / max(1, confident.numel())
