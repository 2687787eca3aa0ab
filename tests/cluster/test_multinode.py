"""A run on a multi-node Ray cluster (ray.cluster_utils.Cluster on one machine) survives losing a node.

Head without CPUs (driver only) + 3 worker nodes with one CPU and one `label_slot` each, so each
worker node hosts exactly one label actor. Once the first completion record appears, a worker
node is removed while its actor is labeling: its shard must be redone by an actor on another
node, the run must finish, and `verify_output` must hold with every sample labeled exactly once.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
import traceback

import pyarrow.parquet as pq
import pytest

from cluster_support import REPO, TEST_OVERRIDES, write_shards
from pipeline.io.tarfiles import iter_members
from pipeline.run.verify import verify_output

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

N_SHARDS, PER_SHARD = 6, 36  # ~2-4 s per shard on a shared 2-core machine: removal lands mid-shard
OBJECT_STORE = 100 * 1024**2


@pytest.fixture
def cluster(monkeypatch):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # Worker processes are started by each node's raylet with this environment: make the
    # checkout importable there and keep torch to one thread per actor on the shared cores.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():  # the suite's shared local Ray: the run must join this cluster instead
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": OBJECT_STORE,
    })
    workers = [c.add_node(num_cpus=1, resources={"label_slot": 1}, object_store_memory=OBJECT_STORE)
               for _ in range(3)]
    try:
        c.wait_for_nodes()
        yield c, workers
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def _actor_nodes() -> dict[str, str]:
    """LabelWorker actor id -> node id, from the GCS (no dashboard needed)."""
    import ray

    table = ray._private.state.actors()  # the public state API needs the dashboard, off here
    return {aid: info["Address"]["NodeID"] for aid, info in table.items()
            if info.get("ActorClassName", "").endswith("LabelWorker")}


def _done_records(out) -> dict[str, dict]:
    import json

    return {p.stem: json.loads(p.read_text()) for p in (out / "_done").glob("*.json")}


def test_node_removed_mid_run(cluster, tmp_path, caplog):
    from pipeline.config import load_config
    from pipeline.run.runner import run_pipeline

    c, workers = cluster
    inp, out = tmp_path / "in", tmp_path / "out"
    write_shards(inp, N_SHARDS, PER_SHARD)
    cfg = load_config(overrides=[*TEST_OVERRIDES, "ray.cpu_actors=3", "ray.max_actor_restarts=2",
                                 "ray.max_shard_retries=2"])
    outcome: dict = {}

    def drive() -> None:
        try:
            outcome["summary"] = run_pipeline(str(inp), str(out), cfg, ray_address=c.address)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc
            outcome["traceback"] = traceback.format_exc()

    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        driver = threading.Thread(target=drive, name="driver")
        driver.start()
        deadline = time.monotonic() + 150
        while not any((out / "_done").glob("*.json")):
            assert driver.is_alive(), f"run ended before any shard completed: {outcome}"
            assert time.monotonic() < deadline, "no completion record within 150 s"
            time.sleep(0.05)
        first_done_s = time.monotonic() - t0
        first_records = _done_records(out)
        done_before = set(first_records)
        # The victim: a worker node whose actor is in the middle of its first shard. (An actor that
        # just wrote a completion record may be idle until the driver hands it the next shard.)
        finished = {r["worker"].rsplit(":", 1)[1] for r in first_records.values()}
        placement = _actor_nodes()
        by_node = {w.node_id: w for w in workers}
        victim_actor, victim_node = next((a, n) for a, n in placement.items()
                                         if n in by_node and a not in finished)
        c.remove_node(by_node[victim_node])
        removed_at, removed_wall = time.monotonic(), time.time()
        driver.join(timeout=180)
    driver_log = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
                           if r.name.startswith("pipeline") and r.levelno >= logging.WARNING)
    assert not driver.is_alive(), f"run did not finish after the node was removed:\n{driver_log}"
    assert "error" not in outcome, f"{outcome.get('traceback')}\n{driver_log}"
    summary = outcome["summary"]
    total_s = time.monotonic() - t0

    # The run finished and labeled everything, nothing failed.
    assert summary.failed_shards == [], f"{summary.failed_shards}\n{driver_log}"
    records = _done_records(out)
    assert set(records) == {p.stem for p in inp.glob("*.tar")}

    # The victim's shard was lost and redone on another node.
    lost = [r for r in caplog.records if "worker lost" in r.getMessage()]
    assert lost, f"removing the node did not lose a shard (victim {victim_actor} idle?):\n{driver_log}"
    lost_shards = {r.getMessage().split(":")[0].removeprefix("shard ") for r in lost}
    for name in lost_shards:
        assert name not in done_before
        actor_id = records[name]["worker"].rsplit(":", 1)[1]
        assert actor_id != victim_actor and placement.get(actor_id) != victim_node, (name, records[name])

    # Every sample exactly once, and the output verifies against the input.
    report = verify_output(str(out), str(inp))
    assert report.passed, report.summary()
    assert report.input_samples == report.rows == N_SHARDS * PER_SHARD
    keys = collections.Counter()
    for path in (out / "manifest").glob("*.parquet"):
        for key in pq.read_table(path, columns=["key"]).column("key").to_pylist():
            keys[(path.stem, key)] += 1
    assert len(keys) == N_SHARDS * PER_SHARD and set(keys.values()) == {1}
    for path in (out / "masks").glob("*.tar"):
        names = [name for name, _ in iter_members(path, read=False)]
        assert len(names) == len(set(names))
    logging.getLogger(__name__).warning(
        "multinode: first completion after %.1fs; node removed; loss noticed %.1fs later; run finished "
        "%.1fs after the removal (%.1fs total); lost shards %s", first_done_s, lost[0].created - removed_wall,
        time.monotonic() - removed_at, total_s, sorted(lost_shards))
