"""Host work per image, measured: JPEG draft-mode decoding and PNG encoder settings for mask maps.

    .venv/bin/python jobs/host_options.py [--megapixels 3,12] [--repeats 3] [--agreement]

Draft mode: Pillow's `Image.draft` lets libjpeg scale by 1/2, 1/4 or 1/8 in the DCT domain while
decoding; the engine resizes to a 336 short side anyway, so it can start from the smallest draft
whose short side is still >= 336. `--agreement` labels the same photo both ways with the tiny
golden model (the labels at full size either way) and prints the share of equal labels.
PNG: label maps (uint8 class indices) and confidence maps (uint8) at zlib levels and strategies.
Times are min/median/max over the repeats on a shared machine: read them as ratios.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from pipeline.bench_real import size_for, textured_jpeg

STRATEGIES = {"default": 0, "filtered": 1, "rle": 3}  # zlib strategies (Pillow's compress_type)


def timed(fn, repeats: int) -> tuple[list[float], object]:
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(1000 * (time.perf_counter() - start))
    return times, out


def fmt(times: list[float]) -> str:
    return f"{statistics.median(times):8.1f} ({min(times):.1f}-{max(times):.1f})"


def decode(data: bytes, short_side: int = 0) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        if short_side:
            w, h = img.size
            scale = short_side / min(w, h)
            img.draft("RGB", (int(w * scale + 0.5), int(h * scale + 0.5)))  # libjpeg picks >= this size
        return np.asarray(img.convert("RGB"))


def label_maps(rng: np.random.Generator, height: int, width: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Region-like label map and smooth confidence, as the engine's upsampled outputs look."""
    grid = Image.fromarray(rng.integers(0, classes, (height // 96 + 1, width // 96 + 1)).astype(np.uint8))
    labels = np.asarray(grid.resize((width, height), Image.NEAREST))
    field = Image.fromarray(rng.integers(60, 255, (height // 16 + 1, width // 16 + 1)).astype(np.uint8))
    conf = np.asarray(field.resize((width, height), Image.BILINEAR))
    return labels, conf


def png(arr: np.ndarray, level: int, strategy: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=level, compress_type=strategy)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", default="3,12")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agreement", action="store_true", help="label agreement of draft vs exact decoding")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for mp in (float(v) for v in args.megapixels.split(",")):
        height, width = size_for(mp)
        data = textured_jpeg(rng, height, width)
        full_t, full = timed(lambda: decode(data), args.repeats)
        draft_t, small = timed(lambda: decode(data, 336), args.repeats)
        print(f"{mp:5.1f} MP JPEG {len(data) / 1024:7.0f} KB  decode exact {fmt(full_t)} ms -> {full.shape[1]}x{full.shape[0]}"
              f"   draft {fmt(draft_t)} ms -> {small.shape[1]}x{small.shape[0]}")
        labels, conf = label_maps(rng, height, width, 171)
        for name, arr in (("label", labels), ("conf", conf)):
            for level in (0, 1, 3, 6):
                for strat_name, strat in STRATEGIES.items():
                    if level == 0 and strat:
                        continue
                    t, blob = timed(lambda: png(arr, level, strat), args.repeats)
                    print(f"      {name:5} png level {level} {strat_name:8} {fmt(t)} ms  {len(blob) / 1024:8.0f} KB")
        if args.agreement:
            print(f"      draft-mode label agreement: {agreement(full, small):.4%}")


def agreement(full: np.ndarray, small: np.ndarray) -> float:
    """Share of equal labels at full size: engine on the exact decode vs on the draft decode."""
    from pipeline.config import CONF_DIR, load_config
    from pipeline.engine import Segmenter

    seg = Segmenter.from_config(load_config(str(CONF_DIR / "bench" / "cpu_tiny.yaml"), ["device=cpu"]))
    out_size = full.shape[:2]
    labels = []
    for img in (full, small):
        x = seg.prepare(img)
        labels.append(seg.post(seg.logits([x])[0], out_size).pred)
    return float((labels[0] == labels[1]).mean())


if __name__ == "__main__":
    main()
