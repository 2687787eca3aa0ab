"""Score a student on image shards against ground truth, under `pseudolabel eval`'s metric.

The confusion matrix is built with the same functions and conventions as `evaluate_output`
(`confusion_counts`, `compute_metrics`, `ClassMap`, gt keys matched as is or by last path
component), and the result is an `EvalResult`, so `eval.json` has the same keys (`miou`, ...).
Samples without a gt mask are counted, not scored; undecodable images are counted as failures.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluation.evaluate import EvalResult
from pipeline.evaluation.ground_truth import GT_IGNORE, ClassMap, GtSpec, open_ground_truth
from pipeline.evaluation.metrics import compute_metrics, confusion_counts
from pipeline.io.decode import DecodeLimits, configure_pillow, decode_image
from pipeline.io.reader import ReadReport, iter_samples
from pipeline.io.records import SampleError
from pipeline.io.shards import expand_input

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "webp"]
MAX_PIXELS = 89_478_485


def iter_images(spec: str, extensions: Optional[list[str]] = None) -> Iterator[tuple[str, Optional[np.ndarray]]]:
    """(key, RGB image or None when it cannot be decoded) for every sample of the shards in `spec`."""
    configure_pillow(MAX_PIXELS)
    limits = DecodeLimits(MAX_PIXELS, 1)
    for shard in expand_input(spec):
        report = ReadReport()
        for sample in iter_samples(shard.url, extensions or IMAGE_EXTENSIONS, report):
            if not sample.ok or sample.data is None:
                yield sample.key, None
                continue
            try:
                yield sample.key, decode_image(sample.data, limits).rgb
            except SampleError:
                yield sample.key, None
        if report.unreadable:
            raise UserError(f"cannot read evaluation shard {shard.url}: {report.failure}")


def score_engine(engine: Any, images: str, gt: GtSpec, *, class_map: Any = None, gt_ignore: Optional[int] = 255,
                 batch_size: int = 16, ignore_index: int = 255) -> EvalResult:
    """mIoU etc. of `engine.predict` on the images of `images` (shard spec) against `gt`."""
    names = list(engine.vocabulary.names)
    C = len(names)
    truth = open_ground_truth(gt)
    cmap = ClassMap.identity(C, gt_ignore) if class_map is None else _class_map(class_map, names, gt_ignore)
    confusion = np.zeros((C, C + 1), np.int64)
    counts = {"scored": 0, "missing_gt": 0, "failed": 0, "unmapped": 0}
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        results = engine.predict([img for _, img in batch])
        for (key, _), res in zip(batch, results):
            mapped, n_unmapped = cmap.apply(truth.get(key), key)
            if mapped.shape != res.pred.shape:
                raise UserError(f"sample {key!r}: gt is {mapped.shape[1]}x{mapped.shape[0]} but the image is "
                                f"{res.pred.shape[1]}x{res.pred.shape[0]}")
            counts["unmapped"] += n_unmapped
            confusion[:] += confusion_counts(mapped, res.pred, C, GT_IGNORE, ignore_index)
            counts["scored"] += 1
        batch.clear()

    seen: set[str] = set()
    for key, image in iter_images(images):
        seen.add(key)
        if image is None:
            counts["failed"] += 1
        elif not truth.has(key):
            counts["missing_gt"] += 1
        else:
            batch.append((key, image))
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()
    if not counts["scored"]:
        raise UserError(f"no image of {images} has a ground-truth mask in {truth.description}")
    stems = seen | {k.rsplit("/", 1)[-1] for k in seen}
    missing_prediction = sum(1 for k in truth.keys() if k not in stems)
    return EvalResult(
        class_names=names, confusion=confusion, metrics=compute_metrics(confusion), num_images=counts["scored"],
        missing_gt=counts["missing_gt"], missing_prediction=missing_prediction, failed_with_gt=counts["failed"],
        unmapped_gt_pixels=counts["unmapped"], unmapped_gt_ids=sorted(cmap.unmapped_ids), gt_ignore=gt_ignore,
        output_dir=str(images), ground_truth=truth.description,
        class_map=None if class_map is None else str(class_map),
    )


def _class_map(class_map: Any, names: list[str], gt_ignore: Optional[int]) -> ClassMap:
    from pipeline.evaluation.outputs import DatasetInfo

    info = DatasetInfo(names, [(0, 0, 0)] * len(names), len(names), 255, "uint8",
                       {"vocabulary": [{"index": i, "name": n, "synonyms": [n]} for i, n in enumerate(names)]})
    if isinstance(class_map, dict):
        return ClassMap.from_mapping(class_map, info, gt_ignore)
    return ClassMap.load(class_map, info, gt_ignore)
