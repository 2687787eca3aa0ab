"""How a GPU node's cores are split between its label actors, so that Ray and the threads agree.

Each GPU actor gets the node's cores divided by the actors the node holds (its GPUs divided by
`ray.gpus_per_actor`), reserved through Ray's `num_cpus`; inside the actor, the decode/encode pool
gets those CPUs minus the calling thread (inference) and the shard reader thread. Before, every
actor sized its pool to all the node's cores (`torch.cuda.device_count()` is 1 inside an actor)
while reserving one CPU: an 8-GPU node ran 8 pools of all its cores.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

OTHER_THREADS = 2  # per actor besides the pool: the inference (calling) thread and the reader thread


def cpus_per_gpu_actor(nodes: Iterable[dict[str, Any]], gpus_per_actor: float) -> float:
    """Whole CPUs per actor on the tightest alive GPU node (`ray.nodes()` entries); 1 without one."""
    shares = []
    for node in nodes:
        res = node.get("Resources", {})
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        if node.get("Alive", True) and gpus > 0 and cpus > 0:
            actors = max(1, int(gpus / gpus_per_actor + 1e-9))
            shares.append(max(1, int(cpus // actors)))
    return float(min(shares)) if shares else 1.0


def pool_threads(cpus: float) -> int:
    """Decode/encode threads for an actor holding `cpus` CPUs."""
    return max(1, int(cpus) - OTHER_THREADS)


def assigned_cpus() -> Optional[float]:
    """The CPUs Ray reserved for the current actor, or None outside a Ray actor."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        ctx = ray.get_runtime_context()
        if ctx.get_actor_id() is None:
            return None
        return float(ctx.get_assigned_resources().get("CPU", 0)) or None
    except Exception:  # noqa: BLE001 - no Ray, or a Ray without these calls: fall back to the host
        return None


def host_cpus_per_gpu(gpus: int) -> float:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return float(max(1, cores // max(1, gpus)))
