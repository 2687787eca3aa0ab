"""The soak of issue 24: 100 tiny shards with bad samples, label workers SIGKILLed every few
seconds (some while they start: loading the engine after a restart, or the first start-up),
end in ONE run whose every row and mask equals an uninterrupted labeling's.

The workers register their pid when Ray (re)starts them (the run's fault hook is built in each
worker process, pipeline.run.actor) and mark it ready at their first progress report; a killer
thread in the test SIGKILLs some of them while they start. The kills while labeling are planned
by progress, not by the clock (a fast machine finished the corpus before a timed killer had its
count): the k-th is due once k * SHARDS / (LABEL_KILLS + 2) shards are complete, and the first
worker to report progress after that claims it (a file made with O_EXCL) and SIGKILLs itself,
mid-shard."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.io.shards import expand_input
from pipeline.io.tarfiles import write_tar
from pipeline.run.runner import run_pipeline
from pipeline.run.verify import verify_output
from tests.support import assert_same_output, encode, rgb_image, snapshot

SHARDS = 100
LABEL_KILLS = 9
STARTUP_KILLS = 3  # 12 in all, as many as the fault campaign's soak


def _corpus(root: Path) -> Path:
    """SHARDS shards of 2 images; every 7th has a corrupt image, every 11th a member of no sample."""
    root.mkdir(parents=True)
    for i in range(SHARDS):
        members = [(f"s{i:03d}-a.png", encode(rgb_image(32 + 8 * (i % 3), 32, seed=i)))]
        if i % 7 == 3:
            members.append((f"s{i:03d}-b.png", b"\x89PNG\r\n\x1a\n" + bytes(range(64))))  # corrupt
        else:
            members.append((f"s{i:03d}-b.jpg", encode(rgb_image(40, 32, seed=1000 + i), "JPEG")))
        if i % 11 == 5:
            members.append((f"s{i:03d}-c.txt", b"caption without an image"))  # a sample with no image
        write_tar(root / f"soak-{i:06d}.tar", members)
    return root


@dataclass(frozen=True)
class Register:
    """Fault factory: each worker process (each restart too) writes `PID.up` when it starts and
    `PID.ready` at its first progress report, and takes the next due labeling kill (see above)."""

    folder: str
    done: str

    def __call__(self):
        Path(self.folder, f"{os.getpid()}.up").write_text(str(time.time()))
        return self._on_progress

    def _on_progress(self, p) -> None:
        ready = Path(self.folder, f"{os.getpid()}.ready")
        if not ready.exists():
            ready.write_text(p.shard)
        complete = sum(1 for n in os.listdir(self.done) if n.endswith(".json")) if os.path.isdir(self.done) else 0
        for k in range(1, LABEL_KILLS + 1):
            if complete < k * SHARDS // (LABEL_KILLS + 2):
                return
            try:
                os.close(os.open(Path(self.folder, f"kill-{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            Path(self.folder, f"kill-{k}").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


class Killer(threading.Thread):
    """SIGKILLs up to STARTUP_KILLS workers 0.2 s after they (re)started, before their first
    progress (never the last one standing)."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder, self.stop = folder, threading.Event()
        self.killed: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(0.05) and len(self.killed) < STARTUP_KILLS:
            up = {int(p.stem): p.stat().st_mtime for p in self.folder.glob("*.up")}
            ready = {int(p.stem) for p in self.folder.glob("*.ready")}
            live = [pid for pid in up if pid not in self.killed and _alive(pid)]
            starting = [pid for pid in live if pid not in ready and time.time() - up[pid] > 0.2]
            if starting and len(live) > 1:
                try:
                    os.kill(starting[0], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.killed.append(starting[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow  # 68 s on a quiet 2-core machine (400-600 s at load average ~24)
@pytest.mark.timeout(900)
def test_soak_actor_kills_end_in_one_exact_run(ray_local, tiny_cfg, tmp_path):
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Register travels to the workers
    corpus, out, ref, pids = _corpus(tmp_path / "in"), tmp_path / "out", tmp_path / "ref", tmp_path / "pids"
    pids.mkdir()
    names = [s.name for s in expand_input(str(corpus))]
    cfg = tiny_cfg("ray.cpu_actors=2", "ray.max_actor_restarts=100", "ray.max_shard_retries=20")
    killer = Killer(pids)
    killer.start()
    try:
        summary = run_pipeline(str(corpus), str(out), cfg, fault_factory=Register(str(pids), str(out / "_done")))
    finally:
        killer.stop.set()
        killer.join()
    labeling_kills = sorted(int(p.name.split("-")[1]) for p in pids.glob("kill-*"))
    assert labeling_kills == list(range(1, LABEL_KILLS + 1))  # the faults happened
    assert len(killer.killed) >= 2, killer.killed
    assert summary.shards_labeled == SHARDS and summary.shards_failed == 0, summary.failed_shards
    assert summary.dataset_shards_complete == SHARDS
    # The reference: the same run, uninterrupted (same workers, so the same float summation order).
    run_pipeline(str(corpus), str(ref), cfg)
    assert_same_output(snapshot(ref, names), snapshot(out, names))  # every row and mask, in one run
    bad = sum(1 for i in range(SHARDS) if i % 7 == 3) + sum(1 for i in range(SHARDS) if i % 11 == 5)
    assert summary.images_failed == bad and summary.images_ok == 2 * SHARDS - bad + sum(
        1 for i in range(SHARDS) if i % 11 == 5)  # from the records on disk, not the reports
    assert verify_output(str(out), str(corpus)).passed
