"""Two `pseudolabel run`s on one OUTPUT: the second fails fast naming the first; after the first is
killed, the next run breaks its lock, resumes, and the output verifies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster_support import REPO, TEST_OVERRIDES, subprocess_env, write_shards
from pipeline.run.lock import LOCK_NAME, read_lock
from pipeline.run.verify import verify_output

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


def _run(inp, out, **popen) -> subprocess.Popen:
    args = [sys.executable, "-m", "pipeline.cli", "run", str(inp), str(out), "--no-progress",
            "--max-failure-rate", "0.5", "--set", "ray.cpu_actors=1"]
    for item in TEST_OVERRIDES:
        args += ["--set", item]
    # Staleness 8 s: heartbeat every 2 s, so a killed holder on this host is broken after ~4 s.
    env = subprocess_env(PSEUDOLABEL_LOCK_STALE_S="8")
    return subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True, text=True, **popen)


def test_second_run_fails_fast_then_killed_run_is_recovered(tmp_path):
    pytest.importorskip("pipeline.run.runner")
    inp, out = tmp_path / "in", tmp_path / "out"
    write_shards(inp, n_shards=4, per_shard=30)
    first = _run(inp, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / LOCK_NAME).exists():
            assert first.poll() is None, "first run exited before taking the lock"
            assert time.monotonic() < deadline, "first run never took the lock"
            time.sleep(0.1)
        holder = read_lock(str(out))
        assert holder.pid == first.pid

        t0 = time.monotonic()
        second = _run(inp, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = second.communicate(timeout=60)
        elapsed = time.monotonic() - t0
        assert second.returncode == 2, err[-2000:]
        assert "is locked by" in err and holder.run_id in err and f"pid {first.pid}" in err, err[-2000:]
        assert elapsed < 30, f"second run took {elapsed:.1f}s to fail"  # mostly interpreter start-up
        assert first.poll() is None, "the second run must not disturb the first"
    finally:
        first.send_signal(signal.SIGKILL)  # the driver dies without releasing its lock
        first.wait(timeout=30)
        try:
            os.killpg(first.pid, signal.SIGKILL)  # and its private Ray
        except ProcessLookupError:
            pass
    assert read_lock(str(out)) is not None, "the killed run's lock is left behind"

    third = _run(inp, out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log, _ = third.communicate(timeout=180)
    assert third.returncode == 0, log[-3000:]
    assert "breaking lock" in log and holder.run_id in log
    assert read_lock(str(out)) is None
    report = verify_output(str(out), str(inp))
    assert report.passed, report.summary()
    assert report.rows == 4 * 30
