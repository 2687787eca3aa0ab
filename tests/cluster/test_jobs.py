"""The scheduled-job entry points: jobs/nightly.sh (incremental, lock-aware) and jobs/ray_job.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from cluster_support import REPO, TEST_OVERRIDES, subprocess_env, write_shards
from pipeline.run.lock import LOCK_NAME, LockRecord

pytestmark = pytest.mark.timeout(200)

PSEUDOLABEL = shutil.which("pseudolabel", path=str(REPO / ".venv" / "bin")) or shutil.which("pseudolabel")


def _config(tmp_path) -> str:
    """TEST_OVERRIDES as a config file (nightly.sh takes CONFIG, not --set)."""
    data: dict = {}
    for item in [*TEST_OVERRIDES, "ray.cpu_actors=1"]:
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _nightly(tmp_path, inp, out) -> subprocess.CompletedProcess:
    env = subprocess_env(INPUT=str(inp), OUTPUT=str(out), CONFIG=_config(tmp_path),
                         LOG_DIR=str(tmp_path / "logs"), PSEUDOLABEL=PSEUDOLABEL or "pseudolabel",
                         EXTRA_ARGS="--no-progress --max-failure-rate 0.5")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(["bash", str(REPO / "jobs" / "nightly.sh")], env=env, capture_output=True,
                          text=True, timeout=180)


def test_ray_job_parser_accepts_run_arguments():
    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import ray_job
    finally:
        sys.path.remove(str(REPO / "jobs"))
    args = ray_job.build_parser().parse_args(
        ["s3://b/in/", "s3://b/out", "--config", "c.yaml", "--set", "ray.num_actors=4", "--no-progress",
         "--break-lock", "--verify-after"])
    assert (args.input, args.output, args.overrides, args.verify_after) == (
        "s3://b/in/", "s3://b/out", ["ray.num_actors=4"], True)


def test_kuberay_manifest_shape():
    doc = yaml.safe_load((REPO / "jobs" / "kuberay" / "rayjob.yaml").read_text())
    assert doc["kind"] == "RayJob" and doc["spec"]["shutdownAfterJobFinishes"] is True
    assert "jobs/ray_job.py" in doc["spec"]["entrypoint"]
    cluster = doc["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_nightly_is_incremental_and_respects_the_lock(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_shards(inp, n_shards=2, per_shard=8)

    # A live run elsewhere holds the lock: the nightly exits 75 at once and names it.
    out.mkdir()
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now))
    (out / LOCK_NAME).write_bytes(LockRecord(
        run_id="nightly-yesterday", host="other-host", pid=1, started_at=stamp, heartbeat_at=stamp,
        heartbeat_s=10, stale_after_s=300, output=str(out), command="pseudolabel run ...").to_json())
    t0 = time.monotonic()
    held = _nightly(tmp_path, inp, out)
    assert held.returncode == 75, held.stdout + held.stderr
    assert "nightly-yesterday" in held.stderr and time.monotonic() - t0 < 30
    (out / LOCK_NAME).unlink()

    # First night: both shards, verified.
    first = _nightly(tmp_path, inp, out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "done and verified" in first.stdout
    assert len(list((out / "_done").glob("*.json"))) == 2

    # A new shard arrives; the next night labels only that one, through the Ray Job entrypoint.
    # Same seed: shards 0 and 1 get the same bytes, and their mtimes are put back as `rsync -a`
    # would keep them (a rewritten mtime alone makes the run relabel: the local file identity).
    stamps = {p: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in inp.glob("*.tar")}
    write_shards(inp, n_shards=3, per_shard=8)
    for p, ns in stamps.items():
        os.utime(p, ns=ns)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "_done").glob("*.json")}
    cmd = [sys.executable, str(REPO / "jobs" / "ray_job.py"), str(inp), str(out), "--config",
           _config(tmp_path), "--no-progress", "--max-failure-rate", "0.5", "--verify-after"]
    job = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
    summary = json.loads(job.stdout.strip().splitlines()[-1])
    assert summary["verify"]["passed"] and summary["verify"]["rows"] == 24
    assert "3 shards in" in job.stderr and "2 complete, 1 to label" in job.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (out / "_done").glob("*.json")}
    assert {k: after[k] for k in before} == before and len(after) == 3
