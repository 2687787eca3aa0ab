"""Throughput benchmark: the authors' structure vs the batched engine vs the whole shard stage.

All paths label the same images in one process:
(a) `single`: the authors' execution structure (`engine.reference_path`): batch 1, crops one after
    the other, explicit attention maps in every block, PAMR by stacked neighbour copies, the SFR
    path points derived and gathered per crop;
(a') `single_engine_kernels`: our kernels on the authors' schedule (batch 1, one crop per forward),
    which separates what the kernels gain from what batching gains;
(b) `engine`: `Segmenter.predict` on pre-decoded images at several batch sizes;
(c) `end_to_end`: `ShardLabeler` on a tar shard of the same images as JPEGs: read, decode, infer,
    encode the PNG masks, write the mask tar and the Parquet manifest.
"""
from __future__ import annotations

import io
import logging
import platform
import resource
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from pipeline.config import Config
from pipeline.engine import Segmenter
from pipeline.engine.costmodel import PEAK_TFLOPS, dims_of, image_flops
from pipeline.engine.reference_path import ReferenceStructure
from pipeline.demo_corpus import scene
from pipeline.io.tarfiles import write_tar
from pipeline.io.shards import ShardSpec
from pipeline.run.stage import ShardLabeler
from pipeline.io.output_dir import OutputDir

log = logging.getLogger(__name__)


@dataclass
class BenchResult:
    device: str
    model: str
    image_size: tuple[int, int]
    images: int
    settings: dict[str, Any]
    single_images_per_s: float = 0.0
    single_engine_kernels_images_per_s: float = 0.0
    engine_by_batch: dict[int, float] = field(default_factory=dict)
    engine_images_per_s: float = 0.0
    engine_best_batch: int = 0
    end_to_end_images_per_s: float = 0.0
    engine_profile: dict[str, float] = field(default_factory=dict)  # section -> share of engine time
    end_to_end_profile: dict[str, float] = field(default_factory=dict)  # stage -> busy seconds per image
    flops_per_image: float = 0.0
    achieved_tflops: float = 0.0
    mfu: Optional[float] = None
    peak_memory_mb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        doc["engine_by_batch"] = {str(k): v for k, v in self.engine_by_batch.items()}
        single = self.single_images_per_s or None  # None: the single-image passes were not run
        doc["speedup_engine_vs_single"] = self.engine_images_per_s / single if single else None
        doc["speedup_end_to_end_vs_single"] = self.end_to_end_images_per_s / single if single else None
        doc["end_to_end_vs_engine"] = self.end_to_end_images_per_s / max(self.engine_images_per_s, 1e-9)
        return doc


def bench_images(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Deterministic procedural scenes, (height, width) = size."""
    rng = np.random.default_rng(seed)
    return [np.asarray(scene(rng, (size[1], size[0]))) for _ in range(n)]


def run_benchmark(cfg: Config, images: Sequence[np.ndarray], batch_sizes: Sequence[int],
                  end_to_end: bool = True, peak_tflops: Optional[float] = None, single: bool = True,
                  profile: bool = True) -> BenchResult:
    """`single`: also the one-image-at-a-time passes (the authors' structure and one crop per
    forward), the baseline of the speedups; the GPU check leaves them to the CPU bench. `profile`:
    the engine's time by section at the best batch size (on CUDA a separate pass, since the
    timer synchronises around every section)."""
    seg = Segmenter.from_config(cfg)
    device = seg.device
    res = BenchResult(
        device=_device_name(device), model=str(seg.model_identity["pretrained"]),
        image_size=tuple(images[0].shape[:2]), images=len(images),
        settings={"method": cfg.method.base, "rcs": cfg.method.rcs.enabled, "sfr": cfg.method.sfr.enabled,
                  "slide_crop": cfg.inference.slide_crop, "slide_stride": cfg.inference.slide_stride,
                  "short_side": cfg.inference.short_side, "precision": cfg.precision,
                  "queries": len(seg.text), "threads": torch.get_num_threads()},
    )
    _reset_peak(device)
    seg.predict(list(images[:1]), return_probs=False)  # warm-up: caches, text features, allocator
    if single:
        res.single_images_per_s = _reference(seg, images)
        res.single_engine_kernels_images_per_s = _one_crop_at_a_time(seg, images)
    inline = profile and device.type != "cuda"  # without synchronisation the timer costs nothing
    for bs in batch_sizes:
        seg.timer.reset()
        seg.timer.enabled = inline
        res.engine_by_batch[bs] = _throughput(seg, images, bs)
        if res.engine_by_batch[bs] >= max(res.engine_by_batch.values()):
            res.engine_best_batch, res.engine_profile = bs, seg.timer.shares()
        seg.timer.enabled = False
    if profile and not inline:
        seg.timer.reset()
        seg.timer.enabled = True
        _throughput(seg, images, res.engine_best_batch)
        res.engine_profile = seg.timer.shares()
        seg.timer.enabled = False
    res.engine_images_per_s = res.engine_by_batch[res.engine_best_batch]
    if end_to_end:
        res.end_to_end_images_per_s, res.end_to_end_profile = _end_to_end(seg, cfg, images, res.engine_best_batch)
    resized = seg.prepare(images[0]).shape[-2:]
    res.flops_per_image = image_flops(dims_of(seg.model.visual), resized[0], resized[1], len(seg.text), cfg)
    res.achieved_tflops = res.flops_per_image * res.engine_images_per_s / 1e12
    peak = peak_tflops or _known_peak(device)
    res.mfu = res.achieved_tflops / peak if peak else None
    res.peak_memory_mb = _peak_memory_mb(device)
    return res


def _reference(seg: Segmenter, images: Sequence[np.ndarray]) -> float:
    ref = ReferenceStructure(seg)
    ref.predict(images[0])  # warm-up
    start = time.perf_counter()
    for img in images:
        ref.predict(img)
    _sync(seg.device)
    return len(images) / (time.perf_counter() - start)


def _one_crop_at_a_time(seg: Segmenter, images: Sequence[np.ndarray]) -> float:
    inf = seg.cfg.inference
    saved = inf.max_crops_per_forward
    inf.max_crops_per_forward = 1
    try:
        return _throughput(seg, images, 1)
    finally:
        inf.max_crops_per_forward = saved


def _throughput(seg: Segmenter, images: Sequence[np.ndarray], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        seg.predict(list(images[i : i + batch]), return_probs=False)
    _sync(seg.device)
    return len(images) / (time.perf_counter() - start)


def write_jpeg_shard(path: Path, images: Sequence[np.ndarray], quality: int = 90) -> Path:
    """One tar of `00000000.jpg, ...`: the benchmarks' input shard."""
    from PIL import Image

    members = []
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        members.append((f"{i:08d}.jpg", buf.getvalue()))
    return write_tar(path, members)


def _end_to_end(seg: Segmenter, cfg: Config, images: Sequence[np.ndarray], batch: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        shard = write_jpeg_shard(Path(tmp) / "bench-000000.tar", images)
        saved = cfg.batch_size
        cfg.batch_size = batch
        labeler = _TimedLabeler(seg, cfg, OutputDir(str(Path(tmp) / "out")))
        try:
            start = time.perf_counter()
            result = labeler.label(ShardSpec(name="bench-000000", url=str(shard)))
            seconds = time.perf_counter() - start
        finally:
            labeler.close()
            cfg.batch_size = saved
        if result.ok != len(images):
            raise RuntimeError(f"end-to-end benchmark labeled {result.ok} of {len(images)} images")
        busy = {k: v / len(images) for k, v in labeler.busy.items()}
        return len(images) / seconds, busy


class _TimedLabeler(ShardLabeler):
    """ShardLabeler that adds up each stage's busy time over all its threads (seconds)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.busy: dict[str, float] = defaultdict(float)
        self._busy_lock = threading.Lock()

    def _timed(self, name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            with self._busy_lock:
                self.busy[name] += time.perf_counter() - start

    def _decode(self, sample):
        return self._timed("decode", super()._decode, sample)

    def _predict(self, images, sizes=None):
        return self._timed("inference", super()._predict, images, sizes)

    def _encode(self, sample, out):
        return self._timed("encode_png", super()._encode, sample, out)

    def _write(self, chunk, tar, rows, result):
        return self._timed("write", super()._write, chunk, tar, rows, result)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _known_peak(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
