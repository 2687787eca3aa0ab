"""Issue 24 item 6: a shard whose completion record, manifest and mask tar disagree is not complete.
Every run relabels what one listing of OUTPUT shows (a record that no longer parses or whose
counts were edited, a manifest or mask tar deleted or resized); `run --repair` also what only
reading the files shows. The relabeled output equals the undamaged one, and `verify` suggests
`run --repair` instead of deleting records by hand."""
import json
import shutil
import tarfile

import pytest

from pipeline.cli import main as cli_main
from pipeline.demo_corpus import build_demo_corpus
from pipeline.io.layout import ShardStatus
from pipeline.run.done_index import INDEX_PATH, records_table, DoneIndex
from pipeline.run.runner import plan_run, run_pipeline
from pipeline.run.shard_check import OutputListing, record_problem
from pipeline.run.summary import summarize
from pipeline.run.tally import RunTally
from pipeline.run.verify import verify_output
from pipeline.io.records import ShardResult
from tests.support import assert_same_output, snapshot

NAMES = [f"demo-{i:06d}" for i in range(7)]


@pytest.fixture(scope="module")
def labeled(ray_local, tiny_cfg, tmp_path_factory):
    """7 shards of 3 images, labeled once: (INPUT, OUTPUT, snapshot)."""
    root = tmp_path_factory.mktemp("repair")
    build_demo_corpus(root / "in", shards=len(NAMES), per_shard=3, seed=3, size=(48, 40))
    out = root / "out"
    summary = run_pipeline(str(root / "in"), str(out), tiny_cfg("ray.cpu_actors=1"))
    assert summary.shards_labeled == len(NAMES)
    return root / "in", out, snapshot(out, NAMES)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _damage(out):
    """One kind of damage per shard; demo-000006 stays intact."""
    assert (out / INDEX_PATH).exists()  # the index lists every record: the truncated one too
    _truncate(out / "_done" / "demo-000000.json")
    doc = json.loads((out / "_done" / "demo-000001.json").read_text())
    doc["samples"] += 1  # an edited sample count
    (out / "_done" / "demo-000001.json").write_text(json.dumps(doc, indent=1))
    _truncate(out / "manifest" / "demo-000002.parquet")
    (out / "manifest" / "demo-000003.parquet").unlink()
    (out / "masks" / "demo-000004.tar").unlink()
    _truncate(out / "masks" / "demo-000005.tar", keep=0.7)


@pytest.mark.timeout(600)
def test_plain_run_relabels_what_the_listing_shows(labeled, tiny_cfg, tmp_path):
    corpus, reference, expected = labeled
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    _damage(out)
    assert not verify_output(str(out), str(corpus), deep=False).passed

    plan = plan_run(str(corpus), str(out), tiny_cfg())
    assert plan.to_label_count == 6 and plan.to_skip_count == 1 and plan.changed == []
    assert plan.damaged == NAMES[:6]
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1"))
    assert summary.relabeled == {"unreadable_record": 1, "record_mismatch": 1, "manifest_size": 1,
                                 "missing_manifest": 1, "missing_masks": 1, "masks_size": 1}
    assert summary.shards_labeled == 6 and summary.shards_skipped == 1 and summary.shards_failed == 0
    assert {r["shard"]: r["reason"] for r in summary.relabeled_shards}["demo-000005"] == "masks_size"
    assert_same_output(expected, snapshot(out, NAMES))  # relabeled exactly as before the damage
    assert verify_output(str(out), str(corpus), deep=False).passed
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["dataset"]["shards_complete"] == len(NAMES)
    assert sum(stats["this_run"]["relabeled"].values()) == 6


@pytest.mark.timeout(600)
def test_repair_relabels_what_only_reading_shows(labeled, tiny_overrides, tmp_path, capsys):
    corpus, reference, expected = labeled
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    # A mask PNG's header changed in place: the tar keeps its size, only reading it shows the damage.
    tar = out / "masks" / "demo-000003.tar"
    with tarfile.open(tar) as t:
        start = t.getmembers()[0].offset_data
    data = bytearray(tar.read_bytes())
    data[start + 19] ^= 0x01  # the low byte of the first PNG's width (IHDR)
    tar.write_bytes(bytes(data))
    report = verify_output(str(out), str(corpus), deep=False)
    assert not report.passed and "pseudolabel run" in report.summary() and "--repair" in report.summary()

    sets = [a for s in [*tiny_overrides, "batch_size=4", "io.decode_threads=2", "ray.cpu_actors=1"]
            for a in ("--set", s)]
    assert cli_main(["run", str(corpus), str(out), *sets, "--dry-run"]) == 0
    assert "0 to label" in capsys.readouterr().out  # the listing shows nothing
    assert cli_main(["run", str(corpus), str(out), *sets, "--dry-run", "--repair"]) == 0
    plan = capsys.readouterr().out
    assert "damaged (relabeled): 1 (" in plan and "): demo-000003" in plan, plan

    assert cli_main(["run", str(corpus), str(out), *sets, "--repair", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["relabeled"].values()) == [1] and summary["shards_labeled"] == 1
    assert set(summary["relabeled"]) <= {"bad_mask", "wrong_size"}  # what verify calls it
    assert_same_output(expected, snapshot(out, NAMES))
    assert verify_output(str(out), str(corpus), deep=False).passed


def _record(name, **fields):
    doc = {"shard": name, "status": "done", "samples": 3, "ok": 2, "errors": 1, "members": 3,
           "skipped_members": {}}
    doc.update(fields)
    return doc


def test_record_checks_against_a_listing_and_older_records():
    listing = OutputListing(manifests={"a": 100, "b": 100}, masks={"a": 2048})
    assert record_problem("a", _record("a", manifest_bytes=100, mask_bytes=2048), listing) is None
    assert record_problem("a", _record("a", manifest_bytes=99), listing)[0] == "manifest_size"
    assert record_problem("a", _record("a", mask_bytes=1024), listing)[0] == "masks_size"
    assert record_problem("a", _record("a", samples=4), listing)[0] == "record_mismatch"
    assert record_problem("a", _record("x"), listing)[0] == "record_mismatch"
    assert record_problem("a", _record("a", status="crashed"), listing)[0] == "record_mismatch"
    assert record_problem("a", _record("a", members=2), listing)[0] == "record_mismatch"  # 2 members, 3 samples
    assert record_problem("a", _record("a", manifest_bytes="100"), listing)[0] == "manifest_size"  # edited: text
    assert record_problem("a", _record("a", samples="x"), listing)[0] == "record_mismatch"
    # A record from before the sizes: presence only. Without ok rows a mask tar is not required.
    assert record_problem("a", _record("a"), listing) is None
    assert record_problem("b", _record("b"), listing)[0] == "missing_masks"
    assert record_problem("b", _record("b", ok=0, errors=3), listing) is None
    assert record_problem("c", _record("c"), listing)[0] == "missing_manifest"


def test_summary_counts_what_is_on_disk_not_what_was_reported():
    """A shard whose result was lost (reported crashed) but whose record was committed is labeled;
    one reported done whose record is not there is failed."""
    docs = [_record("a", source="in/a.tar"), _record("b", source="in/b.tar", status="failed", failure="cut"),
            _record("old", source="in/old.tar")]
    complete = DoneIndex(records_table(docs))
    tally = RunTally()
    tally.add(ShardResult("a", "in/a.tar", ShardStatus.CRASHED, failure="worker lost: RayError"))
    tally.add(ShardResult("c", "in/c.tar", ShardStatus.DONE, samples=3, ok=3))
    s = summarize("in", "out", 4, complete, tally, None, pending={"a", "b", "c"}, skipped=1)
    assert s.shards_labeled == 2 and s.shards_skipped == 1 and s.dataset_shards_complete == 3
    assert s.images_ok == 4 and s.images_failed == 2  # from the records of a and b
    failed = {f["shard"]: f for f in s.failed_shards}
    assert sorted(failed) == ["b", "c"] and s.shards_failed == 2
    assert failed["b"]["status"] == "failed" and failed["b"]["reason"] == "cut"
    assert "no completion record" in failed["c"]["reason"]
