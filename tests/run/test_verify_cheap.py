"""Cheap verify (the command line's default): checked against the completion records, never opening
an input tar; incremental verify skips what passed before and is unchanged."""
from __future__ import annotations

import json

import fsspec
import pytest

import pipeline.run.verify_shard as verify_shard
from pipeline.cli import main as cli_main
from pipeline.io.tarfiles import iter_members, write_tar
from pipeline.run.shard_identity import identity_of, keys_digest
from pipeline.run.verify import VERIFIED_PATH, verify_output

from test_verify import SHARDS, _read_rows, _write_manifest, built  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cheap(built, monkeypatch):
    """`built` with the fields a run now records, and input reading counted (it must stay at 0)."""
    out, inp = built
    fs = fsspec.filesystem("file")
    for name in SHARDS:
        path = out / "_done" / f"{name}.json"
        record = json.loads(path.read_text())
        keys = [r["key"] for r in _read_rows(out / "manifest" / f"{name}.parquet")]
        size, etag = identity_of(fs.info(str(inp / f"{name}.tar")))
        record.update(keys_sha256=keys_digest(keys), input_size=size, input_etag=etag, members=2 * len(keys),
                      skipped_members={}, fingerprint="content-1")
        path.write_text(json.dumps(record))
    meta = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps(dict(meta, fingerprint="content-1")))
    reads = []
    real = verify_shard.input_keys

    def counted(url, options=None):
        reads.append(url)
        return real(url, options)

    monkeypatch.setattr(verify_shard, "input_keys", counted)
    return out, inp, reads


def _cheap(out, inp, **kw):
    return verify_output(str(out), str(inp), deep=False, **kw)


def test_cheap_verify_passes_without_opening_an_input_tar(cheap):
    out, inp, reads = cheap
    report = _cheap(out, inp)
    assert report.passed, report.summary()
    assert reads == [] and not report.deep and report.without_keys_hash == 0
    assert (report.shards, report.rows, report.members) == (2, 6, 10)
    assert verify_output(str(out), str(inp)).passed and len(reads) == 2  # deep reads each input once


def test_cheap_verify_catches_tampered_and_missing_mask_members(cheap):
    out, inp, reads = cheap
    tar = out / "masks" / "shard-000.tar"
    members = list(iter_members(tar))
    label = dict(members)["shard-000-0001.label.png"]
    members = [(n, label if n == "shard-000-0000.label.png" else d) for n, d in members
               if n != "shard-000-0003.conf.png"]
    write_tar(tar, members)
    kinds = _cheap(out, inp).counts
    assert kinds == {"wrong_size": 1, "missing_member": 1}, kinds
    assert reads == []


def test_cheap_verify_catches_lost_rows_and_changed_inputs(cheap):
    out, inp, reads = cheap
    path = out / "manifest" / "shard-000.parquet"
    rows = _read_rows(path)
    del rows[2]  # the error row: masks unaffected
    _write_manifest(path, rows)
    kinds = _cheap(out, inp).counts
    assert kinds == {"keys_mismatch": 1, "order": 1, "record_mismatch": 2}, kinds  # samples and errors
    members = list(iter_members(inp / "shard-001.tar"))
    write_tar(inp / "shard-001.tar", members + [("extra.jpg", b"x" * 2000)])
    assert _cheap(out, inp).counts.get("input_changed") == 1
    assert reads == []


def test_fingerprint_and_member_accounting_are_checked(cheap):
    out, inp, _ = cheap
    path = out / "_done" / "shard-001.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(dict(record, fingerprint="content-2")))
    assert _cheap(out, inp).counts == {"record_mismatch": 1}
    path.write_text(json.dumps(dict(record, members=3, skipped_members={"hidden": 2})))
    assert _cheap(out, inp).counts == {"accounting": 1}
    path.write_text(json.dumps(dict(record, skipped_members={"hidden": -1})))
    assert _cheap(out, inp).counts == {"accounting": 1}


def test_incremental_verify_skips_what_passed_and_rechecks_what_changed(cheap):
    out, inp, _ = cheap
    assert _cheap(out, inp, record_verified=True).passed
    assert (out / VERIFIED_PATH).exists()
    again = _cheap(out, inp, incremental=True, record_verified=True)
    assert again.passed and again.skipped_verified == 2 and again.rows == 0
    tar = out / "masks" / "shard-001.tar"
    write_tar(tar, list(iter_members(tar))[:-1])  # the mask tar changed: its size is in the listing
    third = _cheap(out, inp, incremental=True)
    assert third.skipped_verified == 1 and third.counts == {"missing_member": 1}


def test_cli_verify_is_cheap_unless_deep(cheap, capsys):
    out, inp, reads = cheap
    assert cli_main(["verify", str(out), str(inp)]) == 0
    assert reads == [] and "cheap" in capsys.readouterr().out
    assert cli_main(["verify", str(out), str(inp), "--incremental"]) == 0
    assert "2 shards verified before" in capsys.readouterr().out
    assert cli_main(["verify", str(out), str(inp), "--deep"]) == 0 and len(reads) == 2
