"""The dispatcher on a real local Ray with small stand-in workers: restarted actors come back into
service, the per-shard watchdog, in-run retries of transient read errors, truthful progress."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import TransientReadError
from pipeline.io.layout import ShardStatus
from pipeline.io.records import ShardResult
from pipeline.io.shards import ShardSpec
from pipeline.run.dispatch import Dispatcher
from pipeline.run.progress import ProgressBoard, ProgressSender, board_handle, remote_put

pytestmark = pytest.mark.timeout(240)


class Worker:
    """Labels a shard in `images` samples; behaviours are switched by marker files in `root`:
    `die-<actor>`: exit abruptly on the first shard (once per actor, the file is created first);
    after its restart an actor writes `back-<actor>` and holds its first shard until `kill-everyone`
    names how many must be back (so that every restarted actor labels again, whatever the timing);
    `loop-<shard>`: busy-loop for ever on attempt 0 of that shard, after one progress message;
    `flaky-<shard>`: raise TransientReadError while the file holds a count > 0 (counting down)."""

    def __init__(self, board_name: str, root: str, images: int = 40):
        self.sender = ProgressSender(remote_put(board_handle(board_name)), interval_s=0.0)
        self.root = Path(root)
        self.images = images

    def ping(self) -> int:
        return os.getpid()

    def label(self, shard: ShardSpec, attempt: int = 0) -> ShardResult:
        import ray

        me = ray.get_runtime_context().get_actor_id()
        die = self.root / f"die-{me}"
        everyone = self.root / "kill-everyone"
        if everyone.exists() and not die.exists():
            die.write_text(str(os.getpid()))
            os._exit(1)
        if everyone.exists() and everyone.read_text() and not (self.root / f"back-{me}").exists():
            (self.root / f"back-{me}").touch()
            deadline = time.monotonic() + 60
            while len(list(self.root.glob("back-*"))) < int(everyone.read_text()) and time.monotonic() < deadline:
                time.sleep(0.05)
        flaky = self.root / f"flaky-{shard.name}"
        if flaky.exists() and int(flaky.read_text()) > 0:
            flaky.write_text(str(int(flaky.read_text()) - 1))
            raise TransientReadError(f"{shard.url}: connection reset mid-shard")
        self.sender.send((shard.name, attempt, 1, 1, 0))
        if (self.root / f"loop-{shard.name}").exists() and attempt == 0:
            while True:  # a busy actor cannot answer anything; only a kill stops it
                pass
        for done in range(2, self.images + 1):
            self.sender.send((shard.name, attempt, done, done, 0))
        return ShardResult(shard.name, shard.url, ShardStatus.DONE, samples=self.images, ok=self.images,
                           worker=f"{me}:{os.getpid()}", class_pixels=[1, 2])


@pytest.fixture
def pool(ray_local, tmp_path):
    ray = ray_local
    # Ray's workers cannot import this test module: ship Worker's code by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    name = f"test-board-{tmp_path.name}"
    board = ray.remote(ProgressBoard).options(name=name, num_cpus=0).remote()
    made = []

    def make(n: int, restarts: int = 2):
        actors = [ray.remote(Worker).options(num_cpus=0, max_restarts=restarts, max_task_retries=0)
                  .remote(name, str(tmp_path)) for _ in range(n)]
        ray.get([a.ping.remote() for a in actors])
        made.extend(actors)
        return board, actors

    yield make
    for actor in [*made, board]:
        ray.kill(actor)


def _shards(n: int) -> list[ShardSpec]:
    return [ShardSpec(url=f"/in/s{i}.tar", name=f"s{i}") for i in range(n)]


def _dispatcher(board, actors, **kw):
    seen: list[tuple[int, int, int]] = []
    finished: list[ShardResult] = []
    kw.setdefault("max_shard_retries", 2)
    d = Dispatcher(actors, board, on_progress=lambda *t: seen.append(t), on_result=finished.append,
                   stall_timeout_s=60, **kw)
    return d, seen, finished


def test_every_actor_lost_once_mid_run_still_completes(pool, tmp_path):
    board, actors = pool(2)
    (tmp_path / "kill-everyone").write_text("2")
    d, seen, finished = _dispatcher(board, actors, max_actor_restarts=2)
    tally = d.run(_shards(8))
    assert sorted(r.shard for r in finished) == sorted(f"s{i}" for i in range(8))
    assert tally.shards_complete == 8 and not tally.failed
    assert len(list(tmp_path.glob("die-*"))) == 2  # each actor died once
    # Both restarted actors labeled shards again (workers report actor id and pid).
    pids = {r.worker for r in finished}
    died = {p.read_text() for p in tmp_path.glob("die-*")}
    assert len(pids) == 2 and not {w.split(":")[1] for w in pids} & died
    assert seen[-1] == (8 * 40, 8 * 40, 0)  # the bar ends where the summary does


def test_an_actor_lost_more_often_than_its_restarts_is_not_waited_for(pool, tmp_path):
    board, actors = pool(1, restarts=0)
    (tmp_path / "kill-everyone").touch()
    d, _, finished = _dispatcher(board, actors, max_actor_restarts=0)
    t0 = time.monotonic()
    tally = d.run(_shards(3))
    assert time.monotonic() - t0 < 30
    assert tally.shards_complete == 0 and {r.status for r in finished} == {ShardStatus.CRASHED}
    assert "no Ray worker left alive" in "".join(r.failure or "" for r in finished)


def test_watchdog_kills_a_busy_looping_actor_and_retries_the_shard(pool, tmp_path):
    board, actors = pool(2)
    (tmp_path / "loop-s1").touch()
    d, _, finished = _dispatcher(board, actors, shard_stall_timeout_s=3.0, max_actor_restarts=2)
    t0 = time.monotonic()
    tally = d.run(_shards(4))
    assert time.monotonic() - t0 < 60
    assert tally.shards_complete == 4 and not tally.failed
    assert [r.status for r in finished if r.shard == "s1"] == [ShardStatus.DONE]
    assert sum(d.losses.values()) == 1  # the looping actor was killed once (Ray restarts it)


def test_transient_read_errors_are_retried_in_the_run_with_backoff(pool, tmp_path):
    board, actors = pool(1)
    (tmp_path / "flaky-s0").write_text("2")  # fails twice, then reads through
    d, _, finished = _dispatcher(board, actors, transient_backoff_s=0.2)
    t0 = time.monotonic()
    tally = d.run(_shards(2))
    assert time.monotonic() - t0 >= 0.2 + 0.4  # two backoffs, doubling
    assert tally.shards_complete == 2 and not tally.failed
    assert [r.status for r in finished if r.shard == "s0"] == [ShardStatus.DONE]


def test_transient_read_errors_past_the_retries_leave_the_shard_incomplete(pool, tmp_path):
    board, actors = pool(1)
    (tmp_path / "flaky-s0").write_text("99")
    d, _, finished = _dispatcher(board, actors, transient_backoff_s=0.05, max_shard_retries=2)
    tally = d.run(_shards(2))
    bad = [r for r in finished if r.shard == "s0"]
    assert len(bad) == 1 and bad[0].status == ShardStatus.UNREADABLE  # never written complete
    assert "transient read error, 3 times" in bad[0].failure
    assert int((tmp_path / "flaky-s0").read_text()) == 99 - 3
    assert tally.shards_complete == 1 and [f.shard for f in tally.failed] == ["s0"]


def test_progress_is_cumulative_and_matches_the_summary(pool, tmp_path):
    """Messages are sent uncoalesced here (interval 0); the board keeps the newest per shard and the
    totals move by difference: never above the truth, and equal to it at the end."""
    board, actors = pool(2)
    d, seen, _ = _dispatcher(board, actors)
    tally = d.run(_shards(30))
    assert tally.samples == 30 * 40
    assert seen[-1] == (tally.samples, tally.ok, tally.errors)
    assert all(s <= tally.samples for s, _, _ in seen)
    assert not d.live and not d.tasks  # finished shards left the live set
