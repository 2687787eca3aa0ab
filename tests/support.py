"""Plain helpers shared by the tests: small images, the demo corpus's names, a progress recorder,
reading a `pseudolabel run` OUTPUT back for comparisons, and a faulty engine. Importable by Ray
workers as `tests.support` (test modules themselves are not)."""
from __future__ import annotations

import io
import os

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.io.tarfiles import iter_members
from pipeline.run.runner import Progress

REPO = Path(__file__).resolve().parents[1]
NAMES = ["demo-000000", "demo-000001", "demo-000002"]  # shards of the `corpus` fixture
PER_SHARD = 7


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    arr[: h // 2] = (40, 90, 200)  # a flat region so labels are not pure noise
    return Image.fromarray(arr, "RGB")


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


class Recorder(Progress):
    def __init__(self):
        self.updates, self.finished, self.started = [], [], None

    def start(self, total_shards, skipped):
        self.started = (total_shards, skipped)

    def update(self, samples, ok, errors):
        self.updates.append((samples, ok, errors))

    def shard_finished(self, result):
        self.finished.append(result.shard)


def snapshot(out: Path, names: list[str]) -> dict[str, Any]:
    """Per shard: manifest rows without `labeled_at`, and the mask tar's (member, bytes) list."""
    snap = {}
    for name in names:
        rows = pq.read_table(out / "manifest" / f"{name}.parquet").to_pylist()
        for r in rows:
            r.pop("labeled_at")
        snap[name] = {"rows": rows, "masks": list(iter_members(out / "masks" / f"{name}.tar"))}
    return snap


def assert_same_output(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["rows"] == b[name]["rows"], f"manifest of {name} differs"
        assert [m for m, _ in a[name]["masks"]] == [m for m, _ in b[name]["masks"]], f"members of {name} differ"
        for (member, x), (_, y) in zip(a[name]["masks"], b[name]["masks"]):
            assert x == y, f"{name}/{member} differs"


class _NoMasks:
    """An engine with a bug: predict returns objects without masks."""

    def __init__(self, cfg):
        from pipeline.engine import Segmenter

        self.real = Segmenter.from_config(cfg)
        self.vocabulary, self.num_classes = self.real.vocabulary, self.real.num_classes
        self.model_identity, self.patch_size = self.real.model_identity, self.real.patch_size

    def predict(self, images, return_probs=False):
        return [object() for _ in images]


def broken_engine(cfg):
    return _NoMasks(cfg)


class _Raising(_NoMasks):
    """An engine that broke: every predict call raises (as a device that went bad would)."""

    def predict(self, images, return_probs=False):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def raising_engine(cfg):
    return _Raising(cfg)
