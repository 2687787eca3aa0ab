"""The authors' execution structure on our model: the baseline that `pseudolabel bench` calls (a).

ResCLIP's reference code labels one image at a time and sends its crops through the network one
after the other. For each crop it runs every trunk block with an explicit attention map and keeps
all of them (RCS averages four), runs the last block for the first pass, refines that pass with
PAMR by materialising each iteration's 16 shifted copies of the logits, derives the SFR path points
anew and gathers the labels along them, and runs the last block again. This module follows that
structure with the engine's weights and helpers (our own code, not the authors'), so that the
benchmark's speed-ups are measured against it; its labels equal the golden ones and the engine's
(tests/engine/test_reference_path.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.engine.dense_vit import block_with_attention
from pipeline.engine.pamr import _shifted
from pipeline.engine.predictor import PAMR_DILATIONS, SFR_PAMR_STEPS, Segmentation, Segmenter
from pipeline.engine.sfr import patch_cells, path_points, pixel_labels, prior_from_matrix, same_label_matrix
from pipeline.engine.windows import plan_crops


class ReferenceStructure:
    """Labels images like the authors' segmentor: batch 1, crops in sequence, nothing reused across crops
    but the text features and the NACLIP window (which the reference caches too)."""

    def __init__(self, segmenter: Segmenter):
        self.seg = segmenter

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> Segmentation:
        seg, inf = self.seg, self.seg.cfg.inference
        x = seg.prepare(image)
        h, w = x.shape[-2:]
        total = x.new_zeros((len(seg.text), h, w))
        count = x.new_zeros((1, h, w))
        for c in plan_crops(h, w, inf.slide_crop, inf.slide_stride):
            total[:, c.y1 : c.y2, c.x1 : c.x2] += self._crop_logits(x[None, :, c.y1 : c.y2, c.x1 : c.x2])[0]
            count[:, c.y1 : c.y2, c.x1 : c.x2] += 1
        return seg._finish(seg.class_probs(total / count, image.shape[:2], x), return_probs=False)

    def _crop_logits(self, crop: Tensor) -> Tensor:
        seg, model = self.seg, self.seg.model
        size = tuple(crop.shape[-2:])
        grid = model.grid(*size)
        with seg.autocast:
            x = model.embed(crop)
            maps = []
            for blk in model.blocks[:-1]:
                x, attn = block_with_attention(blk, x)
                maps.append(attn)
            rcs = torch.stack([maps[i] for i in model.rcs_layers]).mean(0) if model.rcs_layers else None
            prior = None
            if seg.cfg.method.sfr.enabled:
                first = seg._project(model.head(x, grid, rcs, None), grid, size)
                prior = self._sfr_prior(crop, first)
            return seg._project(model.head(x, grid, rcs, prior), grid, size)

    def _sfr_prior(self, crop: Tensor, first: Tensor) -> Tensor:
        seg, sfr = self.seg, self.seg.cfg.method.sfr
        refined = stacked_pamr(crop.float(), first.float(), SFR_PAMR_STEPS, PAMR_DILATIONS)
        probs = torch.softmax(refined * seg.cfg.inference.logit_scale, dim=1)
        labels = mode_majority(pixel_labels(probs, sfr.temp_thd), seg.patch_size)
        if sfr.delete_same_entity:
            same = gathered_path_check(labels)
        else:
            same = same_label_matrix(labels, delete_same_entity=False)
        return prior_from_matrix(same, seg.cfg.method.gaussian_std)


def mode_majority(labels: Tensor, patch: int) -> Tensor:
    """Per-patch majority label with torch.mode, as the reference computes it. (B, H, W) -> (B, gh, gw)"""
    return torch.mode(patch_cells(labels, patch), dim=-1).values


def gathered_path_check(patch_labels: Tensor) -> Tensor:
    """Same-label matrix with the path check as the reference does it for every crop: derive the path
    points, gather the labels along every path, compare with the start's label. (B, gh, gw) -> (B, N, N)"""
    b, gh, gw = patch_labels.shape
    flat = patch_labels.reshape(b, gh * gw)
    pts = path_points(gh, gw, str(flat.device))
    same = (flat[:, :, None] == flat[:, None, :]).float()
    valid = (flat[:, pts.path] == flat[:, :, None, None]).all(dim=-1)
    return torch.where(valid, same, same * pts.decay)


def stacked_pamr(image: Tensor, logits: Tensor, iterations: int, dilations: Sequence[int]) -> Tensor:
    """PAMR as the published module computes it: every step stacks the (B, Q, P, H, W) neighbour copies."""
    neighbourhood = torch.stack([v for d in dilations for v in _shifted(image, d, True)], dim=2)
    std = neighbourhood.std(dim=2, keepdim=True)
    neighbours = torch.stack([v for d in dilations for v in _shifted(image, d, False)], dim=2)
    aff = torch.softmax((-(image.unsqueeze(2) - neighbours).abs() / (1e-8 + 0.1 * std)).mean(1, keepdim=True), 2)
    for _ in range(iterations):
        logits = (torch.stack([v for d in dilations for v in _shifted(logits, d, False)], dim=2) * aff).sum(2)
    return logits
