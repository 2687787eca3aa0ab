"""Report charts, drawn with matplotlib's object API on the Agg canvas (no pyplot global state)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_BARS = 40  # class charts show at most this many classes (the largest ones)


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)


def _rgb(color: Sequence[int]) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in color[:3])  # type: ignore[return-value]


def confidence_histogram(
    path: Path, pixel_hist: np.ndarray, image_means: np.ndarray, pixel_note: str
) -> None:
    """Two panels: stored per-pixel confidence (256 uint8 bins) and per-image mean confidence."""
    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    centers = (np.arange(256) + 0.5) / 255.0
    total = max(int(pixel_hist.sum()), 1)
    ax1.bar(centers, pixel_hist / total, width=1 / 255.0, color="#4c72b0")
    ax1.set_xlim(0, 1)
    ax1.set_xlabel("pixel confidence")
    ax1.set_ylabel("share of pixels")
    ax1.set_title(f"Pixel confidence ({pixel_note})", fontsize=10)
    if image_means.size:
        ax2.hist(image_means, bins=min(40, max(5, image_means.size // 2)), range=(0, 1), color="#dd8452")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("mean confidence of an image")
    ax2.set_ylabel("images")
    ax2.set_title(f"Per-image mean confidence ({image_means.size} images)", fontsize=10)
    _save(fig, path)


def class_share_chart(path: Path, names: Sequence[str], colors: Sequence[Sequence[int]], share: np.ndarray) -> None:
    """Horizontal bars of each class's share of labelled pixels (largest first)."""
    order = [i for i in np.argsort(-share, kind="stable") if share[i] > 0][:MAX_BARS]
    fig = Figure(figsize=(7, 0.9 + 0.28 * max(len(order), 1)))
    ax = fig.subplots()
    ax.barh(range(len(order)), [100 * share[i] for i in order], color=[_rgb(colors[i]) for i in order], edgecolor="#333")
    ax.set_yticks(range(len(order)), [names[i] for i in order], parse_math=False)  # names are text, never math
    ax.invert_yaxis()
    ax.set_xlabel("% of labelled pixels")
    ax.set_title("Class pixel share", fontsize=10)
    _save(fig, path)


def iou_chart(path: Path, names: Sequence[str], colors: Sequence[Sequence[int]], iou: Sequence[Optional[float]], miou: Optional[float]) -> None:
    """Horizontal bars of per-class IoU (absent classes left out) with the mIoU as a line."""
    present = [i for i, v in enumerate(iou) if v is not None]
    present.sort(key=lambda i: -float(iou[i]))  # type: ignore[arg-type]
    present = present[:MAX_BARS]
    fig = Figure(figsize=(7, 0.9 + 0.28 * max(len(present), 1)))
    ax = fig.subplots()
    ax.barh(range(len(present)), [100 * float(iou[i]) for i in present], color=[_rgb(colors[i]) for i in present], edgecolor="#333")
    ax.set_yticks(range(len(present)), [names[i] for i in present], parse_math=False)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    title = "Per-class IoU against ground truth"
    if miou is not None:
        ax.axvline(100 * miou, color="#c00", linestyle="--")
        title += f" (dashed: mIoU {100 * miou:.1f}%)"
    ax.set_xlabel("IoU (%)")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def sweep_chart(path: Path, thresholds: Sequence[float], coverage: Sequence[float], accuracy: Sequence[float], miou: Sequence[Optional[float]]) -> None:
    """Coverage, accuracy on covered pixels and mIoU as functions of the confidence threshold."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.plot(thresholds, [100 * c for c in coverage], marker="o", label="coverage")
    ax.plot(thresholds, [100 * a for a in accuracy], marker="s", label="accuracy on covered")
    ax.plot(thresholds, [100 * m if m is not None else np.nan for m in miou], marker="^", label="mIoU")
    ax.set_xlabel("minimum pixel confidence")
    ax.set_ylabel("%")
    ax.set_ylim(0, 103)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Confidence threshold sweep", fontsize=10)
    _save(fig, path)
