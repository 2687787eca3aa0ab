"""`pseudolabel bench --host`: the host's work per labeled photo, with the GPU taken out.

An instant engine hands the real shard stage precomputed, engine-like label and confidence maps
(smooth class regions from low-resolution logits upsampled bilinearly, as the Segmenter's are),
at the size the stage asks for, and decoding is replaced by a ready array of the photo's size, so
what is left is what a GPU host's cores must do per image besides decoding: handle the outputs,
encode the mask PNGs, write the mask tar and the manifest. Per size, `default` (the settings of
`conf/`) and `reference` (today's full-size maps: labels.max_side=0, confidence_max_side=0) run
alternately in the same process; each repeat labels one shard; figures are medians over repeats.
host_core_ms is process CPU time (every thread) per image; mask_bytes is the mask tar per image.
`--fidelity` adds the share of label pixels equal to the full-size path, with the tiny golden CLIP
on photo-like JPEGs (labels read back at the image size, as every reader does).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.config import Config, load_config
from pipeline.io.output_dir import OutputDir
from pipeline.io.shards import ShardSpec
from pipeline.io.tarfiles import write_tar
from pipeline.run.stage import ShardLabeler

REFERENCE = ["labels.max_side=0", "labels.confidence_max_side=0"]
SHORT_SIDE = 336  # the paper's inference short side: the engine's outputs are smooth at this scale
PATCH = 16


def size_for(megapixels: float, aspect: float = 1.5) -> tuple[int, int]:
    """(height, width) of a landscape photo of `megapixels`."""
    height = int(round((megapixels * 1e6 / aspect) ** 0.5))
    return height, int(round(height * aspect))


def engine_like_maps(height: int, width: int, classes: int = 21, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 labels, uint8 confidence) at (height, width): random logits on the patch grid of the
    inference size, upsampled bilinearly band by band, argmax and top softmax probability; the same
    regions at any output size (same seed), as the Segmenter's post-processing gives."""
    import torch
    import torch.nn.functional as F

    scale = SHORT_SIDE / min(height, width)
    grid = (max(2, int(height * scale) // PATCH), max(2, int(width * scale) // PATCH))
    gen = torch.Generator().manual_seed(seed)
    present = torch.randperm(classes, generator=gen)[:6]  # a photo shows a handful of classes
    logits = torch.randn(1, len(present), *grid, generator=gen) * 4  # (1, K, gh, gw)
    labels = np.empty((height, width), np.uint8)
    conf = np.empty((height, width), np.uint8)
    rows = max(1, (1 << 21) // width)
    full = F.interpolate(logits, size=(height, grid[1]), mode="bilinear", align_corners=False)
    for start in range(0, height, rows):
        band = F.interpolate(full[:, :, start : start + rows], size=(min(rows, height - start), width),
                             mode="bilinear", align_corners=False)[0]
        probs = torch.softmax(band, dim=0)
        top, index = probs.max(dim=0)
        labels[start : start + rows] = present[index].numpy()
        conf[start : start + rows] = torch.round(top * 255).to(torch.uint8).numpy()
    return labels, conf


class InstantEngine:
    """A FullSizeEngine whose outputs are ready at once: precomputed maps per output size."""

    patch_size = PATCH
    batches_by_shape = False
    labels_at_max_side = True  # as the Segmenter: post-processing at the stored size

    def __init__(self, num_classes: int = 21):
        self.num_classes = num_classes
        self._maps: dict[tuple[int, int], Any] = {}

    def inference_size(self, height: int, width: int) -> tuple[int, int]:
        scale = SHORT_SIDE / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def prepare(self, sizes: Sequence[tuple[int, int]]) -> None:
        """Compute the maps outside the timing."""
        for size in sizes:
            if size not in self._maps:
                labels, conf = engine_like_maps(*size, classes=self.num_classes)
                self._maps[size] = SimpleNamespace(pred=labels, confidence=conf, ignored=None,
                                                   mean_confidence=float(conf.mean()) / 255)

    def predict(self, images: Sequence[np.ndarray], return_probs: bool = False,
                out_sizes: Optional[Sequence[tuple[int, int]]] = None, max_side: int = 0) -> list[Any]:
        from pipeline.io.masks import stored_size

        sizes = [tuple(s) for s in out_sizes] if out_sizes is not None else [img.shape[:2] for img in images]
        sizes = [stored_size(*s, max_side) for s in sizes]
        self.prepare(sizes)
        return [self._maps[s] for s in sizes]


class _PredecodedLabeler(ShardLabeler):
    """The real stage with decoding replaced by a ready array of the photo's size."""

    photo: np.ndarray

    def _decode(self, sample: Any) -> Any:
        sample.rgb, sample.source_mode = self.photo, "RGB"
        sample.height, sample.width = self.photo.shape[:2]
        sample.data = None
        return sample


def _stage_config(overrides: Sequence[str]) -> Config:
    return load_config(overrides=["io.decode_threads=2", "batch_size=8", *overrides])


def _one_shard(cfg: Config, engine: InstantEngine, photo: np.ndarray, images: int, root: Path, tag: str) -> tuple[float, float]:
    """(CPU ms per image, mask bytes per image) of labeling one shard of `images` photos."""
    shard = root / f"{tag}.tar"
    write_tar(shard, [(f"k{i:05d}.jpg", b"jpeg") for i in range(images)])
    out = root / f"out-{tag}"
    labeler = _PredecodedLabeler(engine, cfg, OutputDir(str(out)), "bench", fingerprint="bench-host")
    labeler.photo = photo
    try:
        start = time.process_time()
        result = labeler.label(ShardSpec(name=tag, url=str(shard)))
        cpu = time.process_time() - start
    finally:
        labeler.close()
    if result.ok != images:
        raise RuntimeError(f"host bench labeled {result.ok} of {images} images")
    mask_bytes = (out / "masks" / f"{tag}.tar").stat().st_size
    return 1000 * cpu / images, mask_bytes / images


def host_bench(megapixels: Sequence[float], repeats: int = 3, images: int = 8,
               overrides: Sequence[str] = ()) -> dict[str, Any]:
    """{"sizes": [{"megapixels", "height", "width", "default": {...}, "reference": {...}, "ratio": {...}}]}."""
    settings = {"default": _stage_config(overrides), "reference": _stage_config([*overrides, *REFERENCE])}
    engine = InstantEngine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in megapixels:
            height, width = size_for(mp)
            photo = np.zeros((height, width, 3), np.uint8)
            n = max(2, images if mp <= 4 else images // 2)
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
            for name, cfg in settings.items():  # warm-up (and the maps computed) outside the timing
                _one_shard(cfg, engine, photo, 1, Path(tmp), f"warm-{name}-{mp}")
            for r in range(repeats):
                for name, cfg in settings.items():  # alternated: load drifts hit both alike
                    runs[name].append(_one_shard(cfg, engine, photo, n, Path(tmp), f"{name}-{mp}-{r}"))
            row: dict[str, Any] = {"megapixels": mp, "height": height, "width": width, "images": n, "repeats": repeats}
            for name, values in runs.items():
                row[name] = {"host_core_ms": statistics.median(v[0] for v in values),
                             "host_core_ms_range": [min(v[0] for v in values), max(v[0] for v in values)],
                             "mask_bytes": statistics.median(v[1] for v in values)}
            row["ratio"] = {k: row["default"][k] / row["reference"][k] for k in ("host_core_ms", "mask_bytes")}
            row["photos_per_core_s"] = 1000 / row["default"]["host_core_ms"]
            rows.append(row)
    return {"sizes": rows, "default_settings": _label_settings(settings["default"])}


def _label_settings(cfg: Config) -> dict[str, Any]:
    return {"labels.max_side": cfg.labels.max_side, "labels.confidence_max_side": cfg.labels.confidence_max_side,
            "io.png_compression": cfg.io.png_compression}


def label_fidelity(megapixels: Sequence[float], photos: int = 2, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Share of label pixels equal to the full-size path, per size: the tiny golden CLIP labels
    photo-like JPEGs at the image size and at the default stored size, read back at the image size."""
    from pipeline.bench_real import textured_jpeg
    from pipeline.config import CONF_DIR
    from pipeline.engine import Segmenter
    from pipeline.io.decode import DecodeLimits, decode_image
    from pipeline.io.masks import stored_size, to_image_size

    cfg = load_config(str(CONF_DIR / "bench" / "cpu_tiny.yaml"), list(overrides))
    seg = Segmenter.from_config(cfg)
    rng = np.random.default_rng(0)
    rows = []
    for mp in megapixels:
        height, width = size_for(mp)
        shares = []
        for _ in range(photos):
            rgb = decode_image(textured_jpeg(rng, height, width), DecodeLimits(10**9, 1)).rgb
            full = np.asarray(seg.predict([rgb], return_probs=False)[0].pred)
            small = np.asarray(seg.predict([rgb], return_probs=False, max_side=cfg.labels.max_side)[0].pred)
            shares.append(float((to_image_size(small, height, width) == full).mean()))
        rows.append({"megapixels": mp, "stored": list(stored_size(height, width, cfg.labels.max_side)),
                     "equal_share_median": statistics.median(shares), "equal_share_min": min(shares), "photos": photos})
    return rows


def format_host(doc: dict[str, Any]) -> str:
    lines = [f"host work per image, decoding excluded (medians; default = {doc['default_settings']})",
             f"{'MP':>5} {'size':>11} | {'default ms':>10} {'bytes':>9} | {'reference ms':>12} {'bytes':>9} | "
             f"{'ms ratio':>8} {'bytes ratio':>11} | photos/core-s"]
    for r in doc["sizes"]:
        d, ref = r["default"], r["reference"]
        lines.append(f"{r['megapixels']:>5} {r['width']:>5}x{r['height']:<5} | {d['host_core_ms']:>10.1f} "
                     f"{d['mask_bytes']:>9.0f} | {ref['host_core_ms']:>12.1f} {ref['mask_bytes']:>9.0f} | "
                     f"{r['ratio']['host_core_ms']:>8.3f} {r['ratio']['mask_bytes']:>11.3f} | {r['photos_per_core_s']:.0f}")
    for f in doc.get("fidelity", []):
        lines.append(f"label fidelity at {f['megapixels']} MP (stored {f['stored'][1]}x{f['stored'][0]}): "
                     f"{f['equal_share_median']:.4f} of pixels equal to the full-size path (min {f['equal_share_min']:.4f})")
    return "\n".join(lines)
