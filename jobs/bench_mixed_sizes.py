"""Whole-image mode on a corpus of mixed photo sizes: how full the ViT batches are, and images/s.

Three runs of the real shard stage (`ShardLabeler`) on the golden tiny CLIP, whole-image NACLIP +
RCS + SFR, 21 classes, batch 8:
  uniform    every photo 4:3 landscape (one inference shape): the ceiling
  mixed      the photo mix of a phone / camera / web corpus, batches cut in input order
             (io.prefetch_batches=1: what the stage did before it regrouped by shape)
  grouped    the same mix, regrouped by inference shape in windows of io.prefetch_batches=2 batches
             (the default; a real shard of ~1,000 photos has dozens of windows, so the first
             window's wait and the last one's encoding are a small share; keep --images >= 64)
Photos are stored at 1/8 of their size (the engine resizes every one to a 336 short side first,
so the inference shapes are the real ones and decoding stays cheap). Each run is repeated;
medians with min-max. Usage: python jobs/bench_mixed_sizes.py [--images 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.engine.predictor import Segmenter, _resized
from pipeline.io.output_dir import OutputDir
from pipeline.io.shards import ShardSpec
from pipeline.io.tarfiles import write_tar
from pipeline.run.stage import ShardLabeler

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "golden" / "tiny_clip_openai.pt"
# (width, height) of common cameras, phones (both orientations) and web images
PHOTO_SIZES = [(4032, 3024), (3024, 4032), (4000, 3000), (1920, 1080), (1080, 1920), (3264, 2448),
               (2048, 1536), (1600, 1200), (6000, 4000), (5472, 3648), (1024, 768), (800, 600),
               (640, 480), (500, 375), (3840, 2160), (3000, 3000), (1080, 1350), (1024, 683)]


def corpus(path: Path, sizes: list[tuple[int, int]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    members = []
    for i, (w, h) in enumerate(sizes):
        small = Image.fromarray(rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8))
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=90)
        members.append((f"{i:05d}.jpg", buf.getvalue()))
    write_tar(path, members)


class ForwardCounter:
    """Counts the crops in every ViT forward of the engine it wraps."""

    def __init__(self, seg: Segmenter):
        self.sizes: list[int] = []
        inner = seg.crop_logits

        def counted(crops):
            self.sizes.append(len(crops))
            return inner(crops)

        seg.crop_logits = counted  # type: ignore[method-assign]


def run_once(seg: Segmenter, cfg, shard: Path, out: Path) -> float:
    labeler = ShardLabeler(seg, cfg, OutputDir(str(out)), "bench")
    try:
        t0 = time.perf_counter()
        result = labeler.label(ShardSpec(str(shard), shard.stem))
        seconds = time.perf_counter() - t0
    finally:
        labeler.close()
    assert result.ok == result.samples, result.error_kinds
    return result.ok / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(1)
    mixed = [PHOTO_SIZES[i] for i in rng.integers(0, len(PHOTO_SIZES), args.images)]
    shapes = {_resized(h // 8, w // 8, 336, 2048) for w, h in mixed}
    print(f"{args.images} photos, {len(shapes)} inference shapes; batch 8, whole image, 21 classes")
    base = [f"model.pretrained={GOLDEN}", "vocabulary.file=voc21", "inference.slide_crop=0", "device=cpu",
            "batch_size=8", "io.decode_threads=1"]
    cases = [("uniform", [(4032, 3024)] * args.images, 1), ("mixed", mixed, 1), ("grouped", mixed, 2)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, sizes, prefetch in cases:
            cfg = load_config(overrides=[*base, f"io.prefetch_batches={prefetch}"])
            seg = Segmenter.from_config(cfg)
            counter = ForwardCounter(seg)
            shard = Path(tmp) / f"{name}.tar"
            corpus(shard, sizes)
            run_once(seg, cfg, shard, Path(tmp) / f"warm-{name}")  # caches and allocator warm
            counter.sizes.clear()
            rates = [run_once(seg, cfg, shard, Path(tmp) / f"{name}-{r}") for r in range(args.repeats)]
            fill = statistics.mean(counter.sizes)
            print(f"{name:8s} {statistics.median(rates):6.2f} images/s (min {min(rates):.2f}, max {max(rates):.2f})"
                  f"  {fill:4.2f} images per ViT forward, {len(counter.sizes) // args.repeats} forwards")


if __name__ == "__main__":
    main()
