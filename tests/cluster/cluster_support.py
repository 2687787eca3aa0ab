"""Helpers and fixtures for the cluster and object-storage tests: a loopback S3 server, tiny shards, a config."""
from __future__ import annotations

import io
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from pipeline.io.tarfiles import write_tar

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "fixtures" / "golden"
TEST_OVERRIDES = [
    f"model.pretrained={GOLDEN / 'tiny_clip_openai.pt'}",
    f"vocabulary.file={GOLDEN / 'vocab_b.txt'}",
    "inference.short_side=0",
    "inference.slide_crop=0",
    "device=cpu",
    "batch_size=4",
    "io.decode_threads=1",
]
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (random free port) with test credentials in the environment.

    Yields the endpoint URL. The server runs in a thread of this process; children started by the
    tests reach it over loopback.
    """
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the loopback server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def write_shards(folder: Path, n_shards: int, per_shard: int, seed: int = 0,
                 prefix: str = "shard") -> list[Path]:
    """Small WebDataset shards of random images, 48-96 px per side, one broken image per 7 samples."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        members = []
        for i in range(per_shard):
            key = f"{prefix}{s:03d}_{i:04d}"
            if (s * per_shard + i) % 7 == 6:
                data = b"definitely not an image"
            else:
                h, w = rng.integers(48, 97, size=2)
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
                data = buf.getvalue()
            members += [(f"{key}.png", data), (f"{key}.txt", key.encode())]
        paths.append(write_tar(folder / f"{prefix}-{s:06d}.tar", members))
    return paths


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child `pseudolabel` process: the repo importable, quiet threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    env.update(extra)
    return env
