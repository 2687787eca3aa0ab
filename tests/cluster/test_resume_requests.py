"""Resume planning on the loopback S3 costs listing pages, not one GET per completion record.

Requests are counted as they leave the client (botocore's before-send event: every HTTP request,
paginated LISTs included)."""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest

from pipeline.io.layout import ShardStatus, done_path
from pipeline.io.records import DoneRecord, ShardResult
from pipeline.io.shards import ShardSpec
from pipeline.io.storage import Storage
from pipeline.run.done_index import INDEX_PATH, load_done_index
from pipeline.run.runner import _done_records

from cluster_support import REPO

pytestmark = pytest.mark.timeout(240)
N = 1500  # two LIST pages of 1,000


def _record(i: int) -> bytes:
    result = ShardResult(f"s{i:05d}", f"s3://in/s{i:05d}.tar", ShardStatus.DONE, samples=10, ok=9, errors=1,
                         worker="w", class_pixels=[i, 1], error_kinds={"decode": 1})
    return DoneRecord.of(result, "fp-1").to_json()


class Requests:
    def __init__(self, storage: Storage):
        storage.fs.ls(storage.root.split("/")[0])  # opens the client
        self.counts: collections.Counter[str] = collections.Counter()
        storage.fs.s3.meta.events.register("before-send.s3", self._count)

    def _count(self, request, **_kwargs):
        self.counts[request.method] += 1

    def reset(self) -> dict[str, int]:
        out, self.counts = dict(self.counts), collections.Counter()
        return out


@pytest.fixture
def output(s3_server, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    root = f"{s3_bucket}/out"
    fs.pipe({f"{root}/{done_path(f's{i:05d}')}": _record(i) for i in range(N)})
    return f"s3://{root}", {"endpoint_url": s3_server}


def test_no_op_resume_lists_and_reads_one_index(output):
    url, opts = output
    storage = Storage(url, opts)
    shards = [ShardSpec(url=f"s3://in/s{i:05d}.tar", name=f"s{i:05d}") for i in range(N)]
    requests = Requests(storage)
    first = _done_records(storage, shards)  # no index yet: every record once, in one batched read
    cold = requests.reset()
    assert len(first) == N and first.records_read == N
    assert cold.get("GET", 0) >= N and storage.exists(INDEX_PATH)

    again = _done_records(storage, shards)  # the no-op resume
    warm = requests.reset()
    assert again.records_read == 0 and len(again) == N
    assert warm.get("PUT", 0) == 0  # nothing changed: the index is not rewritten
    assert sum(warm.values()) <= 2 + 3, warm  # 2 LIST pages, the index GET (+ HEAD/retries slack)
    rows = {r["shard"]: r for r in again.values()}
    assert rows["s00007"]["class_pixels"] == [7, 1] and rows["s00007"]["error_kinds"] == {"decode": 1}
    assert again.totals() == (10 * N, 9 * N, N)


def test_index_follows_the_listing(output):
    """A record deleted (to relabel that shard) leaves the index; a new one is read, alone."""
    url, opts = output
    storage = Storage(url, opts)
    load_done_index(storage).save(storage)
    storage.remove(done_path("s00003"))
    storage.write_bytes(done_path("s09999"), _record(9999))
    requests = Requests(storage)
    index = load_done_index(storage)
    counts = requests.reset()
    assert "s00003" not in index and "s09999" in index and len(index) == N
    assert index.records_read == 1 and index.changed
    assert counts.get("GET", 0) <= 1 + 1 + 2  # the index, the new record (+ list pages are GETs too)


def test_progress_job_reads_the_index_not_every_record(output):
    url, opts = output
    storage = Storage(url, opts)
    load_done_index(storage).save(storage)
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import progress as job
    finally:
        sys.path.remove(str(REPO / "jobs"))
    requests = Requests(storage)
    snap = job.snapshot(url, None, opts)
    counts = requests.reset()
    assert snap["done_shards"] == N and snap["samples"] == 10 * N and snap["errors"] == N
    assert sum(counts.values()) <= 12, counts
    json.dumps(snap)
