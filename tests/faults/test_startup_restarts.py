"""Actors that die while loading their engine are restarted like actors that die later
(ray.max_actor_restarts); the run goes on with the actors it has and stops only when none can
start. A real local Ray; the worker process exits with os._exit inside `setup()`."""
from __future__ import annotations

import functools

import pytest

from pipeline.errors import UserError
from pipeline.run.runner import run_pipeline
from tests.faults.hooks import dies_while_loading
from tests.support import NAMES, PER_SHARD, assert_same_output, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # Ray runs with worker restarts, 40-90 s each here


def _deaths(marker) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_the_only_actor_dying_while_loading_is_restarted(reference, corpus, tiny_cfg, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "deaths"
    engine = functools.partial(dies_while_loading, marker=str(marker), times=1)
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1", "ray.max_actor_restarts=2"),
                           engine_factory=engine)
    assert _deaths(marker) == 1, "the hook did not fire"
    assert summary.shards_labeled == 3 and summary.failed_shards == []
    assert summary.images_ok + summary.images_failed == 3 * PER_SHARD
    assert_same_output(snapshot(reference[0], NAMES), snapshot(out, NAMES))


def test_one_of_two_actors_dying_while_loading_rejoins_and_the_run_completes(reference, corpus, tiny_cfg, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "deaths"
    engine = functools.partial(dies_while_loading, marker=str(marker), times=1)
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=2", "ray.max_actor_restarts=2"),
                           engine_factory=engine)
    assert _deaths(marker) == 1
    assert summary.shards_labeled == 3 and summary.failed_shards == []
    assert_same_output(snapshot(reference[0], NAMES), snapshot(out, NAMES))


def test_no_actor_can_start_names_the_last_failure(corpus, tiny_cfg, tmp_path, ray_local):
    out, marker = tmp_path / "out", tmp_path / "deaths"
    engine = functools.partial(dies_while_loading, marker=str(marker), times=10**6)
    with pytest.raises(UserError, match="a Ray worker died while starting") as info:
        run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1", "ray.max_actor_restarts=1"),
                     engine_factory=engine)
    assert "\n" not in str(info.value)
    assert _deaths(marker) == 2, "started once, restarted once (ray.max_actor_restarts=1), then given up"
    assert not (out / "_done").exists() or not list((out / "_done").iterdir())
