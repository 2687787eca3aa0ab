"""Shared test fixtures: the tiny golden CLIP model and a config that runs it fast on CPU."""
from __future__ import annotations

from pathlib import Path

import pytest

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

    if torch.cuda.is_available():
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
