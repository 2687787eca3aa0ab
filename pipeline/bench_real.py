"""`pseudolabel bench --corpus real`: photo-sized JPEGs and benchmark vocabularies.

Two measurements, each with repeats and their spread (min / median / max), since a shared machine
is noisy:
- `post_scaling`: post-processing alone (query logits at the engine's resolution -> label map and
  uint8 confidence at the photo's size) per megapixel and its peak memory, each size in a fresh
  process so that the peak RSS is that size's own; optionally the untiled form for comparison;
- `real_corpus`: the whole stage (`ShardLabeler`) on JPEGs of mixed sizes (0.3-24 MP, textured so
  that their byte sizes are those of photos) for 21/150/171-class vocabularies: host milliseconds
  per image by stage (decode, resize, post-process, encode, write), engine milliseconds, peak RSS;
  with `--set io.jpeg_draft=true` every cell twice, decoded exactly and drafted (column `draft`).
"""
from __future__ import annotations

import io
import multiprocessing
import resource
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pipeline.config import CONF_DIR, Config

VOCABULARIES = {"voc21": 21, "ade20k": 150, "coco_stuff": 171}


def size_for(megapixels: float, aspect: float = 1.5) -> tuple[int, int]:
    """(height, width) of a landscape photo of about `megapixels` at `aspect` = width / height."""
    height = int(round((megapixels * 1e6 / aspect) ** 0.5))
    return height, int(round(height * aspect))


def textured_jpeg(rng: np.random.Generator, height: int, width: int, quality: int = 90) -> bytes:
    """A smooth scene plus fine texture, so the JPEG has a photo's bytes per pixel (~0.3-0.6)."""
    from pipeline.demo_corpus import scene

    base = scene(rng, (max(32, width // 8), max(32, height // 8))).resize((width, height), Image.BICUBIC)
    arr = np.asarray(base).astype(np.int16)
    noise = rng.integers(-14, 15, size=(height, width, 1), dtype=np.int16)
    img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- post-processing alone -------------------------------------------------------------------------

def _post_one(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: banded (and optionally untiled) post-processing of one size."""
    import torch

    from pipeline.config import load_config
    from pipeline.engine.postprocess import BandedPost, PostSettings
    from pipeline.engine.predictor import _resized
    from pipeline.vocabulary import load_vocabulary

    torch.set_num_threads(job["threads"])
    cfg = load_config(overrides=[f"vocabulary.file={CONF_DIR / 'vocabularies' / (job['vocabulary'] + '.txt')}"])
    vocab = load_vocabulary(cfg.vocabulary)
    query_class = torch.tensor(vocab.query_class)
    height, width = job["size"]
    h, w = _resized(height, width, cfg.inference.short_side, cfg.inference.long_side)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((len(query_class), h, w), generator=gen) * 0.05  # cosine-similarity scale
    post = BandedPost(query_class, len(vocab), PostSettings(cfg.inference.logit_scale, 0.0, 0.0,
                                                             cfg.inference.post_band_pixels))
    before = _rss_mb()
    times = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        if job["untiled"]:
            _untiled(logits, query_class, len(vocab), cfg.inference.logit_scale, (height, width))
        else:
            post(logits, (height, width))
        times.append(time.perf_counter() - start)
    return {"seconds": times, "peak_rss_mb": _rss_mb(), "rss_before_mb": before, "queries": len(query_class),
            "classes": len(vocab), "engine_size": (h, w)}


def _untiled(logits: Any, query_class: Any, classes: int, scale: float, out_size: tuple[int, int]) -> None:
    """Today's untiled code path before banding (upsample all, softmax, synonym max, copies)."""
    import torch
    import torch.nn.functional as F

    lg = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)
    probs = torch.softmax(lg[0] * scale, dim=0)
    index = query_class.view(-1, 1, 1).expand_as(probs)
    probs = probs.new_zeros((classes,) + probs.shape[1:]).scatter_reduce_(0, index, probs, "amax", include_self=False)
    top, pred = probs.max(dim=0)
    probs = probs / probs.sum(dim=0, keepdim=True)
    conf = probs.gather(0, pred[None])[0]
    pred.cpu().numpy().astype(np.int64), conf.cpu().numpy()


def post_scaling(megapixels: Sequence[float], vocabulary: str = "ade20k", repeats: int = 3, threads: int = 2,
                 untiled_up_to_mp: float = 0.0) -> list[dict[str, Any]]:
    """Per size: ms per megapixel (spread over repeats) and peak RSS of its own process."""
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for mp in megapixels:
        for untiled in ([False, True] if mp <= untiled_up_to_mp else [False]):
            job = {"size": size_for(mp), "vocabulary": vocabulary, "repeats": repeats, "threads": threads,
                   "untiled": untiled}
            with ctx.Pool(1) as pool:
                got = pool.apply(_post_one, (job,))
            pixels = job["size"][0] * job["size"][1]
            rows.append({"megapixels": pixels / 1e6, "size": job["size"], "path": "untiled" if untiled else "banded",
                         "ms_per_mp": spread([1000 * s / (pixels / 1e6) for s in got["seconds"]]),
                         "peak_rss_mb": got["peak_rss_mb"], "rss_before_mb": got["rss_before_mb"],
                         "queries": got["queries"], "classes": got["classes"]})
    return rows


def format_post_scaling(rows: list[dict[str, Any]]) -> str:
    lines = ["post-processing (%d queries -> %d classes), per size in its own process" %
             (rows[0]["queries"], rows[0]["classes"]),
             f"{'MP':>6} {'size':>11} {'path':>8} {'ms/MP min':>10} {'median':>8} {'max':>8} {'peak RSS MB':>12}"
             f" {'vs first':>9}"]
    first = {r["path"]: r["ms_per_mp"]["median"] for r in reversed(rows)}
    for r in rows:
        t = r["ms_per_mp"]
        lines.append(f"{r['megapixels']:6.2f} {r['size'][1]:>5}x{r['size'][0]:<5} {r['path']:>8} {t['min']:10.1f}"
                     f" {t['median']:8.1f} {t['max']:8.1f} {r['peak_rss_mb']:12.0f} {t['median'] / first[r['path']]:8.2f}x")
    return "\n".join(lines)


# -- the whole stage on photo-sized JPEGs ------------------------------------------------------------

@dataclass
class StageTimes:
    """Per-image seconds by stage, over every image of one (size, vocabulary) cell."""

    by_stage: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def real_corpus(cfg: Config, megapixels: Sequence[float], vocabularies: Sequence[str], repeats: int = 2,
                seed: int = 0) -> list[dict[str, Any]]:
    """One shard per (vocabulary, size) of `repeats` JPEGs, labeled by the stage at batch 1."""
    from pipeline.engine import Segmenter
    from pipeline.vocabulary import load_vocabulary

    rng = np.random.default_rng(seed)
    photos = {mp: [textured_jpeg(rng, *size_for(mp)) for _ in range(repeats)] for mp in megapixels}
    drafts = (False, True) if cfg.io.jpeg_draft else (False,)  # drafted cells next to the exact ones
    rows = []
    for name in vocabularies:
        cfg.vocabulary.file = str(CONF_DIR / "vocabularies" / f"{name}.txt")
        seg = Segmenter(*_clip_and_vocab(cfg, load_vocabulary), cfg, _device(cfg))
        seg.predict([np.zeros((336, 448, 3), np.uint8)], return_probs=False)  # warm-up
        for mp in megapixels:
            for draft in drafts:
                rows.append(_corpus_row(seg, cfg, name, mp, photos[mp], draft))
    cfg.io.jpeg_draft = drafts[-1]
    return rows


def _corpus_row(seg: Any, cfg: Config, name: str, mp: float, jpegs: Sequence[bytes], draft: bool) -> dict[str, Any]:
    cfg.io.jpeg_draft = draft
    times = _label_shard(seg, cfg, jpegs)
    return {"vocabulary": name, "classes": seg.num_classes, "megapixels": size_for(mp)[0] * size_for(mp)[1] / 1e6,
            "jpeg_kb": statistics.mean(len(p) for p in jpegs) / 1024, "jpeg_draft": draft,
            "ms": {k: spread([1000 * v for v in vs]) for k, vs in times.by_stage.items()},
            "peak_rss_mb": _rss_mb()}


def _clip_and_vocab(cfg: Config, load_vocabulary: Any) -> tuple[Any, Any]:
    from pipeline.engine.loading import load_clip

    return load_clip(cfg.model), load_vocabulary(cfg.vocabulary)


def _device(cfg: Config) -> Any:
    from pipeline.engine.predictor import resolve_device

    return resolve_device(cfg.device)


def _label_shard(seg: Any, cfg: Config, jpegs: Sequence[bytes]) -> StageTimes:
    from pipeline.io.output_dir import OutputDir
    from pipeline.io.shards import ShardSpec
    from pipeline.io.tarfiles import write_tar

    times = StageTimes()
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "real-000000.tar"
        write_tar(shard, [(f"{i:08d}.jpg", data) for i, data in enumerate(jpegs)])
        saved = cfg.batch_size
        cfg.batch_size = 1
        labeler = _StageClock(seg, cfg, OutputDir(str(Path(tmp) / "out")), times=times)
        try:
            result = labeler.label(ShardSpec(name="real-000000", url=str(shard)))
        finally:
            labeler.close()
            cfg.batch_size = saved
        if result.ok != len(jpegs):
            raise RuntimeError(f"real-corpus benchmark labeled {result.ok} of {len(jpegs)} images")
    return times


def _stage_clock_class() -> type:
    from pipeline.run.stage import ShardLabeler

    class StageClock(ShardLabeler):
        """ShardLabeler recording each image's time per stage; the engine's own timer splits
        inference into resize (preprocess), post-process and the engine proper."""

        def __init__(self, *args: Any, times: StageTimes, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.times = times
            self._lock = threading.Lock()

        def _clock(self, name: str, fn: Any, *args: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self.times.by_stage[name].append(time.perf_counter() - start)

        def _decode(self, sample):
            return self._clock("decode", super()._decode, sample)

        def _predict(self, images, sizes=None):
            timer = self.engine.timer
            timer.reset()
            timer.enabled = True
            start = time.perf_counter()
            try:
                return super()._predict(images, sizes)
            finally:
                total = time.perf_counter() - start
                timer.enabled = False
                pre, post = timer.seconds.get("preprocess", 0.0), timer.seconds.get("postprocess", 0.0)
                with self._lock:
                    self.times.by_stage["resize"].append(pre)
                    self.times.by_stage["postprocess"].append(post)
                    self.times.by_stage["engine"].append(total - pre - post)

        def _encode(self, sample, out):
            return self._clock("encode", super()._encode, sample, out)

        def _write(self, chunk, tar, rows, result):
            return self._clock("write", super()._write, chunk, tar, rows, result)

    return StageClock


def _StageClock(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - a class, built on first use
    return _stage_clock_class()(*args, **kwargs)


STAGES = ("decode", "resize", "engine", "postprocess", "encode", "write")


def format_real_corpus(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [f"realistic corpus on {machine}: ms per image, median (min-max) over the repeats",
             f"{'vocab':>10} {'MP':>6} {'JPEG KB':>8} {'draft':>5} " + " ".join(f"{s:>18}" for s in STAGES)
             + f" {'peak RSS MB':>11}"]
    for r in rows:
        cells = []
        for s in STAGES:
            t = r["ms"].get(s)
            cells.append(f"{t['median']:7.0f} ({t['min']:.0f}-{t['max']:.0f})".rjust(18) if t else " " * 18)
        draft = "yes" if r.get("jpeg_draft") else "no"
        lines.append(f"{r['vocabulary']:>10} {r['megapixels']:6.2f} {r['jpeg_kb']:8.0f} {draft:>5} " + " ".join(cells)
                     + f" {r['peak_rss_mb']:11.0f}")
    return "\n".join(lines)
