"""Content fingerprints against a real OUTPUT: edits in place are refused naming the key, other
path spellings of the same files are accepted, old outputs get a clear message, and the failure
policy judges only this run. None of these start Ray: the check comes first."""
import errno
import json
import os
import shutil

import pytest

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.run.runner import run_pipeline
from tests.conftest import TINY_MODEL, TINY_VOCAB


@pytest.fixture
def labeled(reference, tmp_path):
    """A copy of the reference OUTPUT plus copies of its vocabulary and checkpoint at new paths
    (same contents: the same identity, which is the point)."""
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    vocab, ckpt = tmp_path / "vocab.txt", tmp_path / "w.pt"
    shutil.copy(TINY_VOCAB, vocab)
    shutil.copy(TINY_MODEL, ckpt)
    return out, vocab, ckpt


def records(out):
    return {p.name: p.read_bytes() for p in (out / "_done").iterdir()}


@pytest.mark.timeout(420)  # the first one pays for the shared reference run
def test_same_files_under_other_paths_are_accepted(labeled, corpus, tiny_cfg, tmp_path, monkeypatch):
    out, vocab, ckpt = labeled
    monkeypatch.chdir(tmp_path)
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("vocabulary.file=vocab.txt", "model.pretrained=./w.pt"))
    assert summary.shards_skipped == 3 and summary.shards_labeled == 0


@pytest.mark.timeout(420)  # the first one pays for the shared reference run
def test_vocabulary_edited_in_place_is_refused_naming_the_key(labeled, corpus, tiny_cfg):
    out, vocab, ckpt = labeled
    cfg = [f"vocabulary.file={vocab}", f"model.pretrained={ckpt}"]
    run_pipeline(str(corpus), str(out), tiny_cfg(*cfg))  # accepted as it is
    before = records(out)
    lines = vocab.read_text().splitlines()
    vocab.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # two lines swapped
    with pytest.raises(UserError, match=r"1 setting\(s\) differ: vocabulary: OUTPUT has .*--overwrite") as info:
        run_pipeline(str(corpus), str(out), tiny_cfg(*cfg))
    assert "\n" not in str(info.value) and lines[0] in str(info.value)
    assert records(out) == before


@pytest.mark.timeout(420)  # the first one pays for the shared reference run
def test_checkpoint_replaced_at_the_same_path_is_refused(labeled, corpus, tiny_cfg):
    out, vocab, ckpt = labeled
    before = records(out)
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # other weights, same path
    with pytest.raises(UserError, match=r"model.weights: OUTPUT has \"sha256:[0-9a-f]{64}\", this run has \"sha256:"):
        run_pipeline(str(corpus), str(out), tiny_cfg(f"model.pretrained={ckpt}"))
    assert records(out) == before


@pytest.mark.timeout(420)  # the first one pays for the shared reference run
def test_io_extensions_and_several_keys_are_all_named(labeled, corpus, tiny_cfg):
    out, _, _ = labeled
    with pytest.raises(UserError) as info:
        run_pipeline(str(corpus), str(out), tiny_cfg("io.image_extensions=[png]", "method.sfr.tau=1.5"))
    text = str(info.value)
    assert "2 setting(s) differ" in text and "io.image_extensions: OUTPUT has [" in text
    assert "method.sfr.tau: OUTPUT has 2.1, this run has 1.5" in text


@pytest.mark.timeout(420)  # the first one pays for the shared reference run
def test_old_kind_outputs_get_a_clear_message(labeled, corpus, tiny_cfg):
    out, _, _ = labeled
    doc = json.loads((out / "dataset.json").read_text())
    doc.pop("fingerprint"), doc.pop("identity")
    (out / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="older pseudolabel whose fingerprint hashed file paths"):
        run_pipeline(str(corpus), str(out), tiny_cfg())
    (out / "dataset.json").unlink()
    record = out / "_done" / "demo-000000.json"
    doc = json.loads(record.read_text())
    doc["fingerprint"] = ""
    record.write_text(json.dumps(doc))
    shutil.rmtree(out / "_index", ignore_errors=True)  # the compacted index caches record contents
    with pytest.raises(UserError, match="shard demo-000000 was labeled under an older pseudolabel"):
        run_pipeline(str(corpus), str(out), tiny_cfg())


@pytest.mark.timeout(420)  # the first one pays for the shared reference run
def test_a_no_op_rerun_exits_0_and_stats_keep_both_sections(labeled, corpus, tiny_cfg, tiny_overrides, capsys):
    out, _, _ = labeled
    sets = [a for s in [*tiny_overrides, "batch_size=4"] for a in ("--set", s)]
    assert main(["run", str(corpus), str(out), *sets, "--no-progress"]) == 0  # 2 of 21 failed earlier: not now
    printed = capsys.readouterr().out
    assert "this run: images ok / failed" in printed and "dataset: images ok / failed" in printed
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["this_run"]["images_ok"] == 0 and stats["this_run"]["shards_skipped"] == 3
    assert stats["dataset"]["images_ok"] == 19 and stats["dataset"]["images_failed"] == 2
    assert stats["dataset"]["shards_complete"] == 3 and stats["dataset"]["sample_failure_rate"] > 0.01


@pytest.mark.timeout(420)  # the first one pays for the shared reference run
def test_full_disk_is_one_line_exit_2_and_nothing_half_written(labeled, corpus, tiny_overrides, capsys, monkeypatch):
    from pipeline.io.storage import Storage

    out, _, _ = labeled
    before = (out / "_stats.json").read_bytes()
    real = Storage.write_bytes

    def full(self, rel, data):
        if rel != "_stats.json":
            return real(self, rel, data)
        with self.atomic_path(rel) as tmp:
            with open(tmp, "wb") as f:
                f.write(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    monkeypatch.setattr(Storage, "write_bytes", full)
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    assert main(["run", str(corpus), str(out), *sets, "--no-progress"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if " INFO " not in l and " WARNING " not in l]
    assert len(err) == 1 and "No space left on device" in err[0]
    assert (out / "_stats.json").read_bytes() == before and not (out / "_lock.json").exists()
