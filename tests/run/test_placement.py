"""GPU actors reserve the node's cores per actor, and size their decode pool to that reservation."""
from types import SimpleNamespace

import pytest

from pipeline.run.placement import cpus_per_gpu_actor, pool_threads
from pipeline.run.runner import _actor_plan
from pipeline.run.stage import decode_threads


def _node(cpus, gpus, alive=True):
    return {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}


@pytest.mark.parametrize("nodes,gpus_per_actor,expected", [
    ([_node(96, 8)], 1.0, 12),  # an 8-GPU node: 12 cores each, not 8 pools of 96
    ([_node(96, 8)], 0.5, 6),  # two actors per GPU share its cores
    ([_node(16, 1), _node(64, 8)], 1.0, 8),  # the tightest GPU node decides (actors are alike)
    ([_node(16, 1), _node(8, 8, alive=False)], 1.0, 16),  # dead nodes do not count
    ([_node(32, 0)], 1.0, 1),  # no GPU node yet (autoscaling): one CPU, as before
])
def test_cpus_per_gpu_actor(nodes, gpus_per_actor, expected):
    assert cpus_per_gpu_actor(nodes, gpus_per_actor) == expected


def test_pool_leaves_the_inference_and_reader_threads():
    assert [pool_threads(c) for c in (12, 3, 2, 1)] == [10, 1, 1, 1]


def test_actor_plan_reserves_cpus_for_gpu_actors(ray_local, tiny_cfg):
    count, options = _actor_plan(tiny_cfg("device=cuda"), 3)  # no GPU node here: queued, one CPU
    assert options["num_gpus"] == 1.0 and options["num_cpus"] == 1.0 and count == 1
    _, options = _actor_plan(tiny_cfg("device=cuda", "ray.cpus_per_gpu_actor=6"), 3)
    assert options["num_cpus"] == 6


def test_decode_pool_follows_the_ray_reservation(ray_local):
    import ray

    from tests.support import PoolSizeProbe, start_suite_ray

    start_suite_ray(min_cpus=3)  # a run may have stopped `ray_local`'s Ray since (the suite's order decides)
    actor = ray.remote(num_cpus=3)(PoolSizeProbe).remote()
    try:
        assert ray.get(actor.size.remote()) == 1  # 3 CPUs reserved: 1 pool thread + inference + reader
    finally:
        ray.kill(actor)
    explicit = SimpleNamespace(io=SimpleNamespace(decode_threads=5))
    assert decode_threads(explicit, SimpleNamespace(type="cuda")) == 5
