"""Class-balanced pixel selection: per-class confidence thresholds that keep each class's top share.

A global `confidence.min_confidence` fails twice on a labeler like CLIP: an over-confident teacher
puts nearly every pixel above any cut worth making, and where it does cut, it cuts the rare, hard
classes (things) far harder than easy stuff, so the student sees even fewer of them. Class-balanced
self-training (Zou et al., ECCV 2018) instead keeps, per class, the most confident share p of the
pixels labeled with it: every class keeps the same share, and each class's doubtful tail goes.

The confidence is stored as uint8 (round(255 p)), so a per-class histogram of 256 bins is exact and
tiny: `ConfidenceHistogram` sums it over masks, `class_thresholds` turns it into one threshold per
class, and the loss compares each pixel's stored confidence with its class's threshold.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from pipeline.io.atomic import write_atomic
from pipeline.evaluation.outputs import decode_conf_png, decode_label_png, group_members, iter_tar_members

LEVELS = 256  # uint8 confidence levels


class ConfidenceHistogram:
    """int64 (C, 256): labeled pixels per class and stored confidence level."""

    def __init__(self, num_classes: int, counts: Optional[np.ndarray] = None):
        self.num_classes = int(num_classes)
        self.counts = np.zeros((self.num_classes, LEVELS), np.int64) if counts is None else np.asarray(counts, np.int64)
        if self.counts.shape != (self.num_classes, LEVELS):
            raise ValueError(f"histogram shape {self.counts.shape} is not ({self.num_classes}, {LEVELS})")

    def add(self, label: np.ndarray, conf_u8: np.ndarray, ignore_index: int) -> None:
        """Count the pixels of one mask; ignored (and out-of-range) labels are left out."""
        label = np.asarray(label).ravel()
        keep = (label != ignore_index) & (label < self.num_classes)
        cells = label[keep].astype(np.int64) * LEVELS + np.asarray(conf_u8, np.uint8).ravel()[keep]
        self.counts += np.bincount(cells, minlength=self.num_classes * LEVELS).reshape(self.num_classes, LEVELS)

    def merge(self, other: "ConfidenceHistogram") -> None:
        self.counts += other.counts

    @property
    def class_pixels(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    def to_list(self) -> list[list[int]]:
        return self.counts.tolist()


def class_thresholds(hist: ConfidenceHistogram, top_p: float) -> np.ndarray:
    """float32 (C,): per class, the confidence (0..1) at or above which its top share `top_p` lies.

    The threshold is the highest stored level L whose pixels at >= L make up at least `top_p` of
    the class (ties at L are all kept, so a class keeps at least its share, never less). Classes
    without pixels get 0. Compare with the stored confidence as `conf >= threshold`, conf = u8 / 255.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    out = np.zeros(hist.num_classes, np.float32)
    for c in range(hist.num_classes):
        row = hist.counts[c]
        total = int(row.sum())
        if total == 0:
            continue
        at_or_above = np.cumsum(row[::-1])[::-1]  # [L] = pixels with level >= L
        level = int(np.flatnonzero(at_or_above >= top_p * total - 1e-9).max())
        # Half a level below L: the float compare `u8 / 255 >= t` keeps exactly the levels >= L.
        out[c] = max(0.0, (level - 0.5) / 255.0)
    return out


def kept_share(hist: ConfidenceHistogram, thresholds: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
    """float64 (C,): share of each class's pixels that the thresholds (and the global cut) keep."""
    levels = np.arange(LEVELS, dtype=np.float32) / np.float32(255.0)
    share = np.zeros(hist.num_classes)
    for c in range(hist.num_classes):
        total = hist.counts[c].sum()
        if total:
            keep = (levels >= thresholds[c]) & (levels >= np.float32(min_confidence))
            share[c] = hist.counts[c][keep].sum() / total
    return share


def mask_histogram(mask_urls: Iterable[tuple[str, dict[str, tuple[str, str]]]], num_classes: int,
                   ignore_index: int, storage_options: Optional[dict] = None) -> ConfidenceHistogram:
    """Histogram of the (label, conf) members of mask tars: `(url, {member: (key, part)})` pairs.

    Reads masks only (no image is decoded): one pass over the labels, done once per round.
    """
    hist = ConfidenceHistogram(num_classes)
    for url, members in mask_urls:
        for _key, parts in group_members(iter_tar_members(url, members, storage_options), ("label", "conf")):
            hist.add(decode_label_png(parts["label"]), decode_conf_png(parts["conf"]), ignore_index)
    return hist


def selection_histogram(selection, cache: Optional[Path] = None) -> ConfidenceHistogram:
    """Histogram of a `Selection`'s masks, cached as JSON at `cache` (a re-run does not re-read)."""
    info = selection.info
    if cache is not None and cache.exists():
        return ConfidenceHistogram(info.num_classes, json.loads(cache.read_text())["counts"])
    hist = mask_histogram(((s.mask_url, s.mask_members) for s in selection.shards), info.num_classes,
                          info.ignore_index, selection.shards[0].storage_options if selection.shards else None)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"counts": hist.to_list()}).encode())  # random temporary, never followed
    return hist
