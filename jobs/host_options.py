"""Host work per image, measured: JPEG draft-mode decoding and PNG encoder settings for mask maps.

    .venv/bin/python jobs/host_options.py [--megapixels 2,6,12,24] [--repeats 5] [--agreement [--photos 3]] [--no-png]

Draft mode (`io.jpeg_draft`): libjpeg scales by 1/2, 1/4 or 1/8 in the DCT domain while decoding,
to the smallest scale that still covers the engine's inference size (336 short side here), so the
engine only downsamples. Decoding is timed through `pipeline.io.decode.decode_image`, exactly and
drafted, as the stage calls it; the ratio is of medians in the same run. `--agreement` labels
`--photos` photo-like JPEGs per size both ways with the tiny golden model (`conf/bench/cpu_tiny.yaml`,
labels at the full size either way, `Segmenter.predict(out_sizes=...)`) and prints the share of
equal label pixels, median (min-max) over the photos.
PNG: label maps (uint8 class indices) and confidence maps (uint8) at zlib levels and strategies.
Times are median (min-max) over the repeats on a shared machine: read them as ratios.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np
from PIL import Image

from pipeline.bench_real import size_for, textured_jpeg
from pipeline.config import CONF_DIR, Config, load_config
from pipeline.engine.predictor import _resized
from pipeline.io.decode import DecodeLimits, configure_pillow, decode_image

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
    parser.add_argument("--megapixels", default="2,6,12,24")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agreement", action="store_true", help="label agreement of draft vs exact decoding")
    parser.add_argument("--photos", type=int, default=3, help="photos per size for --agreement")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG settings")
    args = parser.parse_args()
    cfg = load_config(str(CONF_DIR / "bench" / "cpu_tiny.yaml"), ["device=cpu"])
    seg = _segmenter(cfg) if args.agreement else None
    rng = np.random.default_rng(0)
    for mp in (float(v) for v in args.megapixels.split(",")):
        height, width = size_for(mp)
        photos = [textured_jpeg(rng, height, width) for _ in range(args.photos if args.agreement else 1)]
        print(decode_line(mp, photos[0], cfg, args.repeats))
        if not args.no_png:
            png_lines(rng, height, width, args.repeats)
        if seg is not None:
            shares = [agreement(seg, data) for data in photos]
            print(f"      draft label agreement over {len(shares)} photos: {fmt_share(shares)}")


def limits(cfg: Config, draft: bool) -> DecodeLimits:
    size = (lambda h, w: _resized(h, w, cfg.inference.short_side, cfg.inference.long_side)) if draft else None
    return DecodeLimits(cfg.io.max_image_pixels, 16, size)


def decode_line(mp: float, data: bytes, cfg: Config, repeats: int) -> str:
    configure_pillow(cfg.io.max_image_pixels)
    exact_t, draft_t = [], []
    for _ in range(repeats):  # alternating, so that a busy spell on the shared machine hits both
        (t,), exact = timed(lambda: decode_image(data, limits(cfg, False)), 1)
        exact_t.append(t)
        (t,), drafted = timed(lambda: decode_image(data, limits(cfg, True)), 1)
        draft_t.append(t)
    ratio = statistics.median(exact_t) / statistics.median(draft_t)
    return (f"{mp:5.1f} MP JPEG {len(data) / 1024:6.0f} KB  decode exact {fmt(exact_t)} ms -> {_wxh(exact.rgb)}"
            f"   draft {fmt(draft_t)} ms -> {_wxh(drafted.rgb)}   {ratio:.1f}x faster")


def png_lines(rng: np.random.Generator, height: int, width: int, repeats: int) -> None:
    labels, conf = label_maps(rng, height, width, 171)
    for name, arr in (("label", labels), ("conf", conf)):
        for level in (0, 1, 3, 6):
            for strat_name, strat in STRATEGIES.items():
                if level == 0 and strat:
                    continue
                t, blob = timed(lambda: png(arr, level, strat), repeats)
                print(f"      {name:5} png level {level} {strat_name:8} {fmt(t)} ms  {len(blob) / 1024:8.0f} KB")


def agreement(seg, data: bytes) -> float:
    """Share of equal label pixels at the full size: the exact decode vs the drafted one."""
    exact = decode_image(data, limits(seg.cfg, False))
    drafted = decode_image(data, limits(seg.cfg, True))
    a = seg.predict([exact.rgb], return_probs=False)[0].pred
    b = seg.predict([drafted.rgb], return_probs=False, out_sizes=[drafted.size])[0].pred
    return float((a == b).mean())


def fmt_share(shares: list[float]) -> str:
    return f"{statistics.median(shares):.2%} ({min(shares):.2%}-{max(shares):.2%})"


def _segmenter(cfg: Config):
    from pipeline.engine import Segmenter

    return Segmenter.from_config(cfg)


def _wxh(rgb: np.ndarray) -> str:
    return f"{rgb.shape[1]}x{rgb.shape[0]}"


if __name__ == "__main__":
    main()
