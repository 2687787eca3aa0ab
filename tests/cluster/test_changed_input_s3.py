"""The cheap checks of `run` on the loopback S3: the input identity a worker records (one HEAD per
shard, `input_identity`) equals the one the driver lists (`input_identities`), so nothing is
relabeled for nothing; a same-size rewrite changes the ETag; the done index re-reads a record
whose listing stamp changed, and only that one."""
from __future__ import annotations

import pytest

from pipeline.io.layout import ShardStatus, done_path
from pipeline.io.records import DoneRecord, ShardResult
from pipeline.io.shards import ShardSpec
from pipeline.io.storage import Storage
from pipeline.run.done_index import load_done_index
from pipeline.run.shard_check import input_change, input_identities
from pipeline.run.shard_identity import input_identity

pytestmark = pytest.mark.timeout(120)


def test_listed_identity_equals_recorded_one_and_sees_a_same_size_rewrite(s3_server, s3_bucket):
    import s3fs

    opts = {"endpoint_url": s3_server}
    fs = s3fs.S3FileSystem(**opts)
    fs.pipe({f"{s3_bucket}/in/a.tar": b"a" * 2048, f"{s3_bucket}/in/b.tar": b"b" * 2048})
    specs = [ShardSpec(url=f"s3://{s3_bucket}/in/{n}.tar", name=n) for n in ("a", "b")]
    recorded = {s.name: input_identity(s.url, opts) for s in specs}  # what the stage writes
    assert all(size == 2048 and etag for size, etag in recorded.values())
    listed = input_identities(specs, opts)
    assert listed == {s.url: recorded[s.name] for s in specs}
    records = {n: {"input_size": size, "input_etag": etag} for n, (size, etag) in recorded.items()}
    assert input_change(records["a"], listed[specs[0].url]) is None

    fs.pipe(f"{s3_bucket}/in/b.tar", b"c" * 2048)  # same size, new content
    now = input_identities(specs, opts)
    assert input_change(records["a"], now[specs[0].url]) is None
    assert "ETag" in input_change(records["b"], now[specs[1].url])


def test_index_rereads_a_record_whose_stamp_changed(s3_server, s3_bucket):
    url, opts = f"s3://{s3_bucket}/out", {"endpoint_url": s3_server}
    storage = Storage(url, opts)

    def record(name: str, samples: int) -> bytes:
        result = ShardResult(name, f"s3://in/{name}.tar", ShardStatus.DONE, samples=samples, ok=samples)
        return DoneRecord.of(result, "fp").to_json()

    for name in ("s0", "s1", "s2"):
        storage.write_bytes(done_path(name), record(name, 3))
    load_done_index(storage).save(storage)
    again = load_done_index(storage)
    assert again.records_read == 0 and not again.changed

    storage.write_bytes(done_path("s1"), record("s1", 30))  # rewritten since the index read it
    storage.write_bytes(done_path("s2"), b'{"shard": "s2", "sam')  # truncated
    index = load_done_index(storage)
    assert index.records_read == 2 and sorted(index.names) == ["s0", "s1"]
    assert {r["shard"]: r["samples"] for r in index.values()} == {"s0": 3, "s1": 30}
    assert list(index.unreadable) == ["s2"]
