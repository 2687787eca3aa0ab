"""The driver on a real local Ray with the tiny engine: outputs, resume, retries, fingerprints."""
import io
import json
import logging
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.evaluation.outputs import decode_label_png
from pipeline.io.reader import ReadReport, iter_samples
from pipeline.run.runner import run_pipeline
from pipeline.io.schema import manifest_schema
from pipeline.io.tarfiles import iter_members
from tests.support import NAMES, PER_SHARD, Recorder
from tests.support import assert_same_output, broken_engine, snapshot


def input_samples(corpus, name):
    return list(iter_samples(str(corpus / f"{name}.tar"), ["jpg"], ReadReport()))


@pytest.mark.timeout(180)
def test_end_to_end_outputs(reference, corpus, tiny_cfg):
    out, summary, recorder = reference
    dataset = json.loads((out / "dataset.json").read_text())
    num_classes = dataset["num_classes"]
    for name in NAMES:
        samples = input_samples(corpus, name)
        table = pq.read_table(out / "manifest" / f"{name}.parquet")
        assert table.schema.equals(manifest_schema(), check_metadata=False)
        frame = pd.read_parquet(out / "manifest" / f"{name}.parquet")
        assert list(frame["key"]) == [s.key for s in samples] and len(frame) == PER_SHARD
        assert list(frame["sample_index"]) == list(range(PER_SHARD))
        ok_keys = [k for k, st in zip(frame["key"], frame["status"]) if st == "ok"]
        members = list(iter_members(out / "masks" / f"{name}.tar"))
        assert [m for m, _ in members] == [f"{k}.{t}.png" for k in ok_keys for t in ("label", "conf")]
        blobs = dict(members)
        for s in samples:
            if s.key not in ok_keys:
                continue
            size = Image.open(io.BytesIO(s.data)).size
            labels = decode_label_png(blobs[f"{s.key}.label.png"])
            assert (labels.shape[1], labels.shape[0]) == size
            assert labels.max() < num_classes
            conf = Image.open(io.BytesIO(blobs[f"{s.key}.conf.png"]))
            assert conf.mode == "L" and conf.size == size
        done = json.loads((out / "_done" / f"{name}.json").read_text())
        assert done["samples"] == PER_SHARD and done["ok"] == len(ok_keys) and done["status"] == "done"
    errors = pd.concat(pd.read_parquet(out / "manifest" / f"{n}.parquet") for n in NAMES).query("status == 'error'")
    assert sorted(e.split(":")[0] for e in errors["error"]) == ["corrupt", "corrupt"]  # the demo's two bad samples
    assert errors["mask_shard"].isna().all() and errors["width"].isna().all()
    assert dataset["label_dtype"] == "uint8" and dataset["ignore_index"] == 255
    assert dataset["config_fingerprint"] == tiny_cfg().fingerprint()
    assert [v["index"] for v in dataset["vocabulary"]] == list(range(num_classes))
    assert dataset["model"]["checkpoint_sha256"] and dataset["versions"]["torch"]
    assert summary.images_ok == 3 * PER_SHARD - 2 and summary.images_failed == 2 and summary.shards_labeled == 3
    assert abs(sum(summary.class_pixel_share.values()) - 1.0) < 1e-3
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["images_ok"] == summary.images_ok and stats["failed_shards"] == []
    assert not (out / "_tmp").exists()  # temporaries are renamed away, then the folder removed
    # progress came per batch (batch_size 4: a report after 4 and after 7 samples of each shard),
    # not only per finished shard: some totals include part of a shard
    assert recorder.started == (3, 0) and sorted(recorder.finished) == NAMES
    assert any(u[0] % PER_SHARD for u in recorder.updates) and recorder.updates[-1] == (21, 19, 2)


@pytest.mark.timeout(60)
def test_exit_policy(reference):
    _, summary, _ = reference
    assert summary.sample_failure_rate == pytest.approx(2 / 21)
    assert summary.exceeds(None)  # default: more than 1% of samples failed
    assert not summary.exceeds(0.10) and summary.exceeds(0.05)


@pytest.mark.timeout(60)
def test_rerun_skips_complete_shards(reference, corpus, tiny_cfg, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    recorder = Recorder()
    summary = run_pipeline(str(corpus), str(out), tiny_cfg(), progress=recorder)
    assert summary.shards_skipped == 3 and summary.shards_labeled == 0 and recorder.started == (0, 3)
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}
    assert summary.dataset_images_ok == reference[1].images_ok  # totals still cover the whole dataset


@pytest.mark.timeout(180)
def test_fingerprint_refusal_and_overwrite(reference, corpus, tiny_cfg, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    other = tiny_cfg("labels.min_confidence=0.3")
    with pytest.raises(UserError, match="config fingerprint.*--overwrite"):
        run_pipeline(str(corpus), str(out), other)
    summary = run_pipeline(str(corpus), str(out), other, overwrite=True)
    assert summary.shards_labeled == 3 and summary.shards_skipped == 0
    assert json.loads((out / "dataset.json").read_text())["config_fingerprint"] == other.fingerprint()
    assert {json.loads(p.read_text())["config_fingerprint"] for p in (out / "_done").iterdir()} == {other.fingerprint()}
    frame = pd.concat(pd.read_parquet(out / "manifest" / f"{n}.parquet") for n in NAMES)
    assert frame["ignored_pixels"].fillna(0).sum() > 0  # the new threshold is really in effect


@pytest.mark.timeout(240)
def test_incremental_pickup_and_unreadable_shard(reference, corpus, tiny_cfg, tmp_path):
    listing, out = tmp_path / "shards.txt", tmp_path / "out"
    listing.write_text("".join(f"{corpus / n}.tar\n" for n in NAMES[:2]))
    first = run_pipeline(str(listing), str(out), tiny_cfg())
    assert first.shards_labeled == 2
    (tmp_path / "broken.tar").write_bytes(b"\x05" * 4096)  # not a tar at all
    listing.write_text("".join(f"{corpus / n}.tar\n" for n in NAMES) + f"{tmp_path / 'broken.tar'}\n")
    second = run_pipeline(str(listing), str(out), tiny_cfg())
    assert second.shards_skipped == 2 and second.shards_labeled == 1
    assert [(f["shard"], f["status"]) for f in second.failed_shards] == [("broken", "unreadable")]
    assert second.failed_shards[0]["reason"]
    assert second.exceeds(None) and second.exceeds(0.2)  # 1 of 4 shards failed
    assert not (out / "_done" / "broken.json").exists() and not (out / "manifest" / "broken.parquet").exists()
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["failed_shards"][0]["shard"] == "broken"
    assert_same_output(snapshot(reference[0], NAMES), snapshot(out, NAMES))


@pytest.mark.timeout(240)
def test_actor_killed_mid_shard_gives_identical_output(reference, corpus, tiny_cfg, tmp_path, monkeypatch, caplog):
    out, marker = tmp_path / "out", tmp_path / "crashed"
    # the worker labeling demo-000001 exits abruptly after its first batch (4 of 7 samples)
    monkeypatch.setenv("PSEUDOLABEL_TEST_CRASH_AT", f"demo-000001:3:{marker}")
    with caplog.at_level(logging.WARNING, logger="pipeline.run.dispatch"):
        summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=2"))
    assert marker.exists(), "the crash hook did not fire"
    assert any("worker lost" in r.getMessage() and "demo-000001" in r.getMessage() for r in caplog.records)
    assert summary.shards_labeled == 3 and summary.failed_shards == []
    assert summary.images_ok + summary.images_failed == 3 * PER_SHARD
    assert_same_output(snapshot(reference[0], NAMES), snapshot(out, NAMES))


@pytest.mark.timeout(180)
def test_application_exception_fails_the_shard_without_retry(ray_local, corpus, tiny_cfg, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="pipeline.run.dispatch"):
        summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1"), engine_factory=broken_engine)
    assert [f["status"] for f in summary.failed_shards] == ["crashed"] * 3
    assert all("AttributeError" in f["reason"] for f in summary.failed_shards)
    assert not any("retry" in r.getMessage() for r in caplog.records)
    assert not (out / "_done").exists() or not list((out / "_done").iterdir())
    assert summary.exceeds(0.5)
