"""Fixtures of the fault tests: moto's S3 on loopback (tests/cluster/cluster_support.py), tiny
shards uploaded to it, an uninterrupted reference run over them, and a fault proxy in front."""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from tests.cluster.cluster_support import s3_server, write_shards  # noqa: F401  (s3_server: a fixture)
from tests.faultproxy import FaultProxy
from tests.faults.s3_support import S3Input, run_cli, s3_fs, s3_output


@pytest.fixture(scope="module")
def s3_input(s3_server, tmp_path_factory) -> S3Input:
    """2 shards of 4 samples (one of them not an image) under s3://BUCKET/in/."""
    import boto3

    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    paths = write_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=4, seed=3)
    fs = s3_fs(s3_server)
    for path in paths:
        fs.put_file(str(path), f"{bucket}/in/{path.name}")
    return S3Input(bucket, f"s3://{bucket}/in/", [p.name[: -len(".tar")] for p in paths])


@pytest.fixture(scope="module")
def s3_reference(ray_local, s3_server, s3_input) -> dict:
    """The rows and masks of an uninterrupted run over `s3_input` (no proxy)."""
    out = f"s3://{s3_input.bucket}/reference"
    assert run_cli(s3_server, s3_input.url, out) == 0
    return s3_output(s3_server, out)


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server, lifetime_s=300) as p:
        yield p
