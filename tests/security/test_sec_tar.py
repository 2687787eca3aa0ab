"""Threat 7 of docs/security.md: hostile tar input is bounded. A huge PAX header is refused
unread, a decompression bomb stops early, and keys with control characters or names too long for
a file system are `unsafe_key` rows: each a row or a shard failure, never a crash."""
from __future__ import annotations

import bz2
import gzip
import tarfile
import tracemalloc

import pyarrow.parquet as pq
import pytest

from hostile_tars import HOSTILE_KEYS, bomb, huge_pax_keys, keys_shard
from pipeline.io.output_dir import OutputDir
from pipeline.io.reader import MAX_COMPONENT_BYTES, ReadReport, iter_samples, unsafe_key
from pipeline.io.shards import ShardSpec
from pipeline.io.tarfiles import iter_members
from pipeline.run.stage import FAILED, ShardLabeler

pytestmark = pytest.mark.timeout(120)


def _label(engine, cfg, tmp_path, shard, name="s"):
    labeler = ShardLabeler(engine, cfg, OutputDir(str(tmp_path / "out")), "test")
    try:
        return labeler.label(ShardSpec(str(shard), name))
    finally:
        labeler.close()


def test_a_huge_pax_header_is_refused_without_being_read(tmp_path):
    shard = huge_pax_keys(tmp_path / "pax.tar", count=2, key_bytes=8 << 20)
    report = ReadReport()
    tracemalloc.start()
    try:
        rows = list(iter_samples(str(shard), ["png"], report))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.key for r in rows] == ["ok"] and rows[0].ok
    assert "tar header record" in report.failure and "not read" in report.failure
    assert peak < 4 << 20, f"{peak} bytes held: the 8 MiB header was read"
    # the output readers (export, training loader, report) stop there too
    with pytest.raises(tarfile.ReadError, match="tar header record"):
        list(iter_members(shard))


@pytest.mark.parametrize("compress", [bz2, gzip], ids=["bzip2", "gzip"])
def test_a_decompression_bomb_stops_early(tmp_path, compress):
    shard = bomb(tmp_path / f"bomb.tar.{'bz2' if compress is bz2 else 'gz'}", 256 << 20, compress)
    assert shard.stat().st_size < 300_000  # 256 MiB of tar inside
    report = ReadReport()
    rows = list(iter_samples(str(shard), ["png"], report))
    assert "expands more than 100x" in report.failure and "decompression bomb" in report.failure
    assert "after" not in [r.key for r in rows], "read through the whole bomb"
    # the limit is a setting: 0 reads it all (what a user with very redundant images may need)
    report = ReadReport()
    assert [r.key for r in iter_samples(str(shard), ["png"], report, max_expansion=0)][-1] == "after"


def test_a_bomb_is_a_failed_shard_of_the_stage(engine, tiny_cfg, tmp_path):
    shard = bomb(tmp_path / "bomb.tar.bz2", 128 << 20, bz2)
    result = _label(engine, tiny_cfg(), tmp_path, shard)
    assert result.status == FAILED and "decompression bomb" in result.failure
    rows = pq.read_table(tmp_path / "out" / "manifest" / "s.parquet").to_pylist()
    assert rows[0]["key"] == "ok" and rows[0]["status"] == "ok"


def test_hostile_keys_are_unsafe_key_rows_of_the_stage(engine, tiny_cfg, tmp_path):
    shard = keys_shard(tmp_path / "keys.tar")
    result = _label(engine, tiny_cfg(), tmp_path, shard)
    rows = pq.read_table(tmp_path / "out" / "manifest" / "s.parquet").to_pylist()
    assert len(rows) == 1 + len(HOSTILE_KEYS) and rows[0]["status"] == "ok"
    for row in rows[1:]:
        assert row["status"] == "error" and row["error"].startswith("unsafe_key:"), row
        assert len(row["key"]) < 300 and len(row["error"]) < 500  # a long key is recorded shortened
    assert result.error_kinds == {"unsafe_key": len(HOSTILE_KEYS)}
    names = [name for name, _ in iter_members(tmp_path / "out" / "masks" / "s.tar")]
    assert names == ["ok.label.png", "ok.conf.png"]


def test_unsafe_key_rules():
    for key in HOSTILE_KEYS.values():
        assert unsafe_key(key), key
    assert unsafe_key("../x") and unsafe_key("/etc/x") and unsafe_key("a\tb")
    assert unsafe_key("a/" + "é" * (MAX_COMPONENT_BYTES // 2 + 1))  # bytes, not characters, count
    for key in ["photo", "dir/sub/img_0001", "été/фото 1", "x" * MAX_COMPONENT_BYTES, "日本/写真",
                "zwnj\u200cpersian"]:
        assert not unsafe_key(key), key
