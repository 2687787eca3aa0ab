"""Typed recipe of a student run: a dataclass per concern, presets by name, `KEY=VALUE` overrides.

Validation reuses `pipeline.config.from_dict`, so an unknown key or a bad value is one error line
naming the dotted key (`--set optim.lr=fast` -> "optim.lr: expected a number").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipeline.config import ConfigError, from_dict, parse_override

Arch = Literal["small", "deeplabv3_resnet50"]


@dataclass
class ModelRecipe:
    arch: Arch = "small"  # small: our conv encoder-decoder (CPU); deeplabv3_resnet50: torchvision's (GPU)
    width: int = 32  # channels of the first stage of `small` (stages use 1x, 2x, 3x, 4x)


@dataclass
class DataRecipe:
    short_side: int = 128  # images are resized so their short side has this length, in training and
    # in prediction, so the student always sees objects at one scale (0 = keep the input size)
    crop: int = 112  # training crops: crop x crop pixels out of the resized image
    scale_min: float = 0.5  # a crop covers scale_min..1 of the resized image's area (zoom 1x..1.4x)
    flip: bool = True  # horizontal flips
    color_jitter: float = 0.1  # brightness/contrast jitter amplitude (0 = off)
    min_mean_confidence: float = 0.0  # SampleFilter: drop images whose mean confidence is below this
    num_workers: int = 0  # DataLoader workers (0 = in the training process)


@dataclass
class ConfidenceRecipe:
    """What the loss does with the teacher's per-pixel confidence (the stored conf.png)."""

    min_confidence: float = 0.5  # pixels below it are ignored (the teacher's guess is likely wrong there)
    weight: bool = True  # weight each kept pixel's loss by its confidence
    class_balance: float = 0.0  # per-class weights (pixel share)^-power from the manifests; 0 = off
    class_top_p: float = 0.0  # class-balanced selection: keep each class's most confident share p of
    # its pixels (a per-class threshold from the labels' confidence histogram), on top of
    # min_confidence; 0 = off. Works where one global threshold cannot: an over-confident teacher
    # puts almost every pixel above any global cut, and rare classes are cut harder than stuff.


@dataclass
class ConsistencyRecipe:
    """Mean-teacher consistency on strong augmentations: every pixel teaches, labeled or not.

    An EMA copy of the student predicts the weak (training) view; the student must predict the same
    on a strongly augmented view (colour jitter, noise, a sub-crop that changes the context) wherever
    the EMA copy is confident. Pixels the selection ignored still get this signal."""

    weight: float = 0.0  # lambda of the consistency term (0 = off)
    ema: float = 0.99  # EMA decay of the mean teacher's weights
    threshold: float = 0.8  # the EMA prediction's confidence a pixel needs to be a target
    crop: float = 0.75  # side of the strong view's sub-crop, as a share of the training crop
    jitter: float = 0.3  # amplitude of the strong colour jitter (brightness, contrast, saturation)
    noise: float = 0.03  # std of the gaussian pixel noise of the strong view (images in 0..1)


@dataclass
class OptimRecipe:
    steps: int = 900  # optimiser steps in all
    batch_size: int = 16
    lr: float = 3e-3  # AdamW peak learning rate (linear warm-up, cosine decay)
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    amp: bool = False  # bfloat16 autocast on CUDA


# Chosen on the toy world's validation split with the `cpu` preset (docs/self_training.md: 1x 81.59,
# 1.5x 84.89, 2x 86.20, 2.5x 86.72, 3x 86.33 mIoU; flip and two-scale averages did not add).
DEFAULT_PREDICT_SCALES = (2.5,)
DEFAULT_PREDICT_FLIP = False


@dataclass
class PredictRecipe:
    """How the trained student labels (`predict --student`, `run` with `model.student`, the scores
    of `train`/`selftrain`). Only inference: a finished student or a checkpoint is reused whatever
    these say. Chosen on the validation split of jobs/self_training_rounds.py (docs/self_training.md):
    a larger input than in training gives the 1/4-resolution decoder finer detail on small things."""

    scales: list[float] = field(default_factory=lambda: list(DEFAULT_PREDICT_SCALES))  # input short
    # side(s) as multiples of data.short_side; the probabilities of several are averaged
    flip: bool = DEFAULT_PREDICT_FLIP  # also predict the mirrored image and average


# What cards written before `predict` existed mean: one view at the training short side.
LEGACY_PREDICT = {"scales": [1.0], "flip": False}


@dataclass
class StudentConfig:
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    confidence: ConfidenceRecipe = field(default_factory=ConfidenceRecipe)
    consistency: ConsistencyRecipe = field(default_factory=ConsistencyRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    checkpoint_every: int = 100  # steps between crash-safe checkpoints (DIR/checkpoint.pt)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch's default
    predict: PredictRecipe = field(default_factory=PredictRecipe)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_dict(self) -> dict[str, Any]:
        """What a checkpoint or a finished round must match to be reused: all but `predict`."""
        return training_part(self.to_dict())


def training_part(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe document (a card's, a checkpoint's) without its `predict` section."""
    return {k: v for k, v in recipe.items() if k != "predict"}


# Presets: `cpu` trains in minutes on 2 cores for ~600 small images; `gpu` is the larger network.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {
        "model": {"arch": "deeplabv3_resnet50"},
        "data": {"short_side": 512, "crop": 512, "num_workers": 8},
        "optim": {"steps": 20000, "batch_size": 16, "lr": 1e-3, "warmup_steps": 500, "amp": True},
        "checkpoint_every": 1000,
        "predict": {"scales": [1.0]},  # not yet validated on real photos: one view at the training size
    },
}


def load_student_config(preset: str = "cpu", overrides: Optional[list[str]] = None,
                        base: Optional[dict[str, Any]] = None) -> StudentConfig:
    """Defaults, then `base` (e.g. a resumed run's recipe) or the preset, then `KEY=VALUE` overrides."""
    if base is not None:
        data = _deep_copy(base)
    else:
        if preset not in PRESETS:
            raise ConfigError(f"unknown student preset {preset!r}; known: {', '.join(PRESETS)}")
        data = _deep_copy(PRESETS[preset])
    for item in overrides or []:
        key, value = parse_override(item)
        _set(data, key.split("."), value)
    cfg = from_dict(StudentConfig, data)
    if not cfg.predict.scales or any(not 0.25 <= s <= 8.0 for s in cfg.predict.scales):
        raise ConfigError(f"predict.scales: expected one or more multiples of data.short_side between 0.25 and "
                          f"8, got {cfg.predict.scales}")
    return cfg


def _set(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part} is not a group of keys")
        node = child
    node[parts[-1]] = value


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
