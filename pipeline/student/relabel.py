"""The next round's labels: the student relabels the training images, optionally averaged with the
teacher, with flip / multi-scale test-time augmentation (TTA).

Why the student's labels are better than the teacher's: the teacher labels every image alone (its
errors are noise in one image's attention read-out), while the student was fitted to the whole
corpus, so it has averaged those errors out and learned what shapes and textures mean. TTA
averages the student's own per-view noise; averaging with the teacher keeps the teacher's sharper
detail where the student is unsure (the student sees images at a smaller scale).

The labels are written like a `pseudolabel run` output's masks (`DIR/NAME.tar` with
`KEY.label.png` and `KEY.conf.png`, in the teacher's order), and the round gets a `Selection` that
points at them, so the training loader is the same one that reads the teacher's output. The
per-class confidence histogram (for class-balanced selection) is summed while writing, and
`labels.json`, written last, marks the relabeling complete (a re-run reuses it).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from pipeline.errors import UserError
from pipeline.io.atomic import write_atomic
from pipeline.io.tarfiles import write_tar
from pipeline.student.engine import tta_probs
from pipeline.student.selection import ConfidenceHistogram
from pipeline.training.loader import RawSample, iter_shard
from pipeline.training.selection import Selection

log = logging.getLogger(__name__)

LABELS_DONE = "labels.json"


@dataclasses.dataclass(frozen=True)
class RelabelRecipe:
    teacher_weight: float = 0.5  # weight of the teacher's probabilities in the average (0 = student only)
    flip: bool = True  # TTA: also predict the mirrored image
    scales: tuple[float, ...] = (1.0,)  # TTA: student input short sides, as multiples of its own


def mix_teacher(student: torch.Tensor, label: np.ndarray, conf_u8: np.ndarray, teacher_weight: float,
                ignore_index: int) -> torch.Tensor:
    """(1 - w) * student + w * teacher, for student probabilities (B, C, H, W) and the teacher's
    stored labels / confidences (B, H, W). The output keeps no full distribution of the teacher, so
    its is taken as: its confidence on its class, the rest spread evenly over the others; uniform
    where it ignored the pixel (there the student decides alone)."""
    B, C = student.shape[:2]
    lab = torch.from_numpy(label.astype(np.int64))
    conf = torch.from_numpy(conf_u8.astype(np.float32) / 255.0)
    labeled = (lab != ignore_index) & (lab < C)
    rest = torch.where(labeled, (1.0 - conf) / max(1, C - 1), torch.full_like(conf, 1.0 / C))  # (B, H, W)
    mixed = student.cpu() * (1.0 - teacher_weight) + (teacher_weight * rest)[:, None]
    bump = torch.where(labeled, teacher_weight * (conf - rest), torch.zeros_like(conf))
    mixed.scatter_add_(1, torch.where(labeled, lab, torch.zeros_like(lab))[:, None], bump[:, None])
    return mixed


def to_masks(probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, C, H, W) probabilities -> labels (B, H, W) uint8 (uint16 past 255 classes), confidences uint8."""
    conf, pred = probs.max(dim=1)
    dtype = np.uint8 if probs.shape[1] <= 255 else np.uint16
    return pred.numpy().astype(dtype), np.rint(conf.clamp(0, 1).numpy() * 255.0).astype(np.uint8)


def relabel(selection: Selection, engine, out_dir: str | Path, recipe: RelabelRecipe = RelabelRecipe(),
            batch_size: int = 16, progress: Optional[Callable[[int], None]] = None) -> tuple[Selection, ConfidenceHistogram]:
    """Relabel every kept sample of `selection` with `engine` (a StudentEngine) into `out_dir`.

    Returns the Selection over the new masks and their per-class confidence histogram. When
    `out_dir/labels.json` exists the work was done: both are rebuilt from it without predicting.
    `progress(n)` is called with the number of samples done after each shard."""
    out = Path(out_dir)
    info = selection.info
    done = out / LABELS_DONE
    if done.exists():
        record = json.loads(done.read_text())
        if record.get("recipe") != json.loads(json.dumps(dataclasses.asdict(recipe))):
            raise UserError(f"{out} holds labels made with another relabeling recipe ({record.get('recipe')}); "
                            "use the same --teacher-weight/--tta-scales/--no-flip, or a new --out")
        return _selection(selection, out), ConfidenceHistogram(info.num_classes, record["histogram"])
    out.mkdir(parents=True, exist_ok=True)
    hist = ConfidenceHistogram(info.num_classes)
    samples = 0
    for shard in selection.shards:
        members: list[tuple[str, bytes]] = []
        batch: list[RawSample] = []
        for sample in iter_shard(shard):
            if batch and sample.image.shape != batch[0].image.shape or len(batch) >= batch_size:
                members += _label_batch(batch, engine, recipe, info, hist)
                batch = []
            batch.append(sample)
        if batch:
            members += _label_batch(batch, engine, recipe, info, hist)
        write_tar(out / f"{shard.shard}.tar", members)
        samples += len(members) // 2
        if progress is not None:
            progress(samples)
    record = {"samples": samples, "shards": len(selection.shards), "recipe": dataclasses.asdict(recipe),
              "student": engine.model_identity, "histogram": hist.to_list()}
    write_atomic(done, json.dumps(record).encode())  # written last: the relabeling is complete
    return _selection(selection, out), hist


def _label_batch(batch: list[RawSample], engine, recipe: RelabelRecipe, info, hist: ConfidenceHistogram) -> list[tuple[str, bytes]]:
    probs = tta_probs(engine, np.stack([s.image for s in batch]), recipe.flip, recipe.scales).cpu()  # (B, C, H, W)
    if recipe.teacher_weight > 0:
        probs = mix_teacher(probs, np.stack([s.label for s in batch]), np.stack([s.conf for s in batch]),
                            recipe.teacher_weight, info.ignore_index)
    labels, confs = to_masks(probs)
    members = []
    for sample, label, conf in zip(batch, labels, confs):
        hist.add(label, conf, info.ignore_index)
        members.append((f"{sample.key}.label.png", encode_png(label, 1)))
        members.append((f"{sample.key}.conf.png", encode_png(conf, 1)))
    return members


def encode_png(arr: np.ndarray, level: int = 1) -> bytes:
    """uint8 -> "L", uint16 -> 16-bit grayscale PNG (what `decode_label_png` / `decode_conf_png` read)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _selection(teacher: Selection, out: Path) -> Selection:
    """The teacher's selection with every shard's masks read from `out` (same keys and order)."""
    shards = []
    for s in teacher.shards:
        members = {}
        for key in s.keys:
            members[f"{key}.label.png"] = (key, "label")
            members[f"{key}.conf.png"] = (key, "conf")
        shards.append(dataclasses.replace(s, mask_url=str(out / f"{s.shard}.tar"), mask_members=members,
                                          storage_options=dict(s.storage_options)))
    return dataclasses.replace(teacher, shards=shards)
