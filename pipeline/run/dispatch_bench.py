"""`pseudolabel bench --dispatch`: the driver's cost per shard, with workers that cost nothing.

Drives the real `Dispatcher`, progress board, progress coalescing and result handling on a local
Ray with instant fake workers (Ray actors): each "labels" a shard by sending the progress
messages a 1,000-image shard at batch 8 sends (125, through the same `ProgressSender` a real
worker uses, so coalesced the same way) and returning its `ShardResult`. What is left is the
driver: if anything in it grows with the number of shards handed out, the rate over the last
tenth of the shards falls below the rate over the first tenth.
"""
from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from pipeline.io.layout import ShardStatus
from pipeline.io.records import ShardResult
from pipeline.io.shards import ShardSpec
from pipeline.run.progress import ProgressBoard, ProgressSender, board_handle, remote_put

log = logging.getLogger(__name__)

IMAGES_PER_SHARD = 1000
BATCH = 8
CLASSES = 21


class FakeWorker:
    """A label worker that does no work: progress messages and a result, as fast as it can."""

    def __init__(self, board_name: str, images: int = IMAGES_PER_SHARD, batch: int = BATCH):
        self.sender = ProgressSender(remote_put(board_handle(board_name)))
        self.images, self.batch = images, batch

    def ping(self) -> str:
        return f"fake:{os.getpid()}"

    def label(self, shard: ShardSpec, attempt: int = 0) -> ShardResult:
        done = 0
        while done < self.images:  # one message per batch, as ShardLabeler reports
            done = min(self.images, done + self.batch)
            self.sender.send((shard.name, attempt, done, done, 0))
        return ShardResult(shard.name, shard.url, ShardStatus.DONE, samples=done, ok=done,
                           worker="fake", class_pixels=[1] * CLASSES)


@dataclass
class DispatchBench:
    shards: int
    actors: int
    seconds: float
    shards_per_s: float
    dispatch_shards_per_s_first: float  # over the first tenth of the shards
    dispatch_shards_per_s_last: float  # over the last tenth
    last_over_first: float
    progress_messages: int  # that reached the board (after the workers' coalescing)
    progress_messages_uncoalesced: int  # what the workers would have sent without it
    final_progress_samples: int  # the last cumulative count the progress callback saw
    summary_samples: int  # samples in the run tally
    progress_truthful: bool  # the two agree, and equal shards x images
    driver_max_rss_mb: float


class _Clock:
    """Finish times at the tenth boundaries only (nothing per shard is kept)."""

    def __init__(self, n: int):
        self.n = n
        self.marks = {max(1, n // 10): 0.0, n - max(1, n // 10): 0.0, n: 0.0}
        self.finished = 0
        self.t0 = time.monotonic()

    def tick(self, _result: ShardResult) -> None:
        self.finished += 1
        if self.finished in self.marks:
            self.marks[self.finished] = time.monotonic()


def run_dispatch_bench(shards: int, actors: int = 4) -> DispatchBench:
    import ray

    from pipeline.run.dispatch import Dispatcher, wait_ready

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address="local", include_dashboard=False, num_cpus=max(2, actors),
                 log_to_driver=False, logging_level=logging.WARNING)
    try:
        board_name = f"pseudolabel-bench-progress-{os.getpid()}"
        board = ray.remote(ProgressBoard).options(name=board_name, num_cpus=0).remote()
        workers = [ray.remote(FakeWorker).options(num_cpus=0, max_restarts=0).remote(board_name)
                   for _ in range(actors)]
        ready, reasons = wait_ready(workers, 120.0)
        if len(ready) != actors:
            raise RuntimeError(f"fake workers failed to start: {reasons}")
        seen = [0, 0, 0]

        def on_progress(samples: int, ok: int, errors: int) -> None:
            seen[:] = [samples, ok, errors]

        clock = _Clock(shards)
        dispatcher = Dispatcher(ready, board, max_shard_retries=0, on_progress=on_progress, on_result=clock.tick)
        specs = [ShardSpec(url=f"fake://{i}", name=f"s{i:07d}") for i in range(shards)]
        clock.t0 = time.monotonic()
        tally = dispatcher.run(specs)
        seconds = time.monotonic() - clock.t0
        received = ray.get(board.stats.remote())["received"]
        for actor in [*workers, board]:
            ray.kill(actor)
    finally:
        if started_here:
            ray.shutdown()
    return _result(shards, actors, seconds, clock, seen[0], tally.samples, received)


def _result(shards: int, actors: int, seconds: float, clock: _Clock, progress_samples: int,
            summary_samples: int, received: int) -> DispatchBench:
    tenth = max(1, shards // 10)
    m = clock.marks
    first = tenth / max(m[tenth] - clock.t0, 1e-9)
    last = tenth / max(m[shards] - m[shards - tenth], 1e-9)
    expected = shards * IMAGES_PER_SHARD
    return DispatchBench(
        shards=shards, actors=actors, seconds=round(seconds, 3), shards_per_s=round(shards / seconds, 1),
        dispatch_shards_per_s_first=round(first, 1), dispatch_shards_per_s_last=round(last, 1),
        last_over_first=round(last / first, 3), progress_messages=received,
        progress_messages_uncoalesced=shards * -(-IMAGES_PER_SHARD // BATCH),
        final_progress_samples=progress_samples, summary_samples=summary_samples,
        progress_truthful=progress_samples == summary_samples == expected,
        driver_max_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )


def format_dispatch(b: DispatchBench) -> str:
    return "\n".join([
        f"dispatch: {b.shards} shards on {b.actors} instant fake workers in {b.seconds:.1f}s "
        f"({b.shards_per_s:.0f} shards/s)",
        f"  first tenth {b.dispatch_shards_per_s_first:.0f} shards/s, last tenth "
        f"{b.dispatch_shards_per_s_last:.0f} shards/s ({b.last_over_first:.0%} of the first)",
        f"  progress messages at the board: {b.progress_messages} "
        f"(uncoalesced: {b.progress_messages_uncoalesced})",
        f"  progress bar total {b.final_progress_samples} samples, summary {b.summary_samples}: "
        + ("agree" if b.progress_truthful else "DISAGREE"),
        f"  driver peak RSS {b.driver_max_rss_mb:.0f} MiB",
    ])


def to_json(b: DispatchBench) -> dict[str, Any]:
    return asdict(b)


def main_dispatch(shards: int, actors: int, json_path: Optional[str]) -> int:
    import json

    bench = run_dispatch_bench(shards, actors)
    print(format_dispatch(bench))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(to_json(bench), f, indent=1)
    return 0 if bench.progress_truthful else 1
