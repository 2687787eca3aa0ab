"""INPUT and OUTPUT on S3 (moto's server on loopback): lock, verify, and the label/kill/resume round trip."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.run.lock import LOCK_NAME, LockHeldError, RunLock, read_lock
from pipeline.io.tarfiles import iter_members
from pipeline.run.verify import verify_output

from cluster_support import REPO, TEST_OVERRIDES, subprocess_env, write_shards

pytestmark = pytest.mark.timeout(240)


def _fs(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint)


def _upload(fs, paths: list[Path], prefix: str) -> None:
    for path in paths:
        fs.put_file(str(path), f"{prefix}/{path.name}")


# -- lock on S3 ---------------------------------------------------------------------------------
def test_lock_on_s3_is_exclusive_and_released(s3_server, s3_bucket):
    out = f"s3://{s3_bucket}/out"
    opts = {"endpoint_url": s3_server}
    with RunLock(out, opts, stale_after_s=30, heartbeat_s=0.2) as lock:
        assert read_lock(out, opts).run_id == lock.run_id
        with pytest.raises(LockHeldError, match=lock.run_id):
            RunLock(out, opts, stale_after_s=30).acquire()
        first = read_lock(out, opts).heartbeat_at
        time.sleep(0.6)
        assert read_lock(out, opts).heartbeat_at > first
    fs = _fs(s3_server)
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/out/{LOCK_NAME}")


def test_conditional_put_refuses_an_existing_lock(s3_server, s3_bucket):
    """The race is decided by the server (If-None-Match: *), not by our exists() check."""
    fs = _fs(s3_server)
    path = f"{s3_bucket}/out/{LOCK_NAME}"
    fs.pipe_file(path, b"{}", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"{}", mode="create")


def test_stale_lock_on_s3_is_broken(s3_server, s3_bucket, caplog):
    out = f"s3://{s3_bucket}/out"
    opts = {"endpoint_url": s3_server}
    lock = RunLock(out, opts, stale_after_s=1.0, heartbeat_s=0.2).acquire()
    lock._stop.set()  # simulate a dead holder on another machine: heartbeats stop, object stays
    lock._thread.join()
    record = read_lock(out, opts)
    _fs(s3_server).pipe_file(f"{s3_bucket}/out/{LOCK_NAME}",
                             record.to_json().replace(record.host.encode(), b"elsewhere"))
    time.sleep(1.3)
    with RunLock(out, opts, stale_after_s=1.0) as second:
        assert read_lock(out, opts).run_id == second.run_id
    assert any("breaking lock" in r.message for r in caplog.records)


# -- the pipeline on S3 --------------------------------------------------------------------------
def _run_cli(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO,
                            env=subprocess_env(PSEUDOLABEL_LOCK_STALE_S="8"),
                            start_new_session=True, **popen)


def _run_args(inp: str, out: str, endpoint: str | None) -> list[str]:
    args = ["run", inp, out, "--no-progress", "--max-failure-rate", "0.5",
            "--set", "ray.cpu_actors=1", "--set", "ray.num_actors=1"]
    if endpoint:
        args += ["--set", f"io.storage_options={{endpoint_url: '{endpoint}'}}"]
    for item in TEST_OVERRIDES:
        args += ["--set", item]
    return args


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, then whatever it started (its local Ray) in its session."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _samples(read_bytes, list_names) -> dict[tuple[str, str], dict]:
    """(shard, key) -> manifest row (minus timestamps) plus decoded mask arrays."""
    import io

    from PIL import Image

    out = {}
    for name in list_names("manifest"):
        shard = name[: -len(".parquet")]
        rows = pq.read_table(io.BytesIO(read_bytes(f"manifest/{name}"))).to_pylist()
        members = {name: np.asarray(Image.open(io.BytesIO(data)))
                   for name, data in iter_members(io.BytesIO(read_bytes(f"masks/{shard}.tar")))}
        for row in rows:
            row.pop("labeled_at")
            row.pop("source_shard")
            key = (shard, row["key"])
            assert key not in out, f"{key} labeled twice"
            if row["status"] == "ok":
                row["label"] = members[row["label_member"]]
                row["conf"] = members[row["conf_member"]]
            out[key] = row
    return out


@pytest.mark.slow
def test_s3_label_kill_resume_verify(s3_server, s3_bucket, tmp_path):
    pytest.importorskip("pipeline.run.runner", reason="pipeline.run.runner not written yet")
    fs = _fs(s3_server)
    shards = write_shards(tmp_path / "in", n_shards=4, per_shard=5)
    _upload(fs, shards, f"{s3_bucket}/in")
    inp, out = f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out"
    done_prefix = f"{s3_bucket}/out/_done"

    def done_count() -> int:
        try:
            return len(fs.ls(done_prefix, refresh=True))
        except FileNotFoundError:
            return 0

    # 1. Label until the first completion record appears, then kill the driver (and its Ray).
    first = _run_cli(_run_args(inp, out, s3_server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: done_count() >= 1, 150, first, "the first completion record")
    finally:
        _kill_group(first)
    killed_at = done_count()
    assert killed_at < len(shards), "the run finished before it could be killed; use more shards"
    fs.invalidate_cache()
    assert fs.exists(f"{s3_bucket}/out/{LOCK_NAME}"), "the killed run's lock should be left behind"

    # 2. Resume: the dead run's lock is broken, completed shards are skipped, the rest labeled.
    second = _run_cli(_run_args(inp, out, s3_server), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      text=True)
    log, _ = second.communicate(timeout=200)
    assert second.returncode == 0, log[-3000:]
    assert "breaking lock" in log
    assert done_count() == len(shards)
    fs.invalidate_cache()
    assert not fs.exists(f"{s3_bucket}/out/{LOCK_NAME}"), "the lock must be released at the end"

    # 3. Verify, and compare with an uninterrupted local run, sample for sample.
    report = verify_output(out, inp, {"endpoint_url": s3_server})
    assert report.passed, report.summary()
    assert report.input_samples == report.rows == 20
    local_out = tmp_path / "local-out"
    ref = _run_cli(_run_args(str(tmp_path / "in"), str(local_out), None), stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, text=True)
    ref_log, _ = ref.communicate(timeout=200)
    assert ref.returncode == 0, ref_log[-3000:]
    remote = _samples(lambda rel: fs.cat_file(f"{s3_bucket}/out/{rel}"),
                      lambda d: sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{s3_bucket}/out/{d}")))
    local = _samples(lambda rel: (local_out / rel).read_bytes(),
                     lambda d: sorted(p.name for p in (local_out / d).iterdir()))
    assert remote.keys() == local.keys()
    for key, row in local.items():
        other = remote[key]
        for field, value in row.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, other[field]), (key, field)
            else:
                assert value == other[field], (key, field)
    stats = json.loads(fs.cat_file(f"{s3_bucket}/out/_stats.json"))
    assert stats  # aggregated over both runs' shards; detailed content is the runner's contract
