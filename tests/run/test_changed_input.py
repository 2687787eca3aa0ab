"""Issue 20 item 10: a completion record whose input changed is not complete. Through the CLI:
pack a folder, run, add photos so that the shards' contents shift, pack again under the same
names, run again: every photo now in the input has its row, and the plan says "changed"."""
import json
import shutil

import pandas as pd
import pytest

from pipeline.cli import main as cli_main
from tests.support import encode, rgb_image

SETTINGS = ["batch_size=4", "io.decode_threads=2", "ray.cpu_actors=1"]


def _photos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / f"{name}.png").write_bytes(encode(rgb_image(40 + 8 * (i % 3), 32, seed=sum(map(ord, name)))))


def _sets(tiny_overrides):
    return [a for s in [*tiny_overrides, *SETTINGS] for a in ("--set", s)]


def _rows(out):
    return pd.concat([pd.read_parquet(p) for p in sorted((out / "manifest").glob("*.parquet"))])


def _pack(photos, shards):
    shutil.rmtree(shards, ignore_errors=True)  # packed from scratch: the same names, shifted contents
    assert cli_main(["pack", str(photos), str(shards), "--per-shard", "2"]) == 0


@pytest.mark.timeout(400)
def test_repacked_grown_folder_is_relabeled(ray_local, tiny_overrides, tmp_path, capsys):
    photos, shards, out = tmp_path / "photos", tmp_path / "shards", tmp_path / "out"
    _photos(photos, ["p2", "p4", "p6", "p8"])
    _pack(photos, shards)  # shard-000000: p2 p4, shard-000001: p6 p8
    assert cli_main(["run", str(shards), str(out), *_sets(tiny_overrides), "--no-progress"]) == 0
    before = {p.name: json.loads(p.read_text()) for p in (out / "_done").iterdir()}
    assert sorted(_rows(out)["key"]) == ["p2", "p4", "p6", "p8"]

    _photos(photos, ["p1", "p3"])  # sort first: every shard's contents shift, the names stay
    _pack(photos, shards)  # shard-000000: p1 p2, -000001: p3 p4, -000002: p6 p8
    capsys.readouterr()

    assert cli_main(["run", str(shards), str(out), *_sets(tiny_overrides), "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "changed inputs (relabeled): 2: shard-000000, shard-000001" in plan, plan
    assert "3 in INPUT, 3 to label, 0 to skip" in plan, plan

    rc = cli_main(["run", str(shards), str(out), *_sets(tiny_overrides), "--no-progress", "--json"])
    printed = capsys.readouterr().out
    assert rc == 0
    summary = json.loads(printed)
    assert summary["relabeled"] == {"input_changed": 2} and summary["shards_labeled"] == 3
    rows = _rows(out)
    assert sorted(rows["key"]) == ["p1", "p2", "p3", "p4", "p6", "p8"]  # every photo once, the new ones too
    assert (rows["status"] == "ok").all()
    after = {p.name: json.loads(p.read_text()) for p in (out / "_done").iterdir()}
    assert after["shard-000000.json"]["input_size"] == (shards / "shard-000000.tar").stat().st_size
    assert after["shard-000000.json"]["keys_sha256"] != before["shard-000000.json"]["keys_sha256"]
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["this_run"]["relabeled"] == {"input_changed": 2}
    assert stats["dataset"]["shards_complete"] == 3 and stats["dataset"]["images_ok"] == 6

    assert cli_main(["verify", str(out), str(shards)]) == 0  # the output agrees with the input now
    # Nothing changed since: the next run relabels nothing and says so.
    assert cli_main(["run", str(shards), str(out), *_sets(tiny_overrides), "--dry-run"]) == 0
    assert "0 to label, 3 to skip" in capsys.readouterr().out


@pytest.mark.timeout(400)
def test_plain_summary_names_changed_inputs(ray_local, tiny_overrides, tmp_path, capsys):
    """The table run prints says how many changed inputs it relabeled, in one greppable line."""
    photos, shards, out = tmp_path / "photos", tmp_path / "shards", tmp_path / "out"
    _photos(photos, ["b", "c"])
    _pack(photos, shards)
    assert cli_main(["run", str(shards), str(out), *_sets(tiny_overrides), "--no-progress"]) == 0
    _photos(photos, ["a"])
    _pack(photos, shards)  # shard-000000: a b (changed), shard-000001: c (new)
    capsys.readouterr()
    assert cli_main(["run", str(shards), str(out), *_sets(tiny_overrides), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pseudolabel run: 1 changed input relabeled" in printed, printed
    assert sorted(_rows(out)["key"]) == ["a", "b", "c"]
