"""Helpers of the S3 fault tests: run `pseudolabel run` in this process (it joins the suite's
Ray), and read an OUTPUT on S3 back as manifest rows and mask members."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from pipeline.io.tarfiles import iter_members
from tests.cluster.cluster_support import TEST_OVERRIDES

CREDENTIALS = "key: testing, secret: testing"  # moto takes any; Ray workers may lack the env variables


@dataclass
class S3Input:
    bucket: str
    url: str  # s3://BUCKET/in/
    names: list[str]  # shard names


def s3_fs(endpoint: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)


def storage_options(endpoint: str, client_attempts: int = 0) -> str:
    """`io.storage_options` for --set; `client_attempts` > 0 caps botocore's own quick retries, so
    that a test's few injected failures reach our retries instead of being absorbed below."""
    retries = f", config_kwargs: {{retries: {{total_max_attempts: {client_attempts}}}}}" if client_attempts else ""
    return f"io.storage_options={{endpoint_url: '{endpoint}', {CREDENTIALS}{retries}}}"


def run_cli(endpoint: str, inp: str, out: str, *extra: str, client_attempts: int = 0) -> int:
    """`pseudolabel run INPUT OUTPUT` with the tiny model, one CPU actor; its exit status."""
    from pipeline.cli import main

    args = ["run", inp, out, "--no-progress", "--max-failure-rate", "0.5", "--set", "ray.cpu_actors=1",
            "--set", storage_options(endpoint, client_attempts)]
    for item in [*TEST_OVERRIDES, *extra]:
        args += ["--set", item]
    return main(args)


def s3_output(endpoint: str, out: str) -> dict[str, Any]:
    """Per shard of an OUTPUT on S3: manifest rows (without `labeled_at`) and mask (member, bytes)."""
    fs = s3_fs(endpoint)
    root = out.removeprefix("s3://").rstrip("/")
    snap = {}
    for path in sorted(fs.ls(f"{root}/manifest", refresh=True)):
        name = path.rsplit("/", 1)[1][: -len(".parquet")]
        rows = pq.read_table(io.BytesIO(fs.cat_file(path))).to_pylist()
        for row in rows:
            row.pop("labeled_at")
        masks = list(iter_members(io.BytesIO(fs.cat_file(f"{root}/masks/{name}.tar"))))
        snap[name] = {"rows": rows, "masks": masks}
    return snap


def s3_stats(endpoint: str, out: str) -> dict[str, Any]:
    return json.loads(s3_fs(endpoint).cat_file(f"{out.removeprefix('s3://').rstrip('/')}/_stats.json"))


def s3_exists(endpoint: str, path: str) -> bool:
    fs = s3_fs(endpoint)
    return fs.exists(path.removeprefix("s3://"))
