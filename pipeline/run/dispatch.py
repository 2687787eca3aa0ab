"""Hand shards to a pool of Ray actors dynamically and collect their results.

One shard per actor at a time: an actor gets its next shard when it returns the last, so a slow
shard holds one actor and never the rest. A shard is resubmitted only when its worker was lost
(actor died, worker crashed, object lost), at most ray.max_shard_retries times; an exception
raised by the labeling code itself is a bug or a data problem that a retry would repeat, so the
shard is recorded as failed and the run goes on. Lost actors are restarted by Ray (at most
ray.max_actor_restarts times) and probed with `ping` before getting new work.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import ray
from ray.exceptions import ActorDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

from pipeline.io.shards import ShardSpec
from pipeline.run.stage import CRASHED, ShardResult

log = logging.getLogger(__name__)

INFRA_ERRORS = (RayActorError, ActorDiedError, WorkerCrashedError, ObjectLostError)

@dataclass
class _Task:
    kind: str  # "label" | "ping"
    actor: Any
    shard: Optional[ShardSpec] = None
    attempt: int = 0


@dataclass
class ProgressTotals:
    """Samples done in this run, live: per shard, only the current attempt counts."""
    per_shard: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # attempt, samples, ok, err

    def set(self, shard: str, attempt: int, samples: int, ok: int, errors: int) -> bool:
        current = self.per_shard.get(shard)
        if current is not None and current[0] > attempt:
            return False  # late report from a lost attempt
        self.per_shard[shard] = (attempt, samples, ok, errors)
        return True

    def totals(self) -> tuple[int, int, int]:
        vals = list(self.per_shard.values())
        return sum(v[1] for v in vals), sum(v[2] for v in vals), sum(v[3] for v in vals)


class Dispatcher:
    def __init__(self, actors: list[Any], progress_board: Any, max_shard_retries: int,
                 on_progress: Callable[[int, int, int], None], on_result: Callable[[ShardResult], None],
                 stall_timeout_s: float = 900.0, stop: Optional[threading.Event] = None):
        self.actors = list(actors)
        self.stop = stop  # set when this run lost its lock: no new shard is handed out
        self.stall_timeout_s = stall_timeout_s
        self.last_busy = time.monotonic()  # last moment a shard was being labeled
        self.board = progress_board
        self.max_retries = max_shard_retries
        self.on_progress = on_progress
        self.on_result = on_result
        self.totals = ProgressTotals()
        self.tasks: dict[Any, _Task] = {}
        self.idle: list[Any] = []
        self.todo: collections.deque[tuple[ShardSpec, int]] = collections.deque()

    def run(self, shards: list[ShardSpec]) -> list[ShardResult]:
        results: list[ShardResult] = []
        self.todo.extend((s, 0) for s in shards)
        self.idle = list(reversed(self.actors))  # ready actors (see wait_ready); pop() takes the first
        while self.todo or any(t.kind == "label" for t in self.tasks.values()):
            if self.stop is not None and self.stop.is_set():
                results.extend(self._abandon("another run took over the OUTPUT lock"))
                break
            self._assign()
            if any(t.kind == "label" for t in self.tasks.values()):
                self.last_busy = time.monotonic()
            elif not self.tasks or time.monotonic() - self.last_busy > self.stall_timeout_s:
                # Every worker is gone, or only restarts are pending that never come (a lost node
                # that is not replaced): record the queued shards as failed instead of waiting forever.
                results.extend(self._abandon("no Ray worker left alive"))
                break
            ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=0.25)
            self._drain_progress()
            for ref in ready:
                result = self._collect(ref, self.tasks.pop(ref))
                if result is not None:
                    results.append(result)
                    self._set_final(result)
                    self.on_result(result)
        self._drain_progress()
        return results

    def _assign(self) -> None:
        while self.idle and self.todo:
            actor = self.idle.pop()
            shard, attempt = self.todo.popleft()
            self.totals.set(shard.name, attempt, 0, 0, 0)
            self.tasks[actor.label.remote(shard, attempt)] = _Task("label", actor, shard, attempt)
            log.info("shard %s: assigned (attempt %d, %d queued)", shard.name, attempt, len(self.todo))

    def _collect(self, ref: Any, task: _Task) -> Optional[ShardResult]:
        if task.kind == "ping":
            try:
                ray.get(ref)
                self.idle.append(task.actor)
            except INFRA_ERRORS as exc:
                log.error("a Ray worker is gone for good (restarts exhausted?): %s", _first_line(exc))
            return None
        assert task.shard is not None
        try:
            result: ShardResult = ray.get(ref)
        except INFRA_ERRORS as exc:
            return self._lost(task, exc)
        except RayTaskError as exc:
            log.error("shard %s: labeling raised; not retried: %s", task.shard.name, _first_line(exc))
            self.idle.append(task.actor)
            return ShardResult(task.shard.name, task.shard.url, CRASHED, failure=f"exception: {_cause(exc)}")
        self.idle.append(task.actor)
        log.info("shard %s: %s on %s, %d samples (%d ok, %d errors) in %.1fs", result.shard, result.status,
                 result.worker, result.samples, result.ok, result.errors, result.seconds)
        return result

    def _lost(self, task: _Task, exc: Exception) -> Optional[ShardResult]:
        assert task.shard is not None
        # The actor restarts on its own (max_restarts); probe it before giving it new work.
        self.tasks[task.actor.ping.remote()] = _Task("ping", task.actor)
        if task.attempt < self.max_retries:
            log.warning("shard %s: worker lost (%s); retry %d of %d", task.shard.name, type(exc).__name__,
                        task.attempt + 1, self.max_retries)
            self.todo.appendleft((task.shard, task.attempt + 1))
            self.totals.set(task.shard.name, task.attempt + 1, 0, 0, 0)
            self._report()
            return None
        log.error("shard %s: worker lost %d times; giving up: %s", task.shard.name, task.attempt + 1,
                  _first_line(exc))
        return ShardResult(task.shard.name, task.shard.url, CRASHED,
                           failure=f"worker lost {task.attempt + 1} times: {type(exc).__name__}")

    def _abandon(self, reason: str) -> list[ShardResult]:
        log.error("%s; %d shards left unlabeled", reason, len(self.todo))
        out = [ShardResult(s.name, s.url, CRASHED, failure=reason) for s, _ in self.todo]
        self.todo.clear()
        for r in out:
            self.on_result(r)
        return out

    def _set_final(self, result: ShardResult) -> None:
        current = self.totals.per_shard.get(result.shard, (0, 0, 0, 0))
        self.totals.per_shard[result.shard] = (current[0], result.samples, result.ok, result.errors)
        self._report()

    def _drain_progress(self) -> None:
        if self.board is None:
            return
        # One report per message, so the bar moves per batch even when several arrived at once.
        try:
            messages = ray.get(self.board.drain.remote())
        except INFRA_ERRORS as exc:  # progress is best effort; results arrive through ray.get
            log.warning("progress board lost (%s); live progress stops here", _first_line(exc))
            self.board = None
            return
        for shard, attempt, samples, ok, errors in messages:
            if self.totals.set(shard, attempt, samples, ok, errors):
                self._report()

    def _report(self) -> None:
        self.on_progress(*self.totals.totals())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _cause(exc: RayTaskError) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {_first_line(cause)}"
    return _first_line(exc)


def wait_ready(actors: list[Any], timeout: float) -> tuple[list[Any], list[str]]:
    """Actors whose engine loaded, and the reasons of those that failed to start."""
    refs = {a.ping.remote(): a for a in actors}
    ok, reasons = [], []
    deadline = time.monotonic() + timeout
    for ref, actor in refs.items():
        try:
            ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
            ok.append(actor)
        except (RayActorError, RayTaskError, ray.exceptions.GetTimeoutError) as exc:
            reasons.append(_cause(exc) if isinstance(exc, RayTaskError) else _actor_failure(exc))
    return ok, reasons


def _actor_failure(exc: BaseException) -> str:
    # An actor whose constructor raised carries the constructor's error text in its message.
    text = str(exc)
    for marker in ("UserError", "ModelLoadError", "ConfigError", "Error:"):
        idx = text.find(marker)
        if idx >= 0:
            return text[idx:].splitlines()[0][:400]
    return _first_line(exc)
