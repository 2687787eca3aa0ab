"""Dispatcher decisions that need no Ray worker."""
import threading

from pipeline.run.dispatch import Dispatcher
from pipeline.io.shards import ShardSpec
from pipeline.run.stage import CRASHED


def test_lost_lock_stops_before_any_shard_is_handed_out():
    stop = threading.Event()
    stop.set()
    finished = []
    dispatcher = Dispatcher([object()], None, max_shard_retries=1, on_progress=lambda *a: None,
                            on_result=finished.append, stop=stop)
    shards = [ShardSpec(url=f"/in/s{i}.tar", name=f"s{i}") for i in range(3)]
    results = dispatcher.run(shards).failed
    assert [r.shard for r in results] == ["s0", "s1", "s2"]
    assert all(r.status == CRASHED and "lock" in r.failure for r in results)
    assert finished == results and not dispatcher.tasks  # nothing was sent to the actor


def test_no_live_worker_abandons_the_queue():
    finished = []
    dispatcher = Dispatcher([], None, max_shard_retries=1, on_progress=lambda *a: None, on_result=finished.append)
    results = dispatcher.run([ShardSpec(url="/in/a.tar", name="a")]).failed
    assert [(r.shard, r.status) for r in results] == [("a", CRASHED)]
    assert "no Ray worker" in results[0].failure
