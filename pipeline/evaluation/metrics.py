"""Segmentation metrics from a confusion matrix: pure numpy, no I/O.

Conventions (as in mmsegmentation's `IoUMetric`):
- ground-truth pixels equal to the gt ignore value are left out entirely;
- a prediction equal to the prediction ignore value is a miss for the gt class (it counts in the
  gt class's area but in no predicted class's area), so ignoring pixels never raises IoU;
- a class with no gt pixel and no predicted pixel is absent: its IoU is NaN (null in JSON) and it
  is left out of the mean. A class predicted but absent from gt has IoU 0 and does count.

The confusion matrix has shape (C, C + 1): rows are gt classes, columns are predicted classes and
the last column counts gt-valid pixels whose prediction was ignore.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_counts(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, gt_ignore: int, pred_ignore: int
) -> np.ndarray:
    """(C, C + 1) int64 confusion of one label pair of equal shape.

    `gt` values must be class indices or `gt_ignore`; `pred` values class indices or `pred_ignore`.
    Anything else is a ValueError (callers map foreign ids first, see `ground_truth.ClassMap`).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} differs from prediction shape {pred.shape}")
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    valid = gt != gt_ignore
    gt = gt[valid]
    pred = pred[valid]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        bad = gt[(gt < 0) | (gt >= num_classes)][0]
        raise ValueError(f"gt value {bad} is neither a class index (0..{num_classes - 1}) nor the ignore value {gt_ignore}")
    pred = np.where(pred == pred_ignore, num_classes, pred)
    if pred.size and (pred.min() < 0 or pred.max() > num_classes):
        bad = pred[(pred < 0) | (pred > num_classes)][0]
        raise ValueError(f"predicted value {bad} is neither a class index (0..{num_classes - 1}) nor the ignore value {pred_ignore}")
    cols = num_classes + 1
    counts = np.bincount(gt * cols + pred, minlength=num_classes * cols)
    return counts.reshape(num_classes, cols)


@dataclass
class Metrics:
    """Scores derived from one confusion matrix. Per-class arrays have length C; NaN = absent."""

    iou: np.ndarray  # float64 (C,)
    accuracy: np.ndarray  # float64 (C,): recall of each gt class; NaN where the class has no gt pixel
    miou: float  # NaN when every class is absent
    pixel_accuracy: float  # correct / gt-valid pixels (NaN when there is none)
    fwiou: float  # sum over classes of (gt share * IoU)
    coverage: float  # share of gt-valid pixels whose prediction is not ignore
    covered_accuracy: float  # correct / gt-valid pixels whose prediction is not ignore
    gt_pixels: np.ndarray  # int64 (C,)
    pred_pixels: np.ndarray  # int64 (C,)
    valid_pixels: int  # gt-valid pixels counted


def compute_metrics(confusion: np.ndarray) -> Metrics:
    """All scores of a (C, C + 1) confusion matrix (see module docstring for the conventions)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    num_classes = confusion.shape[0]
    if confusion.shape != (num_classes, num_classes + 1):
        raise ValueError(f"confusion must have shape (C, C + 1), got {confusion.shape}")
    tp = np.diag(confusion[:, :num_classes]).astype(np.float64)
    gt_pixels = confusion.sum(axis=1)  # includes the ignored-prediction column: those are misses
    pred_pixels = confusion[:, :num_classes].sum(axis=0)
    union = gt_pixels + pred_pixels - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        accuracy = np.where(gt_pixels > 0, tp / np.maximum(gt_pixels, 1), np.nan)
    total = int(gt_pixels.sum())
    present = ~np.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else float("nan")
    if total:
        pixel_accuracy = float(tp.sum() / total)
        freq = gt_pixels / total
        fwiou = float(np.sum(freq[gt_pixels > 0] * iou[gt_pixels > 0]))
        covered = total - int(confusion[:, num_classes].sum())
        coverage = covered / total
        covered_accuracy = float(tp.sum() / covered) if covered else float("nan")
    else:
        pixel_accuracy = fwiou = coverage = covered_accuracy = float("nan")
    return Metrics(iou, accuracy, miou, pixel_accuracy, fwiou, coverage, covered_accuracy, gt_pixels, pred_pixels, total)


def threshold_prediction(pred: np.ndarray, conf_u8: np.ndarray, threshold: float, pred_ignore: int) -> np.ndarray:
    """Set pixels whose stored confidence (uint8, p = value / 255) is below `threshold` to ignore."""
    if pred.shape != conf_u8.shape:
        raise ValueError(f"label shape {pred.shape} differs from confidence shape {conf_u8.shape}")
    low = conf_u8.astype(np.float64) / 255.0 < threshold
    return np.where(low, pred_ignore, pred)
