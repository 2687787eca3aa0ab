"""`pseudolabel run` as a user runs it: a subprocess with its own local Ray, killed and re-run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import NAMES, REPO, default_sigint, env_without
from tests.support import assert_same_output, snapshot

# The same label-relevant settings as the `reference` fixture; one worker so shards go one by one.
SETTINGS = ["batch_size=4", "io.decode_threads=2", "ray.cpu_actors=1"]


def cli(tiny_overrides, *args):
    sets = [a for s in [*tiny_overrides, *SETTINGS] for a in ("--set", s)]
    inp, out, *rest = map(str, args)
    return [sys.executable, "-m", "pipeline.cli", "run", inp, "--out", out, *rest, *sets, "--no-progress"]


def run_cli(tiny_overrides, *args, timeout=240):
    return subprocess.run(cli(tiny_overrides, *args), cwd=REPO, env=env_without("RAY_ADDRESS"),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # kills the driver, then resumes
@pytest.mark.timeout(400)
def test_driver_killed_then_rerun_equals_uninterrupted_run(reference, corpus, tiny_overrides, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(tiny_overrides, corpus, out), cwd=REPO, env=env_without("RAY_ADDRESS"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not list((out / "_done").glob("*.json")) if (out / "_done").exists() else True:
            assert proc.poll() is None, "the run ended before any shard completed"
            assert time.monotonic() < deadline, "no shard completed within 180 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    done_at_kill = len(list((out / "_done").glob("*.json")))
    assert done_at_kill < len(NAMES), "the kill came too late to interrupt anything"

    rerun = run_cli(tiny_overrides, corpus, out, "--max-failure-rate", "0.2")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    stats = json.loads((out / "_stats.json").read_text())
    # A worker may still finish the shard it was on after its driver died (its commit is atomic
    # and its content the same), so more than `done_at_kill` shards can be complete by now.
    assert stats["this_run"]["shards_skipped"] >= done_at_kill and stats["this_run"]["shards_labeled"] >= 1
    assert stats["this_run"]["shards_skipped"] + stats["this_run"]["shards_labeled"] == len(NAMES)
    assert stats["dataset"]["shards_complete"] == len(NAMES)
    assert_same_output(snapshot(reference[0], NAMES), snapshot(out, NAMES))
    assert "this run:" in rerun.stdout and "dataset:" in rerun.stdout  # the summary table says which is which

    # Nothing left to do: no Ray start, and the failure policy judges this run only (it labeled
    # nothing), although 2 of the dataset's 21 samples failed (> 1%).
    again = run_cli(tiny_overrides, corpus, out, "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["shards_skipped"] == len(NAMES)


@pytest.mark.timeout(120)
def test_other_config_is_refused_with_exit_code_2(reference, corpus, tiny_overrides, tmp_path):
    refused = run_cli(tiny_overrides, corpus, reference[0], "--set", "labels.min_confidence=0.5")
    assert refused.returncode == 2
    assert "labels.min_confidence: OUTPUT has 0.0, this run has 0.5" in refused.stderr and "--overwrite" in refused.stderr
    assert len([l for l in refused.stderr.splitlines() if l.startswith("pseudolabel")]) == 1 and "Traceback" not in refused.stderr


@pytest.mark.slow  # interrupts a real run, then resumes it
@pytest.mark.timeout(400)
def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(reference, corpus, tiny_overrides, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(tiny_overrides, corpus, out), cwd=REPO, env=env_without("RAY_ADDRESS"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 180
    while not ((out / "_done").exists() and list((out / "_done").glob("*.json"))):
        assert proc.poll() is None, "the run ended before any shard completed"
        assert time.monotonic() < deadline, "no shard completed within 180 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the driver
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [l for l in err.splitlines() if l.startswith("pseudolabel")]
    assert lines == ["pseudolabel run: interrupted; re-run the same command to resume"]
    assert "Traceback" not in err
    assert not (out / "_lock.json").exists()  # released
    rerun = run_cli(tiny_overrides, corpus, out, "--max-failure-rate", "0.2")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_same_output(snapshot(reference[0], NAMES), snapshot(out, NAMES))
