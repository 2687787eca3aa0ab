"""The trained student as a labeling engine: what `ShardLabeler` (pipeline/run/stage.py) and the Ray
actor need (`predict(images) -> [Segmentation]`, `num_classes`, `patch_size`, `vocabulary`,
`model_identity`, `device`), so `pseudolabel run --set model.student=DIR/student.pt` labels a
corpus with it, a second labeling round far cheaper than the CLIP teacher.

Images are resized to the student's short side (as in training) times the recipe's `predict`
scales (several scales, and the mirrored image with `predict.flip`, are averaged), grouped by size
so one forward takes every image of a size, and the probabilities are brought back to each
image's own size.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine.loading import file_sha256
from pipeline.engine.predictor import Segmentation
from pipeline.student.checkpoint import load_student_file
from pipeline.student.config import LEGACY_PREDICT, PredictRecipe, StudentConfig, from_dict
from pipeline.student.data import scaled_size
from pipeline.student.model import MIN_SIDE, build_student, normalize
from pipeline.engine.predictor import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentVocabulary:
    """The classes the student was trained on (the teacher output's vocabulary)."""

    synonyms: tuple[tuple[str, ...], ...]
    colors: list[tuple[int, int, int]]

    @property
    def names(self) -> list[str]:
        return [s[0] for s in self.synonyms]

    def __len__(self) -> int:
        return len(self.synonyms)


class StudentEngine:
    def __init__(self, blob: dict[str, Any], device: str = "auto", batch_size: int = 16,
                 predict: Optional[PredictRecipe] = None):
        """`predict`: how to label, instead of what the card says (cards older than the `predict`
        section mean one view at the training short side)."""
        card = blob["card"]
        self.card = card
        self.recipe: StudentConfig = from_dict(StudentConfig, card["recipe"])
        if predict is None and "predict" not in card["recipe"]:
            predict = from_dict(PredictRecipe, LEGACY_PREDICT)
        self.predict_recipe: PredictRecipe = predict or self.recipe.predict
        self.device = resolve_device(device)
        self.model = build_student(self.recipe.model, int(card["num_classes"]))
        self.model.load_state_dict(blob["state_dict"])
        self.model.to(self.device).eval()
        self.num_classes = int(card["num_classes"])
        self.short_side = int(card.get("short_side", self.recipe.data.short_side))
        self.batch_size = max(1, int(batch_size))
        self.vocabulary = StudentVocabulary(
            tuple(tuple(s) for s in card.get("synonyms") or [[n] for n in card["classes"]]),
            [tuple(int(v) for v in c) for c in card["colors"]],
        )
        path = blob.get("path")
        self.model_identity = {
            "name": f"student:{self.recipe.model.arch}",
            "pretrained": str(path) if path else None,
            "checkpoint_sha256": file_sha256(Path(path)) if path else None,
        }

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto", batch_size: int = 16,
                  predict: Optional[PredictRecipe] = None) -> "StudentEngine":
        return cls(load_student_file(path), device, batch_size, predict)

    @classmethod
    def from_config(cls, cfg: Any) -> "StudentEngine":
        """From a run `Config` whose `model.student` names the student file."""
        return cls.from_file(cfg.model.student, cfg.device, cfg.batch_size)

    @property
    def patch_size(self) -> int:
        return MIN_SIDE[self.recipe.model.arch]

    @property
    def single_view(self) -> bool:
        return list(self.predict_recipe.scales) == [1.0] and not self.predict_recipe.flip

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray], return_probs: bool = False) -> list[Segmentation]:
        """uint8 (H, W, 3) RGB images -> one Segmentation each, at the image's own size."""
        out: list[Optional[Segmentation]] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            groups[tuple(img.shape[:2])].append(i)
        for (h, w), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                part = idx[start: start + self.batch_size]
                batch = np.stack([images[i] for i in part])
                probs = (self._probs(batch, (h, w)) if self.single_view else  # (B, C, h, w)
                         tta_probs(self, batch, self.predict_recipe.flip, self.predict_recipe.scales))
                conf, pred = probs.max(dim=1)
                for j, i in enumerate(part):
                    out[i] = Segmentation(
                        pred=pred[j].cpu().numpy().astype(np.int64),
                        confidence=conf[j].float().cpu().numpy(),
                        probs=probs[j].float().cpu().numpy() if return_probs else None,
                    )
        return out  # type: ignore[return-value]

    def _probs(self, batch: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
        target = scaled_size(size[0], size[1], self.short_side)
        if target != size:
            shrinking = target[0] < size[0]
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=shrinking).clamp_(0, 1)
        logits = self.model(normalize(x))
        if target != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)


@torch.inference_mode()
def tta_probs(engine, images: np.ndarray, flip: bool = True, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """uint8 (B, H, W, 3) images of one size -> float (B, C, H, W) student probabilities averaged
    over the scales and (with `flip`) their mirrors, at the images' own size."""
    H, W = images.shape[1:3]
    x = torch.from_numpy(np.ascontiguousarray(images)).to(engine.device).permute(0, 3, 1, 2).float().div_(255.0)
    total, views = None, 0
    for scale in scales:
        side = round(engine.short_side * scale) if engine.short_side > 0 else round(min(H, W) * scale)
        target = scaled_size(H, W, max(engine.patch_size, side))
        xs = x
        if target != (H, W):
            xs = F.interpolate(x, size=target, mode="bilinear", align_corners=False,
                               antialias=target[0] < H).clamp_(0.0, 1.0)
        for mirrored in ((False, True) if flip else (False,)):
            logits = engine.model(normalize(xs.flip(-1) if mirrored else xs)).float()  # (B, C, h, w)
            if mirrored:
                logits = logits.flip(-1)
            if target != (H, W):
                logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
            views += 1
    return total / views
