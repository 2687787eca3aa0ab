"""Mean-teacher consistency on strong augmentations (Tarvainen & Valpola 2017; FixMatch's weak/strong
split, Sohn et al. 2020): the pixels the selection ignored still teach.

An exponential moving average (EMA) of the student's weights labels the weak view (the ordinary
training crop); the student must give the same label on a strong view of it: a sub-crop (less
context around every pixel), strong brightness / contrast / saturation jitter and pixel noise.
Only pixels where the EMA model is confident are targets. The EMA model averages the student over
many steps, so its labels are smoother and steadier than the student's own, and it never sees the
strong view, so the student cannot satisfy the term by copying noise.

Everything random is drawn from a generator seeded by (seed, step), so a resumed run is exact.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.student.config import ConsistencyRecipe
from pipeline.student.loss import consistency_loss
from pipeline.student.model import normalize


class MeanTeacher:
    def __init__(self, student: nn.Module, recipe: ConsistencyRecipe, seed: int):
        self.recipe = recipe
        self.seed = int(seed)
        self.model = copy.deepcopy(student).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """EMA of the parameters; buffers (BatchNorm statistics) are copied as they are."""
        d = self.recipe.ema
        for e, s in zip(self.model.parameters(), student.parameters()):
            e.mul_(d).add_(s.detach(), alpha=1.0 - d)
        for e, s in zip(self.model.buffers(), student.buffers()):
            e.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state)

    def loss(self, student: nn.Module, images: Tensor, step: int) -> Tensor:
        """images: the weak view, float (B, 3, H, W) in 0..1 on the device -> scalar loss."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        with torch.no_grad():
            probs = self.model(normalize(images)).float().softmax(dim=1)  # (B, C, H, W)
            conf, target = probs.max(dim=1)
        strong, boxes = strong_view(images, self.recipe, gen)
        rows = torch.stack([target[i, t: t + h, l: l + w] for i, (t, l, h, w) in enumerate(boxes)])
        confident = torch.stack([conf[i, t: t + h, l: l + w] for i, (t, l, h, w) in enumerate(boxes)])
        confident = confident >= self.recipe.threshold
        return consistency_loss(student(normalize(strong)), rows, confident)


def strong_view(images: Tensor, recipe: ConsistencyRecipe, gen: torch.Generator) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
    """(B, 3, h, w) strongly augmented sub-crops of `images` (0..1) and their boxes (top, left, h, w).

    The sub-crop keeps the scale (no resize), so a target pixel maps to exactly one strong pixel;
    what changes is the context the network sees around it."""
    B, _, H, W = images.shape
    h, w = max(1, round(H * recipe.crop)), max(1, round(W * recipe.crop))
    tops = torch.randint(0, H - h + 1, (B,), generator=gen).tolist()
    lefts = torch.randint(0, W - w + 1, (B,), generator=gen).tolist()
    boxes = [(t, l, h, w) for t, l in zip(tops, lefts)]
    crops = torch.stack([images[i, :, t: t + h, l: l + w] for i, (t, l, _, _) in enumerate(boxes)])
    a = recipe.jitter
    shape = (B, 1, 1, 1)
    brightness = ((torch.rand(shape, generator=gen) - 0.5) * a).to(images.device)
    contrast = (1.0 + (torch.rand(shape, generator=gen) * 2 - 1) * a).to(images.device)
    saturation = (1.0 + (torch.rand(shape, generator=gen) * 2 - 1) * a).to(images.device)
    gray = crops.mean(dim=1, keepdim=True)
    out = gray + (crops - gray) * saturation
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    if recipe.noise > 0:
        out = out + torch.randn(out.shape, generator=gen).to(images.device) * recipe.noise
    return out.clamp_(0.0, 1.0), boxes
