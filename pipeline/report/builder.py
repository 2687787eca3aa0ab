"""Gather what the report shows from an output directory (through its format) and write the files.

`build_report` reads the manifests (all rows), a seeded random subset of mask shards' members for
pixel statistics, and the original images of the samples it draws (from each row's
`source_shard`), then writes `index.html`, `img/*.jpg` thumbnails and `plots/*.png` charts into one
folder that opens offline.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.errors import UserError
from pipeline.evaluation.evaluate import EVAL_FILE
from pipeline.io.atomic import write_atomic
from pipeline.io.decode import decode_rgb
from pipeline.io.layout import RowStatus
from pipeline.io.records import SampleError
from pipeline.evaluation.outputs import (
    DatasetInfo, OutputDir, image_members, iter_masks, iter_tar_members, ok_rows, per_shard,
    resolve_source,
)
from pipeline.overlay import blend_lut
from pipeline.report import plots
from pipeline.report.html import render_html

log = logging.getLogger(__name__)

IGNORE_COLOR = (40, 40, 40)


@dataclass
class ReportOptions:
    grid_samples: int = 24  # random ok samples in the overlay grid
    extremes: int = 8  # samples in each of the lowest- and highest-confidence rows
    stats_samples: int = 500  # masks read for per-class mean confidence and the pixel histogram
    thumb_size: int = 256  # longest side of a thumbnail, pixels
    full_size: int = 1600  # longest side of each panel of the larger view a thumbnail links to
    alpha: float = 0.5  # opacity of the class colours over the image
    max_failures: int = 500  # failure rows listed (all are counted)
    seed: int = 0
    images_root: Optional[str] = None  # read input shards from here instead of the recorded source_shard


@dataclass
class Tile:
    """One drawn sample: thumbnail path relative to the report folder and its caption data."""

    shard: str
    key: str
    mean_confidence: float
    classes: list[int]
    src: str = ""  # image | labels | confidence, side by side, thumbnail size
    full: str = ""  # the same three at up to `full_size`, opened by a click
    image_found: bool = False


@dataclass
class ReportData:
    """Everything `render_html` needs; built by `collect`, also handy for tests."""

    output_dir: str
    info: DatasetInfo
    num_rows: int
    num_ok: int
    num_shards: int
    grid: list[Tile]
    lowest: list[Tile]
    highest: list[Tile]
    pixel_share: np.ndarray  # (C,) share of labelled pixels, all ok rows (manifest)
    images_with_class: np.ndarray  # (C,) ok images containing the class
    class_confidence: np.ndarray  # (C,) mean confidence of pixels labelled c (sampled masks), NaN if none
    ignored_share: float  # ignored pixels / all pixels, all ok rows (manifest)
    stats_images: int  # masks read for class_confidence and the pixel histogram
    failures: pd.DataFrame  # error rows (first max_failures)
    num_failures: int
    failure_kinds: dict[str, int]
    evaluation: Optional[dict[str, Any]]  # OUTPUT/eval.json when present
    pixel_hist: np.ndarray  # (256,) stored confidence values of the sampled masks
    image_means: np.ndarray  # per-image mean confidence, all ok rows
    plots: dict[str, str] = field(default_factory=dict)  # chart id -> relative path


def build_report(
    output_dir: str | Path,
    out_dir: str | Path | None = None,
    options: Optional[ReportOptions] = None,
    storage_options: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write the report folder (default OUTPUT/report) and return the path of its index.html."""
    options = options or ReportOptions()
    output = OutputDir(str(output_dir), storage_options)
    if out_dir is None:
        if "://" in str(output_dir):
            raise UserError("the report of a remote output needs --out DIR (a local folder)")
        out_dir = Path(output_dir) / "report"
    out = Path(out_dir)
    for sub in ("img", "plots"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)
    data = collect(output, out, options)
    draw_plots(data, out)
    index = out / "index.html"
    write_atomic(index, render_html(data).encode("utf-8"))
    log.info("report written to %s", index)
    return index


def collect(output: OutputDir, out: Path, options: ReportOptions) -> ReportData:
    info = output.info
    manifest = output.load_manifest()
    ok = ok_rows(manifest)
    rng = np.random.default_rng(options.seed)
    grid_rows = _sample(ok, options.grid_samples, rng)
    by_conf = ok[ok["mean_confidence"].notna()].sort_values("mean_confidence", kind="stable")
    lowest_rows = by_conf.head(options.extremes)
    highest_rows = by_conf.tail(options.extremes).iloc[::-1]
    tiles = {name: [_tile(r) for r in rows.itertuples(index=False)] for name, rows in
             (("grid", grid_rows), ("lowest", lowest_rows), ("highest", highest_rows))}
    drawn = pd.concat([grid_rows, lowest_rows, highest_rows]).drop_duplicates(subset=["shard", "key"])
    stats_rows = _sample(ok, options.stats_samples, rng)
    to_read = pd.concat([stats_rows, drawn]).drop_duplicates(subset=["shard", "key"])

    C = info.num_classes
    conf_sum = np.zeros(C, dtype=np.float64)
    conf_count = np.zeros(C, dtype=np.int64)
    pixel_hist = np.zeros(256, dtype=np.int64)
    stats_keys = set(zip(stats_rows["shard"], stats_rows["key"]))
    drawn_keys = set(zip(drawn["shard"], drawn["key"]))
    small_labels: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # drawn: (label, conf) at full_size
    for shard, rows in per_shard(to_read):
        for key, label, conf in iter_masks(output, str(rows["mask_shard"].iloc[0]), rows):
            if (shard, key) in stats_keys:
                valid = label != info.ignore_index
                lab = label[valid].astype(np.int64)
                conf_sum += np.bincount(lab, weights=conf[valid].astype(np.float64) / 255.0, minlength=C)[:C]
                conf_count += np.bincount(lab, minlength=C)[:C]
                pixel_hist += np.bincount(conf.ravel(), minlength=256)
            if (shard, key) in drawn_keys:
                small_labels[(shard, key)] = (_shrink_label(label, options.full_size),
                                              _shrink_label(conf, options.full_size))

    names = _draw_tiles(output, out, info, drawn, small_labels, tiles, options)
    log.debug("drew %d thumbnails", len(names))

    share, with_class = _class_totals(ok, C)
    total_pixels = float((ok["width"].astype("float64") * ok["height"].astype("float64")).sum())
    ignored = float(ok["ignored_pixels"].fillna(0).sum())
    errors = manifest[manifest["status"] != RowStatus.OK]
    kinds = errors["error"].fillna("unknown").map(lambda e: str(e).split(":", 1)[0].strip() or "unknown")
    evaluation = _read_eval(output)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_conf = np.where(conf_count > 0, conf_sum / np.maximum(conf_count, 1), np.nan)
    data = ReportData(
        output_dir=output.root, info=info, num_rows=len(manifest), num_ok=len(ok),
        num_shards=int(manifest["shard"].nunique()), grid=tiles["grid"], lowest=tiles["lowest"],
        highest=tiles["highest"], pixel_share=share, images_with_class=with_class, class_confidence=class_conf,
        ignored_share=ignored / total_pixels if total_pixels else float("nan"), stats_images=len(stats_rows),
        failures=errors.head(options.max_failures), num_failures=len(errors),
        failure_kinds={str(k): int(v) for k, v in kinds.value_counts().items()}, evaluation=evaluation,
        pixel_hist=pixel_hist, image_means=ok["mean_confidence"].dropna().to_numpy(dtype=np.float64),
    )
    return data


def draw_plots(data: ReportData, out: Path) -> None:
    info = data.info
    plots.confidence_histogram(
        out / "plots" / "confidence_histogram.png", data.pixel_hist, data.image_means,
        f"{data.stats_images} sampled images",
    )
    data.plots["confidence-histogram"] = "plots/confidence_histogram.png"
    plots.class_share_chart(out / "plots" / "class_share.png", info.names, info.colors, data.pixel_share)
    data.plots["class-share-chart"] = "plots/class_share.png"
    ev = data.evaluation
    if ev and isinstance(ev.get("per_class_iou"), dict):
        iou = [ev["per_class_iou"].get(n) for n in info.names]
        plots.iou_chart(out / "plots" / "iou.png", info.names, info.colors, iou, ev.get("miou"))
        data.plots["iou-chart"] = "plots/iou.png"
        sweep = [p for p in ev.get("sweep") or [] if p.get("coverage") is not None]
        if sweep:
            plots.sweep_chart(
                out / "plots" / "sweep.png", [p["threshold"] for p in sweep], [p["coverage"] for p in sweep],
                [p.get("covered_accuracy") or 0.0 for p in sweep], [p.get("miou") for p in sweep],
            )
            data.plots["sweep-chart"] = "plots/sweep.png"


def _sample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= n:
        return frame
    picks = np.sort(rng.choice(len(frame), size=n, replace=False))
    return frame.iloc[picks]


def _tile(row: Any) -> Tile:
    mean = row.mean_confidence
    classes = [] if row.classes is None else [int(c) for c in row.classes]
    return Tile(str(row.shard), str(row.key), float(mean) if mean is not None and not pd.isna(mean) else float("nan"), classes)


def _class_totals(ok: pd.DataFrame, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.zeros(num_classes, dtype=np.float64)
    images = np.zeros(num_classes, dtype=np.int64)
    for classes, counts in zip(ok["classes"], ok["class_pixels"]):
        if classes is None or counts is None:
            continue
        idx = np.asarray(classes, dtype=np.int64)
        keep = (idx >= 0) & (idx < num_classes)
        np.add.at(pixels, idx[keep], np.asarray(counts, dtype=np.float64)[keep])
        images[np.unique(idx[keep])] += 1
    total = pixels.sum()
    return (pixels / total if total else pixels), images


def _thumb_shape(height: int, width: int, limit: int) -> tuple[int, int]:
    scale = min(1.0, limit / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink_label(label: np.ndarray, limit: int) -> np.ndarray:
    h, w = _thumb_shape(*label.shape, limit)
    rows = np.minimum(((np.arange(h) + 0.5) * label.shape[0] / h).astype(np.int64), label.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * label.shape[1] / w).astype(np.int64), label.shape[1] - 1)
    return label[np.ix_(rows, cols)]


def _palette(info: DatasetInfo) -> np.ndarray:
    lut = np.zeros((max(info.num_classes, info.ignore_index + 1), 3), dtype=np.float32)
    lut[: info.num_classes] = np.asarray(info.colors, dtype=np.float32).reshape(-1, 3)
    lut[info.ignore_index] = IGNORE_COLOR
    return lut


def _draw_tiles(
    output: OutputDir, out: Path, info: DatasetInfo, drawn: pd.DataFrame,
    small_labels: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], tiles: dict[str, list[Tile]],
    options: ReportOptions,
) -> dict[tuple[str, str], str]:
    """Per drawn sample, image | labels | confidence side by side: a thumbnail JPEG and a larger
    one it links to (`img/full/`); fills in each tile's `src` and `full`."""
    lut = _palette(info)
    images: dict[tuple[str, str], np.ndarray] = {}
    for shard, rows in per_shard(drawn):
        source = resolve_source(str(rows["source_shard"].iloc[0]), options.images_root)
        try:
            for key, _name, data in iter_tar_members(source, image_members(rows), output.storage_options):
                maps = small_labels.get((shard, key))
                if maps is None:
                    continue
                with Image.fromarray(decode_rgb(data)) as img:
                    images[(shard, key)] = np.asarray(img.resize(maps[0].shape[::-1], Image.BILINEAR))
        except (UserError, OSError, ValueError, SampleError) as exc:
            log.warning("report: original images of shard %s unavailable (%s); drawing masks alone", shard, exc)
    paths: dict[tuple[str, str], str] = {}
    (out / "img" / "full").mkdir(parents=True, exist_ok=True)
    for i, (ident, (label, conf)) in enumerate(sorted(small_labels.items())):
        big = _side_by_side(images.get(ident), label, conf, lut, options.alpha)
        rel, full = f"img/s{i:04d}.jpg", f"img/full/s{i:04d}.jpg"
        Image.fromarray(big).save(out / full, quality=90)
        with Image.fromarray(big) as img:
            h, w = _thumb_shape(big.shape[0], big.shape[1] // 3, options.thumb_size)
            img.resize((3 * w, h), Image.BILINEAR).save(out / rel, quality=85)
        paths[ident] = rel
    for group in tiles.values():
        for tile in group:
            tile.src = paths.get((tile.shard, tile.key), "")
            tile.full = tile.src.replace("img/", "img/full/", 1) if tile.src else ""
            tile.image_found = (tile.shard, tile.key) in images
    return paths


def _side_by_side(image: Optional[np.ndarray], label: np.ndarray, conf: np.ndarray, lut: np.ndarray,
                  alpha: float) -> np.ndarray:
    """(H, 3W, 3) uint8: the image, the labels laid over it, the stored confidence in grey
    (white = 1). Without the image: a light grey panel, and the labels' colours alone."""
    first = image if image is not None else np.full((*label.shape, 3), 220, dtype=np.uint8)
    labels = blend_lut(image, label, lut, alpha)
    grey = np.repeat(conf.astype(np.uint8)[:, :, None], 3, axis=2)
    return np.concatenate([first, labels, grey], axis=1)


def _read_eval(output: OutputDir) -> Optional[dict[str, Any]]:
    if not output.exists(EVAL_FILE):
        return None
    try:
        data = output.read_json(EVAL_FILE)
    except UserError as exc:
        log.warning("ignoring %s: %s", EVAL_FILE, exc)
        return None
    return data if isinstance(data, dict) else None
