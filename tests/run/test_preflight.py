"""Checks before Ray: a bad value, a typo in a path or an unwritable OUTPUT fails in one line, exit 2,
with nothing written and no Ray started (all in-process: preflight runs before Ray by design)."""

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.run.preflight import check_local_shards, check_output, preflight
from pipeline.io.shards import expand_input
from tests.conftest import TINY_OVERRIDES


def run_cli(capsys, inp, out, *extra):
    sets = [a for s in TINY_OVERRIDES for a in ("--set", s)]
    rc = main(["run", str(inp), str(out), *sets, *extra, "--no-progress"])  # extra --set last: it wins
    err = capsys.readouterr().err.strip().splitlines()
    return rc, [line for line in err if " INFO " not in line and " WARNING " not in line]


@pytest.fixture
def ray_started(monkeypatch):
    """Every time a run would start (or join) Ray; other tests may have a Ray up in this process,
    so 'is Ray initialised' says nothing about this call."""
    import pipeline.run.runner as runner

    calls = []
    real = runner.ray_session

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "ray_session", recording)
    return calls


@pytest.fixture
def shards(tmp_path):
    from pipeline.demo_corpus import build_demo_corpus

    build_demo_corpus(tmp_path / "in", shards=1, per_shard=2, seed=1, size=(32, 32))
    return tmp_path / "in"


@pytest.mark.parametrize("override,line", [
    ("inference.slide_stride=0", "inference.slide_stride=0 is out of range: valid values are >= 1"),
    ("batch_size=0", "batch_size=0 is out of range: valid values are >= 1"),
    ("labels.min_confidence=1.5", "labels.min_confidence=1.5 is out of range: valid values are [0, 1]"),
    ("inference.slide_crop=-5", "inference.slide_crop=-5 is out of range: valid values are >= 0"),
])
def test_bad_values_are_one_line_exit_2_and_nothing_written(capsys, shards, tmp_path, override, line,
                                                            ray_started):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, shards, out, "--set", override)
    assert rc == 2 and len(err) == 1 and line in err[0] and "Traceback" not in err[0]
    assert not out.exists()
    assert ray_started == []


def test_missing_checkpoint_names_the_real_path_before_ray(capsys, shards, tmp_path):
    out, missing = tmp_path / "out", tmp_path / "weights" / "ViT-B-16.pt"
    rc, err = run_cli(capsys, shards, out, "--set", f"model.pretrained={missing}")
    assert rc == 2 and err == [f"pseudolabel run: error: checkpoint {missing} does not exist or is not a file "
                               "(model.pretrained is a checkpoint path or an open_clip tag such as openai)"]
    assert not out.exists()


def test_mistyped_local_input_fails_before_anything(capsys, shards, tmp_path):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, f"{shards}/demo-{{000000..000003}}.tra", out)
    assert rc == 2 and len(err) == 1 and "none of its 4 shard(s) exists" in err[0] and "demo-000000.tra" in err[0]
    assert not out.exists()
    with pytest.raises(UserError, match="vocabulary file .*nope.txt not found"):
        preflight(str(shards), str(out), load_config(overrides=[*TINY_OVERRIDES, "vocabulary.file=nope.txt"]))


def test_some_missing_local_shards_are_left_to_the_run(shards):
    specs = expand_input(f"{shards}/demo-{{000000..000002}}.tar")
    check_local_shards("x", specs)  # one exists: the others become unreadable shards of the run


def test_unwritable_output_is_one_line(capsys, shards, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        check_output(str(tmp_path / "file"))
    rc, err = run_cli(capsys, shards, "/sys/pseudolabel-out")  # not creatable, even for root
    assert rc == 2 and len(err) == 1 and "/sys" in err[0]
    monkeypatch.setattr("os.access", lambda *a, **k: False)  # what a read-only mount answers
    rc, err = run_cli(capsys, shards, tmp_path / "ro")
    assert rc == 2 and len(err) == 1 and "cannot be created" in err[0]


def test_dry_run_prints_the_plan_and_writes_nothing(capsys, shards, tmp_path, ray_started):
    out = tmp_path / "out"
    sets = [a for s in TINY_OVERRIDES for a in ("--set", s)]
    assert main(["run", str(shards), str(out), *sets, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "1 in INPUT, 1 to label, 0 to skip" in text and "to label: demo-000000" in text
    assert "fingerprint: c2-" in text and "tiny_clip_openai.pt (sha256:" in text
    assert not out.exists()
    assert ray_started == []
