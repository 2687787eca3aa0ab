"""Typed output records: round trips, the files' field order (schemas/), old and newer records read
back, and the output folder class that writes and reads them."""
import io
import json

import pyarrow.parquet as pq
import pytest

from pipeline.errors import UserError
from pipeline.io import layout
from pipeline.io.layout import ErrorKind, RowStatus, ShardStatus
from pipeline.io.output_dir import OutputDir
from pipeline.io.records import DatasetMeta, DoneRecord, ManifestRow, SampleError, SampleResult, ShardResult, VocabEntry
from pipeline.io.schema import manifest_schema, schema_spec
from pipeline.io.writers import manifest_bytes


def _result(**kw) -> ShardResult:
    values = dict(shard="s1", source="/in/s1.tar", status=ShardStatus.DONE, samples=3, ok=2, errors=1,
                  started_at="2026-01-01T00:00:00+00:00", finished_at="2026-01-01T00:00:01+00:00",
                  seconds=1.0, worker="h:1", class_pixels=[5, 0, 7], error_kinds={"corrupt": 1})
    values.update(kw)
    return ShardResult(**values)


def _meta(**kw) -> DatasetMeta:
    values = dict(vocabulary=[VocabEntry(0, "sky", ["sky", "heaven"], (1, 2, 3)), VocabEntry(1, "cat", ["cat"], (4, 5, 6))],
                  num_classes=2, ignore_index=255, label_dtype="uint8", config={"a": 1}, config_fingerprint="f0",
                  model={"name": "m"}, versions={"python": "3"}, created_at="2026-01-01T00:00:00+00:00")
    values.update(kw)
    return DatasetMeta(**values)


def test_enums_are_the_strings_the_files_hold():
    assert ShardStatus.DONE == "done" and RowStatus.ERROR == "error" and ErrorKind.TOO_SMALL == "too_small"
    assert json.dumps({"s": ShardStatus.FAILED}) == '{"s": "failed"}'
    assert str(SampleError(ErrorKind.CORRUPT, "bad")) == "corrupt: bad"
    assert ShardStatus.FAILED.complete and not ShardStatus.UNREADABLE.complete


def test_done_record_round_trip_in_schema_order():
    record = DoneRecord.of(_result(), "fp1")
    back = DoneRecord.from_json(record.to_json())
    assert back == record and isinstance(back.status, ShardStatus)
    assert back.mask_shard == layout.mask_shard_path("s1") == "masks/s1.tar"
    assert back.manifest == "manifest/s1.parquet" and back.config_fingerprint == "fp1"
    written = list(json.loads(record.to_json()))
    assert written == [f["name"] for f in schema_spec("done", 1)["fields"]]


def test_done_record_reads_older_and_newer_records():
    old = {"schema_version": 1, "shard": "s", "source": "x", "status": "failed", "samples": 1, "ok": 0,
           "errors": 1, "failure": "tar broke", "config_fingerprint": "abc", "from_the_future": [1]}
    record = DoneRecord.from_dict(old)
    assert record.status == ShardStatus.FAILED and record.failure == "tar broke"
    assert record.class_pixels == [] and record.error_kinds == {}  # fields it did not have: defaults
    with pytest.raises(ValueError):
        DoneRecord.from_json(b"[1, 2]")


def test_dataset_meta_round_trip_and_lookups():
    meta = _meta()
    back = DatasetMeta.from_json(meta.to_json())
    assert back == meta and back.names == ["sky", "cat"] and back.colors == [(1, 2, 3), (4, 5, 6)]
    assert back.label_mode == "L" and _meta(label_dtype="uint16").label_mode == "I;16"
    assert back.class_index("Heaven") == 0 and back.class_index("1") == 1
    with pytest.raises(UserError, match="not in this output's vocabulary"):
        back.class_index("dog")
    assert list(json.loads(meta.to_json()))[:5] == ["schema_version", "vocabulary", "num_classes", "ignore_index",
                                                     "label_dtype"]


def test_dataset_meta_lenient_and_strict():
    doc = {"vocabulary": [{"index": 1, "name": "b", "color": [0, 0, 0]}, {"index": 0, "name": "a", "color": [1, 1, 1]}]}
    meta = DatasetMeta.from_json(json.dumps(doc))
    assert meta.names == ["a", "b"] and meta.label_dtype == "uint8" and meta.ignore_index == 255
    with pytest.raises(KeyError):
        DatasetMeta.from_json(json.dumps(doc), strict=True)
    with pytest.raises(ValueError, match="vocabulary entries"):
        DatasetMeta.from_json(json.dumps({**doc, "num_classes": 3}))


def test_manifest_rows_follow_the_schema_and_read_back():
    ok = SampleResult("k0", 0, "/in/s.tar", image_member="png", width=4, height=3, mean_confidence=0.5,
                      ignored_pixels=1, classes=[1], class_pixels=[11])
    bad = SampleResult("k1", 1, "/in/s.tar", error=SampleError(ErrorKind.NO_IMAGE, "none"))
    rows = [ok.to_row("masks/s.tar"), bad.to_row("masks/s.tar")]
    assert list(rows[0].to_dict()) == manifest_schema().names
    table = pq.read_table(io.BytesIO(manifest_bytes(rows)))
    got = table.to_pylist()
    assert [r["status"] for r in got] == ["ok", "error"]
    assert got[0]["label_member"] == "k0.label.png" and got[1]["label_member"] is None
    assert got[1]["error"] == "no_image: none"
    assert ManifestRow.from_dict(got[0]).classes == [1]


def test_output_dir_writes_reads_and_clears(tmp_path):
    out = OutputDir(str(tmp_path / "out"))
    out.write_dataset_meta(_meta())
    for name in ("a", "b"):
        out.write_done(DoneRecord.of(_result(shard=name), "fp"))
        out.write_bytes(layout.manifest_path(name), b"x")
    assert out.dataset_meta() == _meta()
    records = out.done_records(["a", "b", "c"])
    assert sorted(records) == ["a", "b"] and records["a"].shard == "a"
    assert out.done_record("c") is None
    assert out.manifest_files() == ["manifest/a.parquet", "manifest/b.parquet"]
    (tmp_path / "out" / "_done" / "a.json").write_text("{not json")
    with pytest.raises(UserError, match="_done/a.json"):
        out.done_record("a")
    out.clear()
    assert out.shard_names(layout.DONE_DIR, layout.DONE_SUFFIX) == set() and out.manifest_files() == []
    assert out.dataset_meta_or_none() is None
    with pytest.raises(UserError, match="does not exist"):
        out.dataset_meta()
