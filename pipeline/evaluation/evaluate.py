"""Compare the pseudo-labels of an output directory with ground-truth masks.

`evaluate_output` streams the mask shards of the ok manifest rows that have a gt mask (a shard with
none is not opened), maps gt ids with a `ClassMap` and accumulates one confusion matrix, plus one
per threshold of an optional confidence sweep.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluation.ground_truth import GT_IGNORE, ClassMap, GtSpec, open_ground_truth
from pipeline.evaluation.metrics import Metrics, compute_metrics, confusion_counts, threshold_prediction
from pipeline.io.atomic import write_atomic
from pipeline.io.layout import EVAL_JSON, RowStatus
from pipeline.evaluation.outputs import OutputDir, iter_masks, ok_rows, per_shard

log = logging.getLogger(__name__)

EVAL_FILE = EVAL_JSON


@dataclass
class SweepPoint:
    """Scores after pixels with stored confidence below `threshold` were set to ignore."""

    threshold: float
    metrics: Metrics

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "threshold": self.threshold,
            "coverage": _num(m.coverage),
            "pixel_accuracy": _num(m.pixel_accuracy),
            "covered_accuracy": _num(m.covered_accuracy),
            "miou": _num(m.miou),
            "fwiou": _num(m.fwiou),
        }


@dataclass
class EvalResult:
    """Outcome of `evaluate_output`; `to_dict()` is the `--json` / `eval.json` document."""

    class_names: list[str]
    confusion: np.ndarray  # int64 (C, C + 1): gt rows, predicted columns, last column = predicted ignore
    metrics: Metrics
    num_images: int  # samples scored (ok in the manifest and with a gt mask)
    missing_gt: int  # ok samples without a gt mask (not scored)
    missing_prediction: int  # gt masks whose key is not an ok sample of the output (not scored)
    failed_with_gt: int  # of those, keys whose manifest row is an error
    unmapped_gt_pixels: int  # gt pixels with an id the class map does not list (not scored)
    unmapped_gt_ids: list[int]
    gt_ignore: Optional[int]
    output_dir: str
    ground_truth: str
    class_map: Optional[str] = None
    sweep: list[SweepPoint] = field(default_factory=list)

    @property
    def miou(self) -> float:
        return self.metrics.miou

    @property
    def per_class_iou(self) -> dict[str, Optional[float]]:
        return {name: _num(v) for name, v in zip(_unique_names(self.class_names), self.metrics.iou)}

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        names = _unique_names(self.class_names)
        return {
            "miou": _num(m.miou),
            "per_class_iou": self.per_class_iou,
            "per_class_accuracy": {n: _num(v) for n, v in zip(names, m.accuracy)},
            "pixel_accuracy": _num(m.pixel_accuracy),
            "covered_accuracy": _num(m.covered_accuracy),
            "fwiou": _num(m.fwiou),
            "coverage": _num(m.coverage),
            "confusion": self.confusion.tolist(),
            "confusion_rows": names,
            "confusion_columns": names + ["<ignore>"],
            "gt_pixels": {n: int(v) for n, v in zip(names, m.gt_pixels)},
            "pred_pixels": {n: int(v) for n, v in zip(names, m.pred_pixels)},
            "valid_pixels": m.valid_pixels,
            "num_images": self.num_images,
            "missing_gt": self.missing_gt,
            "missing_prediction": self.missing_prediction,
            "failed_with_gt": self.failed_with_gt,
            "unmapped_gt_pixels": self.unmapped_gt_pixels,
            "unmapped_gt_ids": self.unmapped_gt_ids,
            "gt_ignore": self.gt_ignore,
            "output_dir": self.output_dir,
            "ground_truth": self.ground_truth,
            "class_map": self.class_map,
            "sweep": [p.to_dict() for p in self.sweep],
        }

    def write_json(self, path: str | Path) -> None:
        write_atomic(path, (json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n").encode())


def evaluate_output(
    output_dir: str | Path,
    gt: GtSpec,
    *,
    class_map: str | Path | Mapping[Any, Any] | None = None,
    gt_ignore: Optional[int] = 255,
    sweep_thresholds: Optional[Sequence[float]] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
) -> EvalResult:
    """Score the pseudo-labels of `output_dir` against ground truth `gt`.

    gt: a folder of `KEY.png`, or tar shard(s) with `KEY.label.png` / `KEY.png` (file, folder of
    *.tar, brace pattern, glob, or a list). class_map: YAML file or mapping `gt id -> class index or
    name` (null = ignore); None = gt ids are our class indices. gt_ignore: gt value left out.
    sweep_thresholds: confidences t at which to re-score with pixels of confidence < t ignored.
    """
    output = OutputDir(str(output_dir), storage_options)
    info = output.info
    thresholds = sorted(float(t) for t in (sweep_thresholds or []))
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise UserError(f"sweep threshold {t} is outside 0..1")
    cmap = _class_map(class_map, info, gt_ignore)
    truth = open_ground_truth(gt, storage_options)
    gt_keys = truth.keys()
    if not gt_keys:
        raise UserError(f"ground truth {truth.description} holds no mask")

    manifest = output.load_manifest()
    ok = ok_rows(manifest)
    ok_keys = set(ok["key"].astype(str))
    has_gt = ok["key"].astype(str).map(truth.has)
    scored = ok[has_gt]
    error_keys = set(manifest.loc[manifest["status"] != RowStatus.OK, "key"].astype(str))
    ok_names = ok_keys | {_stem(k) for k in ok_keys}
    error_names = error_keys | {_stem(k) for k in error_keys}
    unmatched_gt = [k for k in gt_keys if k not in ok_names]
    if scored.empty:
        raise UserError(
            f"no ok sample of {output.root} has a ground-truth mask in {truth.description} "
            f"(e.g. output key {next(iter(ok_keys), None)!r}, gt key {next(iter(gt_keys))!r})"
        )

    confusion, sweep_conf, unmapped, n_images = _score(output, scored, truth, cmap, thresholds)
    if unmapped:
        log.warning("%d gt pixels have ids absent from the class map (%s): not scored", unmapped, sorted(cmap.unmapped_ids))
    if n_images < len(scored):
        log.warning("%d of %d scored samples were missing from their mask shards", len(scored) - n_images, len(scored))
    return EvalResult(
        class_names=list(info.names),
        confusion=confusion,
        metrics=compute_metrics(confusion),
        num_images=n_images,
        missing_gt=int(len(ok) - len(scored)),
        missing_prediction=len(unmatched_gt),
        failed_with_gt=sum(1 for k in unmatched_gt if k in error_names),
        unmapped_gt_pixels=unmapped,
        unmapped_gt_ids=sorted(cmap.unmapped_ids),
        gt_ignore=gt_ignore,
        output_dir=str(output_dir),
        ground_truth=truth.description,
        class_map=None if class_map is None else (str(class_map) if not isinstance(class_map, Mapping) else "<mapping>"),
        sweep=[SweepPoint(t, compute_metrics(c)) for t, c in zip(thresholds, sweep_conf)],
    )


def _class_map(class_map: str | Path | Mapping[Any, Any] | None, info: Any, gt_ignore: Optional[int]) -> ClassMap:
    if class_map is None:
        return ClassMap.identity(info.num_classes, gt_ignore)
    if isinstance(class_map, Mapping):
        return ClassMap.from_mapping(class_map, info, gt_ignore)
    return ClassMap.load(class_map, info, gt_ignore)


def _score(output: OutputDir, scored: Any, truth: Any, cmap: ClassMap,
           thresholds: list[float]) -> tuple[np.ndarray, list[np.ndarray], int, int]:
    """Confusion matrix (and one per sweep threshold), unmapped gt pixels and images scored."""
    info = output.info
    C = info.num_classes
    confusion = np.zeros((C, C + 1), dtype=np.int64)
    sweep_conf = [np.zeros_like(confusion) for _ in thresholds]
    unmapped = 0
    n_images = 0
    for _shard, rows in per_shard(scored, "mask_shard"):
        for key, label, conf in iter_masks(output, str(rows["mask_shard"].iloc[0]), rows):
            raw = truth.get(key)
            if raw.shape != label.shape:
                raise UserError(
                    f"sample {key!r}: ground truth is {raw.shape[1]}x{raw.shape[0]} but the pseudo-label is "
                    f"{label.shape[1]}x{label.shape[0]} (width x height); gt masks must be at the original image size"
                )
            mapped, n_unmapped = cmap.apply(raw, key)
            unmapped += n_unmapped
            confusion += _counts(mapped, label, C, info.ignore_index, key)
            for acc, t in zip(sweep_conf, thresholds):
                acc += _counts(mapped, threshold_prediction(label, conf, t, info.ignore_index), C, info.ignore_index, key)
            n_images += 1
    return confusion, sweep_conf, unmapped, n_images


def _counts(gt: np.ndarray, pred: np.ndarray, num_classes: int, pred_ignore: int, key: str) -> np.ndarray:
    try:
        return confusion_counts(gt, pred, num_classes, GT_IGNORE, pred_ignore)
    except ValueError as exc:
        raise UserError(f"sample {key!r}: {exc}") from exc


def _stem(key: str) -> str:
    """Last path component of a sample key (gt folders often drop the shard-internal directory)."""
    return key.rsplit("/", 1)[-1]


def _num(value: float) -> Optional[float]:
    value = float(value)
    return None if math.isnan(value) else round(value, 6)


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for i, name in enumerate(names):
        out.append(name if name not in seen else f"{name}#{i}")
        seen.setdefault(name, i)
    return out


def format_table(result: EvalResult) -> str:
    """Plain-text summary: per-class rows, totals, and the sweep when there is one."""
    names = _unique_names(result.class_names)
    m = result.metrics
    width = max([len(n) for n in names] + [5])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'gt px':>10}  {'pred px':>10}"]
    for name, iou, acc, g, p in zip(names, m.iou, m.accuracy, m.gt_pixels, m.pred_pixels):
        lines.append(f"{name:<{width}}  {_pct(iou):>7}  {_pct(acc):>7}  {int(g):>10}  {int(p):>10}")
    lines.append("")
    lines.append(
        f"mIoU {_pct(m.miou)}   pixel acc {_pct(m.pixel_accuracy)}   fwIoU {_pct(m.fwiou)}   "
        f"coverage {_pct(m.coverage)}   acc on covered {_pct(m.covered_accuracy)}"
    )
    lines.append(
        f"{result.num_images} images scored; {result.missing_gt} ok samples without gt; "
        f"{result.missing_prediction} gt masks without an ok sample ({result.failed_with_gt} failed in the run)"
        + (f"; {result.unmapped_gt_pixels} gt pixels of unmapped ids {result.unmapped_gt_ids}" if result.unmapped_gt_pixels else "")
    )
    if result.sweep:
        lines.append("")
        lines.append(f"{'min conf':>8}  {'coverage':>8}  {'acc on covered':>14}  {'pixel acc':>9}  {'mIoU':>7}")
        for p in result.sweep:
            pm = p.metrics
            lines.append(
                f"{p.threshold:>8.2f}  {_pct(pm.coverage):>8}  {_pct(pm.covered_accuracy):>14}  "
                f"{_pct(pm.pixel_accuracy):>9}  {_pct(pm.miou):>7}"
            )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(float(value)) else f"{100 * float(value):.2f}"
