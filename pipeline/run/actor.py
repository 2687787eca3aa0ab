"""The Ray actor: loads the engine once, then labels whole shards on request.

`LabelWorker` is a plain class so it can be unit-tested; the runner wraps it with `ray.remote`
and per-run resources (one GPU each, or `ray.cpus_per_actor` CPUs). Per-batch progress goes to
the driver through a named `pipeline.run.progress.ProgressBoard` actor.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Callable, Optional

from pipeline.config import Config
from pipeline.run.progress import ProgressSender, board_handle, remote_put
from pipeline.io.shards import ShardSpec
from pipeline.run.stage import ShardLabeler, ShardProgress, ShardResult
from pipeline.io.output_dir import OutputDir

log = logging.getLogger(__name__)

EngineFactory = Callable[[Config], Any]
# Test-only fault injection: "SHARD:INDEX:MARKER" makes the worker labeling SHARD exit abruptly
# once INDEX samples are done, unless the file MARKER exists (it is created first, so the
# retried attempt runs through). Read by the driver and handed to the actors explicitly.
CRASH_ENV = "PSEUDOLABEL_TEST_CRASH_AT"


def default_engine(cfg: Config) -> Any:
    if cfg.model.student:  # a student of `pseudolabel train` labels instead of CLIP
        from pipeline.student.engine import StudentEngine

        return StudentEngine.from_config(cfg)
    from pipeline.engine import Segmenter

    return Segmenter.from_config(cfg)


class LabelWorker:
    def __init__(self, cfg: Config, output: str, progress_board: Optional[str] = None,
                 engine_factory: Optional[EngineFactory] = None, log_level: int = logging.INFO,
                 crash_at: Optional[str] = None):
        _configure_logging(log_level)
        self.cfg = cfg
        self.board = board_handle(progress_board) if progress_board else None
        # Coalesced: at most a few messages a second, whatever the batch rate (see progress.py).
        self.sender = ProgressSender(remote_put(self.board)) if self.board is not None else None
        self.crash_at = _parse_crash(crash_at)
        self.attempt = 0
        self.engine = (engine_factory or default_engine)(cfg)
        self.worker = _worker_id()
        storage = OutputDir(output, cfg.io.storage_options)
        self.labeler = ShardLabeler(self.engine, cfg, storage, self.worker, progress=self._report)
        log.info("worker %s ready (%d classes)", self.worker, self.engine.num_classes)

    def ping(self) -> str:
        return self.worker

    def describe(self) -> dict[str, Any]:
        """What dataset.json needs to know about the engine."""
        vocab = self.engine.vocabulary
        return {
            "names": list(vocab.names),
            "synonyms": [list(s) for s in vocab.synonyms],
            "colors": [list(c) for c in vocab.colors],
            "num_classes": int(self.engine.num_classes),
            "model": dict(self.engine.model_identity),
        }

    def label(self, shard: ShardSpec, attempt: int = 0) -> ShardResult:
        self.attempt = attempt
        return self.labeler.label(shard)

    def _report(self, p: ShardProgress) -> None:
        if self.crash_at and p.shard == self.crash_at[0] and p.samples > self.crash_at[1]:
            _maybe_crash(self.crash_at[2])
        if self.sender is not None:
            # Fire and forget: a lost progress message only makes the bar lag, never fails the shard.
            self.sender.send((p.shard, self.attempt, p.samples, p.ok, p.errors))


def _worker_id() -> str:
    try:
        import ray

        actor_id = ray.get_runtime_context().get_actor_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests) there is no actor id
        actor_id = None
    return f"{socket.gethostname()}:{actor_id or os.getpid()}"


def _configure_logging(level: int) -> None:
    logger = logging.getLogger("pipeline")
    logger.setLevel(level)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # a root handler added later (open_clip logs at root) would print twice


def _parse_crash(spec: Optional[str]) -> Optional[tuple[str, int, str]]:
    if not spec:
        return None
    shard, index, marker = spec.split(":", 2)
    return shard, int(index), marker


def _maybe_crash(marker: str) -> None:
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    log.warning("test hook %s: exiting abruptly", CRASH_ENV)
    os._exit(1)
