"""Shared test fixtures: the tiny golden CLIP model, a config that runs it fast on CPU, one local Ray,
the tiny engine in-process and a small demo corpus with a reference run over it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from pipeline.config import Config, load_config
from pipeline.demo_corpus import build_demo_corpus
from pipeline.run.runner import run_pipeline
from tests.support import PER_SHARD, Recorder, start_suite_ray

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
TINY_MODEL = GOLDEN / "tiny_clip_openai.pt"
TINY_VOCAB = GOLDEN / "vocab_b.txt"
# Whole-image inference at the input size: small images stay small, so tests stay fast on 2 cores.
TINY_OVERRIDES = [
    f"model.pretrained={TINY_MODEL}",
    f"vocabulary.file={TINY_VOCAB}",
    "inference.short_side=0",
    "inference.slide_crop=0",
    "device=cpu",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where CUDA is present; elsewhere they are reported as skipped, with the reason."""
    import torch

    # PSEUDOLABEL_GPU_TEST_DEVICE=cpu: the GPU check's dry run runs the gpu tests' code on the CPU.
    if torch.cuda.is_available() or os.environ.get("PSEUDOLABEL_GPU_TEST_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_end():
    """Tests share one local Ray (started lazily by their fixtures); stop it when the session ends."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


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
    return start_suite_ray(min_cpus=0)  # joins a Ray already running in this process


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
