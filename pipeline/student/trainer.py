"""The student's training loop: AdamW with warm-up and cosine decay, the confidence-aware loss,
crash-safe checkpoints every `checkpoint_every` steps, and an exact resume.

Resume is exact because everything random is a function of (seed, epoch): the loader's shard
order, shuffle buffer and augmentations are seeded per epoch, so a resumed run replays the
interrupted epoch's batches up to where it stopped (skipping them without a step) and continues
with the same data the uninterrupted run would have seen. Progress goes to a callback; bars
belong to the command layer.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from pipeline.errors import UserError
from pipeline.student.checkpoint import CHECKPOINT_FILE, atomic_save, load_data, machine_info, save_student
from pipeline.student.config import StudentConfig, training_part
from pipeline.student.consistency import MeanTeacher
from pipeline.student.loss import class_weights, confidence_loss
from pipeline.student.model import build_student, normalize
from pipeline.timestamps import utc_now_iso
from pipeline.engine.predictor import resolve_device

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float], None]  # (step, total steps, loss of this step)


@dataclass
class TrainData:
    """What the trainer needs to know about its data besides the samples themselves."""

    dataset: IterableDataset  # yields (image, label, confidence) tensors; has set_epoch(e)
    num_classes: int
    ignore_index: int
    class_names: list[str]
    colors: list[tuple[int, int, int]]
    pixel_counts: Optional[np.ndarray] = None  # per-class labeled pixels, for class balancing
    source: dict[str, Any] = field(default_factory=dict)  # for the card: where the labels came from
    synonyms: Optional[list[list[str]]] = None  # per class, for the student's vocabulary
    class_min_confidence: Optional[np.ndarray] = None  # float (C,) per-class thresholds (class_top_p);
    # None with class_top_p > 0: computed from the dataset's masks (`selection.selection_histogram`)


@dataclass
class TrainResult:
    student_path: Path
    card: dict[str, Any]
    seconds: float  # training time over all attempts (resumed runs add up)
    steps: int


def lr_at(cfg: StudentConfig, step: int) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
    return o.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_student(cfg: StudentConfig, data: TrainData, out_dir: str | Path, *, resume: bool = False,
                  progress: Optional[ProgressFn] = None) -> TrainResult:
    """Train, checkpointing to OUT/checkpoint.pt; write OUT/student.pt (+ card.json) at the end."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_student(cfg.model, data.num_classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    weights = class_weights(data.pixel_counts, cfg.confidence.class_balance) if data.pixel_counts is not None else None
    class_min = _class_min(cfg, data)
    mean_teacher = MeanTeacher(model, cfg.consistency, cfg.seed) if cfg.consistency.weight > 0 else None
    state = {"step": 0, "epoch": 0, "batch": 0, "seconds": 0.0, "losses": [], "started_at": utc_now_iso()}
    ckpt_path = out / CHECKPOINT_FILE
    if resume and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, cfg, model, opt, mean_teacher)
        log.info("resumed at step %d of %d (epoch %d, batch %d)", state["step"], cfg.optim.steps, state["epoch"], state["batch"])
    t0 = time.monotonic() - state["seconds"]
    window: list[float] = []
    while state["step"] < cfg.optim.steps:
        data.dataset.set_epoch(state["epoch"])
        loader = DataLoader(data.dataset, batch_size=cfg.optim.batch_size, num_workers=cfg.data.num_workers,
                            drop_last=True, pin_memory=device.type == "cuda")
        seen = 0
        for index, (image, label, conf) in enumerate(loader):
            seen += 1
            if index < state["batch"]:
                continue  # done before the interruption: replayed for the data order, not trained on
            loss = _step(model, opt, cfg, state["step"], image, label, conf, data.ignore_index, weights, device,
                         class_min, mean_teacher)
            state["step"] += 1
            state["batch"] = index + 1
            window.append(loss)
            if len(window) == 25 or state["step"] == cfg.optim.steps:
                state["losses"].append([state["step"], round(float(np.mean(window)), 5)])
                window = []
            if progress is not None:
                progress(state["step"], cfg.optim.steps, loss)
            if state["step"] % max(1, cfg.checkpoint_every) == 0 or state["step"] == cfg.optim.steps:
                state["seconds"] = time.monotonic() - t0
                blob = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                        "recipe": cfg.to_dict()}
                if mean_teacher is not None:
                    blob["mean_teacher"] = mean_teacher.state_dict()
                atomic_save(blob, ckpt_path)
            if state["step"] >= cfg.optim.steps:
                break
        else:
            if seen == 0:
                raise UserError(f"the training data yields no batch of {cfg.optim.batch_size} samples; "
                                "lower optim.batch_size or label more images")
            state["epoch"] += 1
            state["batch"] = 0
    seconds = time.monotonic() - t0
    card = _card(cfg, data, state, seconds, device)
    if class_min is not None:
        card["class_min_confidence"] = [round(float(t), 5) for t in class_min]
    model_cpu = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = save_student(out, model_cpu, card)
    return TrainResult(path, card, seconds, state["step"])


def _class_min(cfg: StudentConfig, data: TrainData) -> Optional[torch.Tensor]:
    """The per-class thresholds of class-balanced selection, or None when it is off."""
    if cfg.confidence.class_top_p <= 0:
        return None
    thresholds = data.class_min_confidence
    if thresholds is None:
        from pipeline.student.selection import class_thresholds, selection_histogram

        selection = getattr(data.dataset, "selection", None)
        if selection is None:
            raise UserError("confidence.class_top_p needs pseudo-labels with confidences (a `pseudolabel run` output)")
        thresholds = class_thresholds(selection_histogram(selection), cfg.confidence.class_top_p)
    log.info("class-balanced selection (top %.0f%% per class): thresholds %s", 100 * cfg.confidence.class_top_p,
             np.round(np.asarray(thresholds), 3).tolist())
    return torch.as_tensor(np.asarray(thresholds, np.float32))


def _step(model, opt, cfg: StudentConfig, step: int, image, label, conf, ignore_index: int, weights, device,
          class_min=None, mean_teacher: Optional[MeanTeacher] = None) -> float:
    for group in opt.param_groups:
        group["lr"] = lr_at(cfg, step)
    model.train()
    raw = image.to(device, non_blocking=True)  # (B, 3, H, W) in 0..1: the weak view
    label, conf = label.to(device, non_blocking=True), conf.to(device, non_blocking=True)
    amp = cfg.optim.amp and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(normalize(raw))
    loss = confidence_loss(logits, label, conf, cfg.confidence, ignore_index, weights, class_min)
    # The consistency term starts after warm-up: the EMA model's early labels are noise.
    if mean_teacher is not None and step >= cfg.optim.warmup_steps:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss + cfg.consistency.weight * mean_teacher.loss(model, raw, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if mean_teacher is not None:
        mean_teacher.update(model)
    return float(loss.detach())


def _load_checkpoint(path: Path, cfg: StudentConfig, model, opt, mean_teacher: Optional[MeanTeacher] = None) -> dict[str, Any]:
    try:
        blob = load_data(path, "checkpoint")  # data only: a pickle that would run code is refused
    except (OSError, RuntimeError, EOFError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc}; delete it to start over") from exc
    if training_part(blob.get("recipe") or {}) != cfg.training_dict():
        raise UserError(f"checkpoint {path} was made with another recipe; resume with the same --preset/--set "
                        "values, or delete the checkpoint to start over")
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    if mean_teacher is not None:
        mean_teacher.load_state_dict(blob["mean_teacher"])
    return dict(blob["state"])


def _card(cfg: StudentConfig, data: TrainData, state: dict[str, Any], seconds: float, device) -> dict[str, Any]:
    return {
        "format": "pseudolabel-student-card-v1",
        "arch": cfg.model.arch,
        "recipe": cfg.to_dict(),
        "classes": list(data.class_names),
        "colors": [list(c) for c in data.colors],
        "synonyms": data.synonyms or [[n] for n in data.class_names],
        "num_classes": data.num_classes,
        "ignore_index": data.ignore_index,
        "short_side": cfg.data.short_side,
        "data": dict(data.source),
        "steps": state["step"],
        "epochs_started": state["epoch"] + 1,
        "loss_curve": state["losses"],
        "train_seconds": round(seconds, 1),
        "started_at": state["started_at"],
        "finished_at": utc_now_iso(),
        "machine": machine_info(device),
    }
