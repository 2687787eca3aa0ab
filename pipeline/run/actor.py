"""The Ray actor: loads the engine once (`setup`, which reports what it loaded), then labels whole
shards on request.

`LabelWorker` is a plain class so it can be unit-tested; the runner wraps it with `ray.remote`
and per-run resources (one GPU each, or `ray.cpus_per_actor` CPUs). Per-batch progress goes to
the driver through a named `pipeline.run.progress.ProgressBoard` actor.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
from typing import Any, Callable, Optional

from pipeline.config import Config
from pipeline.engine.protocol import DescribedEngine
from pipeline.errors import (DeviceFatalError, ShardError, ShardInferenceError, TransientReadError,
                             TransientWriteError, UserError)
from pipeline.identity import Identity, IdentityMismatch, loaded_identity, mismatch_message
from pipeline.run.progress import ProgressSender, board_handle, remote_put
from pipeline.io.shards import ShardSpec
from pipeline.run.stage import ShardLabeler, ShardProgress, ShardResult
from pipeline.io.output_dir import OutputDir

log = logging.getLogger(__name__)

EngineFactory = Callable[[Config], DescribedEngine]  # pipeline/engine/protocol.py
ProgressHook = Callable[[ShardProgress], None]
# Called once in each worker process to build a hook that sees every progress report of the
# stage before it is sent (fault injection in tests: tests/support.CrashAt kills the worker part
# way through a shard). Picklable, as it travels to the actors.
FaultFactory = Callable[[], ProgressHook]
DEVICE_FATAL_EXIT = 75  # exit status of a worker whose device failed (EX_TEMPFAIL: retry elsewhere)
exit_process = os._exit  # module attribute so that tests can observe the exit without dying


def default_engine(cfg: Config) -> DescribedEngine:
    if cfg.model.student:  # a student of `pseudolabel train` labels instead of CLIP
        from pipeline.student.engine import StudentEngine

        return StudentEngine.from_config(cfg)
    from pipeline.engine import Segmenter

    return Segmenter.from_config(cfg)


class WorkerStartError(UserError):
    """A worker could not load its engine for a reason that is not already a `UserError` (one line)."""


class LabelWorker:
    """Construction is cheap; `setup()` loads the engine and reports the identity it loaded. The
    driver calls it before handing out shards, and `label` calls it again after Ray restarted the
    actor (which re-runs only `__init__`), so no shard is labeled by an unchecked engine."""

    def __init__(self, cfg: Config, output: str, progress_board: Optional[str] = None,
                 engine_factory: Optional[EngineFactory] = None, log_level: int = logging.INFO,
                 fault_factory: Optional[FaultFactory] = None, expected_identity: Optional[dict[str, Any]] = None):
        _configure_logging(log_level)
        self.cfg = cfg
        self.output = output
        self.board = board_handle(progress_board) if progress_board else None
        # Coalesced: at most a few messages a second, whatever the batch rate (see progress.py).
        self.sender = ProgressSender(remote_put(self.board)) if self.board is not None else None
        self.fault: Optional[ProgressHook] = fault_factory() if fault_factory is not None else None
        self.attempt = 0
        self.engine_factory = engine_factory or default_engine
        self.expected = Identity.from_dict(expected_identity) if expected_identity else None
        self.worker = _worker_id()
        self.engine: Optional[DescribedEngine] = None
        self.identity: Optional[Identity] = None
        self.labeler: Optional[ShardLabeler] = None

    def ping(self) -> str:
        return self.worker

    def setup(self) -> dict[str, Any]:
        """Load the engine (once) and return {"identity", "describe", "worker"}; raises a `UserError`
        (its message is one line) when the engine cannot load or is not the one the driver expects."""
        if self.labeler is None:
            self.cfg = configure_device(self.cfg)
            try:
                engine = self.engine_factory(self.cfg)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a start-up failure of any kind becomes one typed line
                text = str(exc).strip().splitlines()
                raise WorkerStartError(f"worker {self.worker} could not load the engine: {type(exc).__name__}: "
                                       f"{text[0][:300] if text else ''}") from exc
            identity = loaded_identity(self.cfg, engine)
            if self.expected is not None and identity.fingerprint != self.expected.fingerprint:
                raise IdentityMismatch(mismatch_message(
                    identity.differences(self.expected), f"worker {self.worker} loaded another engine than the "
                    "driver checked", "driver has", "worker loaded", "Make every node see the same files "
                    "(vocabulary, templates, checkpoint) and re-run"))
            storage = OutputDir(self.output, self.cfg.io.storage_options)
            self.labeler = ShardLabeler(engine, self.cfg, storage, self.worker, progress=self._report,
                                        fingerprint=identity.fingerprint)
            self.engine, self.identity = engine, identity
            log.info("worker %s ready (%d classes, fingerprint %s)", self.worker, engine.num_classes,
                     identity.fingerprint)
        assert self.identity is not None
        return {"identity": self.identity.to_dict(), "describe": self.describe(), "worker": self.worker}

    def describe(self) -> dict[str, Any]:
        """What dataset.json needs to know about the engine."""
        if self.engine is None:
            self.setup()
        vocab = self.engine.vocabulary
        return {
            "names": list(vocab.names),
            "synonyms": [list(s) for s in vocab.synonyms],
            "colors": [list(c) for c in vocab.colors],
            "num_classes": int(self.engine.num_classes),
            "model": dict(self.engine.model_identity),
        }

    def label(self, shard: ShardSpec, attempt: int = 0) -> ShardResult:
        self.setup()  # a no-op unless Ray restarted this actor: then load and check again first
        assert self.labeler is not None
        self.attempt = attempt
        try:
            return self.labeler.label(shard)
        except DeviceFatalError as exc:
            # Every later call on this device would fail too: exit, so that Ray restarts the actor with
            # a fresh device context and the dispatcher retries the shard (left incomplete) there.
            log.critical("worker %s: %s; exiting for a restart (shard %s retried)", self.worker, exc, shard.name)
            logging.shutdown()
            exit_process(DEVICE_FATAL_EXIT)
            raise  # only reached where exit_process is replaced (tests)
        except Exception as exc:  # noqa: BLE001 - re-raised in a form Ray can always serialise
            raise portable_error(exc) from None

    def _report(self, p: ShardProgress) -> None:
        if self.fault is not None:
            self.fault(p)
        if self.sender is not None:
            # Fire and forget: a lost progress message only makes the bar lag, never fails the shard.
            self.sender.send((p.shard, self.attempt, p.samples, p.ok, p.errors))


def configure_device(cfg: Config) -> Config:
    """The config this worker runs: inside a Ray actor holding GPUs, `device: cuda:N` becomes
    `cuda:0` (Ray hides every other GPU with CUDA_VISIBLE_DEVICES, so the assigned one is cuda:0
    whatever N was), and a fractional GPU (`ray.gpus_per_actor` < 1) caps this process's CUDA
    allocator at that share, so that one actor's peak cannot starve its neighbours."""
    gpus = _ray_gpu_ids()
    if not gpus:
        return cfg
    device = actor_device(cfg.device, len(gpus))
    if device != cfg.device:
        log.info("device %s: inside this Ray actor its GPU (%s) is %s", cfg.device, gpus[0], device)
        cfg = dataclasses.replace(cfg, device=device)
    fraction = memory_fraction(cfg.ray.gpus_per_actor)
    if fraction is not None and device != "cpu":
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(fraction, 0)
            log.info("GPU shared (ray.gpus_per_actor %s): this actor's allocator is capped at %.0f%%",
                     cfg.ray.gpus_per_actor, 100 * fraction)
    return cfg


def actor_device(device: str, visible: int) -> str:
    """`device` as seen by an actor that sees `visible` GPUs, numbered from 0: cuda:N beyond them
    is the one Ray assigned, cuda:0; auto, cpu, cuda and an index it sees are kept."""
    if visible > 0 and device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit() or int(index) >= visible:
            return "cuda:0"
    return device


def memory_fraction(gpus_per_actor: float) -> Optional[float]:
    """The share of its GPU's memory an actor may allocate: its share of the GPU, when below 1."""
    return float(gpus_per_actor) if 0 < gpus_per_actor < 1 else None


def _ray_gpu_ids() -> list[Any]:
    """The GPUs Ray assigned to this actor; [] outside Ray (tests, `pseudolabel bench`)."""
    try:
        import ray

        if not ray.is_initialized():
            return []
        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside a Ray worker there is no assignment
        return []


# Errors the dispatcher tells apart by type (retried after a backoff); everything else is a ShardError.
_TYPED_ERRORS = (TransientReadError, TransientWriteError, ShardInferenceError)


def portable_error(exc: BaseException) -> Exception:
    """`exc` as it should reach the driver: one of `_TYPED_ERRORS` when the dispatcher acts on that
    type, else a `ShardError` whose message starts with the original type's name; either way
    holding only a message string, never objects Ray might fail to pickle (an aiohttp error with a
    multidict would arrive as a bare RayError, its cause lost)."""
    text = str(exc).strip()
    message = "\n".join(text.splitlines()[:3])[:1000]
    for typed in _TYPED_ERRORS:
        if isinstance(exc, typed):
            return typed(message)
    return ShardError(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _worker_id() -> str:
    try:
        import ray

        actor_id = ray.get_runtime_context().get_actor_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests) there is no actor id
        actor_id = None
    return f"{socket.gethostname()}:{actor_id or os.getpid()}"


def _configure_logging(level: int) -> None:
    from pipeline.redact import install_log_redaction

    install_log_redaction()  # a worker's log lines (forwarded to the driver) carry no credential
    logger = logging.getLogger("pipeline")
    logger.setLevel(level)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # a root handler added later (open_clip logs at root) would print twice

