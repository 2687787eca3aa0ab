"""`verify_output` on hand-built outputs (docs_contract.md layout): valid passes, each defect is found."""
from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.io.schema import manifest_schema
from pipeline.io.tarfiles import iter_members, write_tar
from pipeline.run.verify import KINDS, verify_output

pytestmark = pytest.mark.timeout(60)

NUM_CLASSES = 3
SHARDS = {"shard-000": [(24, 16), (20, 20), None, (16, 30)], "shard-001": [(18, 18), (32, 16)]}
# (width, height) per sample; None = an undecodable image that became an error row.


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write_manifest(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=manifest_schema()), path)


def _read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture
def built(tmp_path) -> tuple[Path, Path]:
    """(OUTPUT, INPUT dir) of a small valid run: 2 shards, one error row."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (out / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for name, sizes in SHARDS.items():
        in_members, masks, rows = [], [], []
        for i, size in enumerate(sizes):
            key = f"{name}-{i:04d}"
            if size is None:
                in_members += [(f"{key}.jpg", b"not an image"), (f"{key}.json", b"{}")]
                rows.append(_row(key, i, name, status="error", error="decode: cannot identify image",
                                 labeled_at=now))
                continue
            w, h = size
            in_members += [(f"{key}.png", _png(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))),
                           (f"{key}.json", b"{}")]
            label = rng.integers(0, NUM_CLASSES, (h, w), dtype=np.uint8)
            label[0, 0] = 255  # one ignored pixel
            masks += [(f"{key}.label.png", _png(label)),
                      (f"{key}.conf.png", _png(rng.integers(0, 255, (h, w), dtype=np.uint8)))]
            rows.append(_row(key, i, name, status="ok", width=w, height=h, mask_shard=f"masks/{name}.tar",
                             label_member=f"{key}.label.png", conf_member=f"{key}.conf.png",
                             image_member="png", labeled_at=now))
        write_tar(inp / f"{name}.tar", in_members)
        write_tar(out / "masks" / f"{name}.tar", masks)
        _write_manifest(out / "manifest" / f"{name}.parquet", rows)
        ok = sum(r["status"] == "ok" for r in rows)
        _write_json(out / "_done" / f"{name}.json", {
            "shard": name, "source": str(inp / f"{name}.tar"), "samples": len(rows), "ok": ok,
            "errors": len(rows) - ok, "started_at": now.isoformat(), "finished_at": now.isoformat(),
            "seconds": 1.0, "worker": "test", "config_fingerprint": "abc123",
            "mask_shard": f"masks/{name}.tar", "manifest": f"manifest/{name}.parquet",
        })
    _write_json(out / "dataset.json", {
        "schema_version": 1, "num_classes": NUM_CLASSES, "ignore_index": 255, "label_dtype": "uint8",
        "config_fingerprint": "abc123",
        "vocabulary": [{"index": i, "name": f"c{i}", "synonyms": [f"c{i}"], "color": [i, i, i]}
                       for i in range(NUM_CLASSES)],
    })
    return out, inp


def _row(key, index, name, **fields) -> dict:
    row = {f.name: None for f in manifest_schema()}
    row.update(key=key, sample_index=index, source_shard=f"in/{name}.tar", **fields)
    return row


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _kinds(out: Path, inp: Path | None) -> dict[str, int]:
    return verify_output(str(out), str(inp) if inp else None).counts


def test_valid_output_passes(built):
    out, inp = built
    report = verify_output(str(out), str(inp))
    assert report.passed, report.summary()
    assert (report.shards, report.complete_shards, report.input_samples) == (2, 2, 6)
    assert (report.rows, report.ok_rows, report.error_rows, report.members) == (6, 5, 1, 10)
    assert "PASSED" in report.summary()
    assert verify_output(str(out)).passed  # without INPUT too


def test_missing_row(built):
    out, inp = built
    path = out / "manifest" / "shard-000.parquet"
    rows = _read_rows(path)
    del rows[2]  # the error row: masks unaffected
    _write_manifest(path, rows)
    kinds = _kinds(out, inp)
    assert kinds.get("missing_row") == 1
    assert "order" in _kinds(out, None), "without INPUT the gap in sample_index is still found"


def test_duplicate_row(built):
    out, inp = built
    path = out / "manifest" / "shard-001.parquet"
    rows = _read_rows(path)
    _write_manifest(path, rows + [dict(rows[1])])
    assert _kinds(out, inp).get("duplicate_row") == 1


def test_unexpected_row_and_shard(built):
    out, inp = built
    path = out / "manifest" / "shard-001.parquet"
    rows = _read_rows(path)
    _write_manifest(path, rows + [dict(rows[0], key="stranger", sample_index=2, label_member=None,
                                       conf_member=None, status="error", error="x: y", mask_shard=None)])
    (inp / "shard-001.tar").rename(inp / "elsewhere.tar.bak")
    kinds = _kinds(out, inp)
    assert kinds.get("unexpected_shard") == 1
    (inp / "elsewhere.tar.bak").rename(inp / "shard-001.tar")
    assert _kinds(out, inp).get("unexpected_row") == 1


def test_missing_member(built):
    out, inp = built
    tar = out / "masks" / "shard-000.tar"
    members = list(iter_members(tar))
    write_tar(tar, [m for m in members if m[0] != "shard-000-0001.conf.png"])
    report = verify_output(str(out), str(inp))
    assert report.counts == {"missing_member": 1}, report.summary()
    assert report.problems[0].key == "shard-000-0001"


def test_orphan_member(built):
    out, inp = built
    tar = out / "masks" / "shard-001.tar"
    members = list(iter_members(tar))
    write_tar(tar, members + [("ghost.label.png", members[0][1]), members[0]])
    assert _kinds(out, inp) == {"orphan_member": 2}  # an unreferenced member and a repeated one


def test_wrong_size(built):
    out, inp = built
    path = out / "manifest" / "shard-001.parquet"
    rows = _read_rows(path)
    rows[0]["width"] += 1
    _write_manifest(path, rows)
    assert _kinds(out, inp) == {"wrong_size": 2}  # label and conf


def test_bad_mask_values_and_corrupt_png(built):
    out, inp = built
    tar = out / "masks" / "shard-001.tar"
    members = list(iter_members(tar))
    members[0] = (members[0][0], _png(np.full((18, 18), 7, dtype=np.uint8)))  # class 7 of 3
    members[1] = (members[1][0], members[1][1][:40])  # truncated confidence PNG
    write_tar(tar, members)
    assert _kinds(out, inp) == {"bad_mask": 2}


def test_completion_record_disagreeing(built):
    out, inp = built
    record_path = out / "_done" / "shard-000.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, ok=record["ok"] + 1)))
    assert _kinds(out, inp) == {"record_mismatch": 1}
    record_path.write_text(json.dumps(dict(record, config_fingerprint="other")))
    assert _kinds(out, inp) == {"record_mismatch": 1}
    record_path.write_text(json.dumps(record))
    (out / "manifest" / "shard-000.parquet").unlink()  # record claims a manifest that is gone
    kinds = _kinds(out, inp)
    assert kinds.get("record_mismatch") == 1 and kinds.get("missing_row") == 1


def test_outputs_without_completion_record(built):
    out, inp = built
    (out / "_done" / "shard-001.json").unlink()
    assert _kinds(out, inp) == {"missing_record": 1}


def test_missing_shard_and_bad_manifest(built):
    out, inp = built
    for folder, suffix in (("masks", "tar"), ("manifest", "parquet"), ("_done", "json")):
        (out / folder / f"shard-001.{suffix}").unlink()
    assert _kinds(out, inp) == {"missing_shard": 1}
    (out / "manifest" / "shard-000.parquet").write_bytes(b"PAR1 garbage")
    assert _kinds(out, inp).get("bad_manifest") == 1
    pq.write_table(pa.table({"key": ["a"]}), out / "manifest" / "shard-000.parquet")
    assert _kinds(out, inp).get("bad_manifest") == 1


def test_order_of_rows(built):
    out, inp = built
    path = out / "manifest" / "shard-000.parquet"
    rows = _read_rows(path)
    rows[0], rows[1] = rows[1], rows[0]
    _write_manifest(path, rows)
    kinds = _kinds(out, inp)
    assert kinds.get("order", 0) >= 1 and set(kinds) == {"order"}


def test_empty_output_fails(tmp_path):
    assert verify_output(str(tmp_path)).counts == {"empty_output": 1}


def test_cli_exit_codes_and_summary(built, capsys, tmp_path):
    out, inp = built
    assert cli_main(["verify", str(out), str(inp), "--json", str(tmp_path / "r.json")]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is True
    (out / "_done" / "shard-001.json").unlink()
    assert cli_main(["verify", str(out), str(inp)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "missing_record: shard-001" in printed
    assert cli_main(["verify", str(out), str(tmp_path / "nothing-here-*.tar")]) == 2


def test_every_kind_is_documented():
    assert all(isinstance(v, str) and v for v in KINDS.values())


def test_repeated_input_key_is_two_samples(built):
    """A key that comes back later in a tar is a second sample (the run makes it an error row)."""
    out, inp = built
    name = "shard-001"
    members = list(iter_members(inp / f"{name}.tar"))
    write_tar(inp / f"{name}.tar", members + [members[0]])
    path = out / "manifest" / f"{name}.parquet"
    rows = _read_rows(path)
    rows.append(_row(rows[0]["key"], len(rows), name, status="error", labeled_at=rows[0]["labeled_at"],
                     error="duplicate_key: key already appeared earlier in this shard"))
    _write_manifest(path, rows)
    record_path = out / "_done" / f"{name}.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(dict(record, samples=len(rows), errors=record["errors"] + 1)))
    report = verify_output(str(out), str(inp))
    assert report.passed, report.summary()
    _write_manifest(path, rows[:-1])  # ... and its row is required like any other
    assert _kinds(out, inp).get("missing_row") == 1
