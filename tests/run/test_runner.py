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
from pipeline.identity import resolve_identity
from pipeline.evaluation.outputs import decode_label_png
from pipeline.io.reader import ReadReport, iter_samples
from pipeline.run.runner import run_pipeline
from pipeline.io.schema import manifest_schema
from pipeline.io.tarfiles import iter_members
from tests.support import NAMES, PER_SHARD, CrashAt, Recorder
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
    assert dataset["fingerprint"] == dataset["config_fingerprint"] == resolve_identity(tiny_cfg()).fingerprint
    assert dataset["identity"]["values"]["vocabulary"] == [v["synonyms"] for v in dataset["vocabulary"]]
    assert [v["index"] for v in dataset["vocabulary"]] == list(range(num_classes))
    assert dataset["model"]["checkpoint_sha256"] and dataset["versions"]["torch"]
    assert summary.images_ok == 3 * PER_SHARD - 2 and summary.images_failed == 2 and summary.shards_labeled == 3
    assert abs(sum(summary.class_pixel_share.values()) - 1.0) < 1e-3
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["this_run"]["images_ok"] == summary.images_ok and stats["this_run"]["failed_shards"] == []
    assert stats["dataset"]["images_ok"] == summary.images_ok and stats["dataset"]["shards_complete"] == 3
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
    with pytest.raises(UserError, match=r"fingerprint.*labels.min_confidence: OUTPUT has 0.0, this run has 0.3.*--overwrite"):
        run_pipeline(str(corpus), str(out), other)
    summary = run_pipeline(str(corpus), str(out), other, overwrite=True)
    assert summary.shards_labeled == 3 and summary.shards_skipped == 0
    mine = resolve_identity(other).fingerprint
    assert json.loads((out / "dataset.json").read_text())["fingerprint"] == mine
    assert {json.loads(p.read_text())["fingerprint"] for p in (out / "_done").iterdir()} == {mine}
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
    assert second.exceeds(None) and second.exceeds(0.2)  # 1 of the 2 shards this run was given failed
    assert not (out / "_done" / "broken.json").exists() and not (out / "manifest" / "broken.parquet").exists()
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["this_run"]["failed_shards"][0]["shard"] == "broken" and stats["this_run"]["shards_failed"] == 1
    assert_same_output(snapshot(reference[0], NAMES), snapshot(out, NAMES))


@pytest.mark.slow  # kills a Ray worker mid-shard
@pytest.mark.timeout(240)
def test_actor_killed_mid_shard_gives_identical_output(reference, corpus, tiny_cfg, tmp_path, monkeypatch, caplog):
    out, marker = tmp_path / "out", tmp_path / "crashed"
    # the worker labeling demo-000001 exits abruptly after its first batch (4 of 7 samples)
    crash = CrashAt("demo-000001", 3, str(marker))
    with caplog.at_level(logging.WARNING, logger="pipeline.run.dispatch"):
        summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=2"), fault_factory=crash)
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


def _case_shard(root):
    from pipeline.io.tarfiles import write_tar
    from tests.support import encode, rgb_image

    root.mkdir(parents=True, exist_ok=True)
    members = [("a.JPG", encode(rgb_image(64, 48, seed=1), "JPEG")), ("a.json", b"{}"),
               ("b.Jpeg", encode(rgb_image(56, 48, seed=2), "JPEG")), ("c.PNG", encode(rgb_image(48, 40, seed=3))),
               ("d.png", encode(rgb_image(48, 48, seed=4))), (".DS_Store", b"x"), ("LICENSE", b"text")]
    write_tar(root / "cases-000.tar", members)
    return root


@pytest.mark.timeout(240)
def test_upper_case_extensions_reach_the_training_loader(ray_local, tiny_cfg, tmp_path):
    from pipeline.training.loader import PseudoLabelDataset
    from pipeline.training.selection import SampleFilter

    inputs, out = _case_shard(tmp_path / "in"), tmp_path / "out"
    summary = run_pipeline(str(inputs), str(out), tiny_cfg("ray.cpu_actors=1", "io.image_extensions=[jpg, jpeg, png]"))
    assert summary.images_ok == 4 and summary.images_failed == 0
    rows = pd.read_parquet(out / "manifest" / "cases-000.parquet")
    assert list(zip(rows["key"], rows["image_member"])) == [("a", "JPG"), ("b", "Jpeg"), ("c", "PNG"), ("d", "png")]
    ds = PseudoLabelDataset(str(out), SampleFilter(), shuffle_shards=False, with_key=True)
    got = [(key, tuple(image.shape)) for image, label, conf, key in ds]
    assert len(ds) == 4 and [k for k, _ in got] == ["a", "b", "c", "d"]  # iteration yields what len promises
    assert got[0][1] == (3, 48, 64)
    # every member is accounted for, per shard and in _stats.json
    done = json.loads((out / "_done" / "cases-000.json").read_text())
    assert done["members"] == 7 and done["skipped_members"] == {"hidden": 1, "no_extension": 1}
    stats = json.loads((out / "_stats.json").read_text())
    this_run = stats.get("this_run", stats)  # sectioned _stats.json, or the flat one before it
    dataset = stats.get("dataset") or {k[len("dataset_"):]: v for k, v in stats.items() if k.startswith("dataset_")}
    assert this_run["skipped_members"] == dataset["skipped_members"] == {"hidden": 1, "no_extension": 1}
    assert this_run["members"] == dataset["members"] == 7


@pytest.mark.timeout(300)
def test_pipe_input_that_fails_once_mid_shard_is_fully_labeled(reference, corpus, tiny_cfg, tmp_path):
    # The first time it runs, the command sends part of the shard and fails (a dropped download);
    # after that it works. Nothing of the broken attempt may be kept as complete.
    marker, script = tmp_path / "failed-once", tmp_path / "fetch.sh"
    name = NAMES[1]
    script.write_text(f"""#!/bin/sh
if [ "$1" = {corpus / name}.tar ] && [ ! -e {marker} ]; then touch {marker}; head -c 6000 "$1"; exit 1; fi
cat "$1"
""")
    script.chmod(0o755)
    # pipe: only from the command line (--allow-pipe), never from a list file (docs/security.md)
    spec, out = f"pipe:{script} {corpus}/{{{','.join(NAMES)}}}.tar", tmp_path / "out"
    first = run_pipeline(spec, str(out), tiny_cfg("ray.cpu_actors=1"), allow_pipe=True)
    assert marker.exists(), "the failing attempt did not run"
    record = out / "_done" / f"{name}.json"
    if record.exists():  # retried inside the run (the dispatcher's transient retries)
        assert json.loads(record.read_text())["status"] == "done" and first.failed_shards == []
    else:  # left incomplete: never "failed but complete"
        assert [f["shard"] for f in first.failed_shards] == [name]
    second = run_pipeline(spec, str(out), tiny_cfg("ray.cpu_actors=1"), allow_pipe=True)
    assert second.failed_shards == []
    assert json.loads(record.read_text())["samples"] == PER_SHARD
    ref, got = snapshot(reference[0], NAMES), snapshot(out, NAMES)
    for shard in NAMES:
        for a, b in zip(ref[shard]["rows"], got[shard]["rows"]):
            a.pop("source_shard"), b.pop("source_shard")
    assert_same_output(ref, got)


@pytest.mark.timeout(180)
def test_shards_a_broken_engine_labels_are_crashed_not_complete(ray_local, corpus, tiny_cfg, tmp_path):
    from tests.support import raising_engine

    out = tmp_path / "out"
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1"), engine_factory=raising_engine)
    assert [f["status"] for f in summary.failed_shards] == ["crashed"] * 3
    assert all("engine failed on" in f["reason"] for f in summary.failed_shards)
    assert not (out / "_done").exists() or not list((out / "_done").iterdir())
    assert not (out / "manifest").exists() or not list((out / "manifest").iterdir())
    assert summary.shards_labeled == 0 and summary.exceeds(0.5)
