"""Fixtures for the labeling pipeline: a shared local Ray, the tiny engine in-process, corpora."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from pipeline.config import Config, load_config
from pipeline.demo_corpus import build_demo_corpus
from pipeline.runner import Progress, run_pipeline

REPO = Path(__file__).resolve().parents[2]
NAMES = ["demo-000000", "demo-000001", "demo-000002"]  # shards of the `corpus` fixture
PER_SHARD = 7


@pytest.fixture(scope="session")
def tiny_cfg(tiny_overrides: list[str]) -> Callable[..., Config]:
    """Config factory: the tiny model plus extra overrides; batches of 4 so shards span batches."""
    def make(*extra: str) -> Config:
        return load_config(overrides=[*tiny_overrides, "batch_size=4", "io.decode_threads=2", *extra])
    return make


@pytest.fixture(scope="session")
def engine(tiny_cfg):
    from pipeline.engine import Segmenter

    return Segmenter.from_config(tiny_cfg())


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the tests that need one (starting one costs ~10 s on 2 cores); stopped at
    the end of the session (tests/conftest.py). Should another fixture stop it in between, a run
    starts its own local Ray, slower but the same."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    return ray


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """3 demo shards of 7 images (64x48); 2 samples are corrupt on purpose."""
    root = tmp_path_factory.mktemp("corpus")
    build_demo_corpus(root / "in", shards=3, per_shard=PER_SHARD, seed=1, size=(64, 48))
    return root / "in"


@pytest.fixture(scope="session")
def reference(ray_local, corpus, tiny_cfg, tmp_path_factory):
    """An uninterrupted run over `corpus` with 2 CPU actors: (OUTPUT, RunSummary, Recorder)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    recorder = Recorder()
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=2"), progress=recorder)
    return out, summary, recorder
