"""Hand shards to a pool of Ray actors dynamically and collect their results.

One shard per actor at a time: an actor gets its next shard when it returns the last, so a slow
shard holds one actor and never the rest. Retries:
- worker lost (actor died, worker crashed, object lost): the shard is resubmitted, at most
  ray.max_shard_retries times; the actor is restarted by Ray (ray.max_actor_restarts) and pinged,
  with backoff, until it answers again, then it gets shards again;
- no progress for ray.shard_stall_timeout_s (a hung read, a busy loop): the actor is killed so Ray
  restarts it, and the shard counts as lost;
- a `TransientReadError` (a stream broke for transport reasons), a `TransientWriteError` (an
  upload kept failing after the storage layer's own retries) or a `ShardInferenceError` (the
  engine failed most of a shard): the shard is resubmitted after a backoff that doubles, on any
  actor, at most ray.max_shard_retries times; it is never written complete (afterwards it is left
  unreadable, resp. crashed: not complete, retried by the next run).
Any other exception raised by the labeling code is a bug or a data problem that a retry would
repeat: the shard is recorded as crashed and the run goes on.

Every event costs O(1) in the number of shards: progress is kept as running totals (a shard's old
counts subtracted, its new ones added), finished shards leave the live set, results are folded
into a `RunTally` and dropped (only failed shards are kept), results are collected in batches, and
the progress board is drained at most `DRAIN_INTERVAL_S` apart.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import ray
from ray.exceptions import ActorDiedError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

from pipeline.errors import ShardInferenceError, TransientReadError, TransientWriteError
from pipeline.io.shards import ShardSpec
from pipeline.io.layout import ShardStatus
from pipeline.io.records import ShardResult
from pipeline.run.tally import ProgressTotals, RunTally

log = logging.getLogger(__name__)

DONE, FAILED, UNREADABLE, CRASHED = (ShardStatus.DONE, ShardStatus.FAILED, ShardStatus.UNREADABLE,
                                     ShardStatus.CRASHED)

INFRA_ERRORS = (RayActorError, ActorDiedError, WorkerCrashedError, ObjectLostError)
DRAIN_INTERVAL_S = 0.2  # progress board reads at most this often
WAIT_S = 0.25  # longest block in ray.wait, so stop/watchdog/revivals are looked at often
PING_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # between pings of an actor Ray is restarting (last repeats)
DEAD_AFTER_PINGS = 4  # pings answered "actor died" before an actor counts as gone for good
TRANSIENT_BACKOFF_S = 2.0  # first delay before retrying a TransientReadError shard; doubles per try


@dataclass
class _Task:
    kind: str  # "label" | "ping"
    actor: Any
    shard: Optional[ShardSpec] = None
    attempt: int = 0


@dataclass
class _Live:
    """One shard attempt being labeled: its latest progress and when it last moved."""
    attempt: int
    ref: Any
    actor: Any
    samples: int = 0
    ok: int = 0
    errors: int = 0
    moved_at: float = 0.0


class Dispatcher:
    def __init__(self, actors: list[Any], progress_board: Any, max_shard_retries: int,
                 on_progress: Callable[[int, int, int], None], on_result: Callable[[ShardResult], None],
                 stall_timeout_s: float = 900.0, stop: Optional[threading.Event] = None,
                 max_actor_restarts: int = 3, shard_stall_timeout_s: float = 0.0,
                 transient_backoff_s: float = TRANSIENT_BACKOFF_S, drain: Optional[Any] = None,
                 reviving: Sequence[tuple[Any, int]] = ()):
        self.actors = list(actors)
        # Actors that died while starting (pipeline.run.startup), with their deaths so far: pinged
        # until Ray has restarted them, like actors lost later.
        self.reviving = list(reviving)
        self.stop = stop  # set when this run lost its lock: no new shard is handed out
        # A pipeline.run.termination.GracefulStop (SIGTERM): once requested, no new shard is handed
        # out, the run returns when those in flight are done, and raises Terminated past the grace.
        self.drain = drain
        self.stall_timeout_s = stall_timeout_s
        self.shard_stall_timeout_s = shard_stall_timeout_s  # 0 = no per-shard watchdog
        self.max_actor_restarts = max_actor_restarts
        self.transient_backoff_s = transient_backoff_s
        self.last_busy = time.monotonic()  # last moment a shard was being labeled
        self.board = progress_board
        self.max_retries = max_shard_retries
        self.on_progress = on_progress
        self.on_result = on_result
        self.totals = ProgressTotals()
        self.tally = RunTally()
        self.tasks: dict[Any, _Task] = {}
        self.live: dict[str, _Live] = {}  # shard name -> its attempt in flight
        self.idle: list[Any] = []
        self.todo: collections.deque[tuple[ShardSpec, int]] = collections.deque()
        self.delayed: list[tuple[float, int, ShardSpec, int]] = []  # heap: (due, seq, shard, attempt)
        self.pings: list[tuple[float, int, Any]] = []  # heap: (due, seq, actor) of actors to probe
        self.losses: dict[Any, int] = collections.Counter()  # actor key -> times lost
        self.revive_since: dict[Any, float] = {}  # actor key -> when it was lost (while not back)
        self.died_pings: dict[Any, int] = {}  # actor key -> pings answered "died" since it was lost
        self._seq = itertools.count()
        self._drained_at = float("-inf")

    def run(self, shards: list[ShardSpec]) -> RunTally:
        self.todo.extend((s, 0) for s in shards)
        self.idle = list(reversed(self.actors))  # ready actors (see wait_ready); pop() takes the first
        for actor, deaths in self.reviving:
            self.losses[_actor_key(actor)] = deaths - 1
            self._revive(actor)
        while self.todo or self.delayed or self.live:
            if self.stop is not None and self.stop.is_set():
                self._abandon("another run took over the OUTPUT lock")
                break
            if self._drained():
                break  # queued shards stay untouched: not labeled, not failed (the next run labels them)
            now = time.monotonic()
            self._release_delayed(now)
            self._send_pings(now)
            if not self._draining():
                self._assign()
            if self.live:
                self.last_busy = now
            elif not self._may_get_workers() or now - self.last_busy > self.stall_timeout_s:
                # Every worker is gone, or only restarts are pending that never come (a lost node
                # that is not replaced): record the queued shards as failed instead of waiting forever.
                self._abandon("no Ray worker left alive")
                break
            self._step()
            self._watchdog(time.monotonic())
        self._drain_progress(force=True)
        return self.tally

    def _draining(self) -> bool:
        return self.drain is not None and self.drain.requested.is_set()

    def _drained(self) -> bool:
        """Under a graceful stop: True once no shard is in flight; `Terminated` past the grace."""
        if not self._draining():
            return False
        self.drain.raise_if_overdue(len(self.live))
        return not self.live

    def _may_get_workers(self) -> bool:
        return bool(self.tasks or self.pings or self.idle)

    def _step(self) -> None:
        if not self.tasks:
            time.sleep(max(0.0, min(WAIT_S, self._next_due() - time.monotonic())))
            return
        refs = list(self.tasks)
        timeout = max(0.0, min(WAIT_S, self._next_due() - time.monotonic()))
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if ready and rest:  # collect everything else that is ready too, without waiting
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            ready += more
        self._drain_progress()
        for ref, value in zip(ready, _get_many(ready)):
            task = self.tasks.pop(ref, None)
            if task is not None:  # None: a task the watchdog already gave up on
                self._collect(task, value)

    def _next_due(self) -> float:
        dues = [h[0][0] for h in (self.pings, self.delayed) if h]
        return min(dues) if dues else time.monotonic() + WAIT_S

    # -- handing out ------------------------------------------------------------------------

    def _assign(self) -> None:
        while self.idle and self.todo:
            actor = self.idle.pop()
            shard, attempt = self.todo.popleft()
            ref = actor.label.options(enable_task_events=False).remote(shard, attempt)
            self.tasks[ref] = _Task("label", actor, shard, attempt)
            self.live[shard.name] = _Live(attempt, ref, actor, moved_at=time.monotonic())
            log.debug("shard %s: assigned (attempt %d, %d queued)", shard.name, attempt, len(self.todo))

    def _release_delayed(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            _, _, shard, attempt = heapq.heappop(self.delayed)
            self.todo.appendleft((shard, attempt))

    # -- results ----------------------------------------------------------------------------

    def _collect(self, task: _Task, value: Any) -> None:
        if task.kind == "ping":
            self._pinged(task.actor, value)
            return
        assert task.shard is not None
        shard = task.shard
        if isinstance(value, INFRA_ERRORS):
            self._lost(task, value)
        elif isinstance(value, (TransientReadError, TransientWriteError, ShardInferenceError)):
            self.idle.append(task.actor)
            self._transient(task, value)
        elif isinstance(value, RayTaskError):
            log.error("shard %s: labeling raised; not retried: %s", shard.name, _first_line(value))
            self.idle.append(task.actor)
            self._finish(ShardResult(shard.name, shard.url, CRASHED, failure=f"exception: {_cause(value)}"))
        elif isinstance(value, BaseException):
            raise value
        else:
            self.idle.append(task.actor)
            log.info("shard %s: %s on %s, %d samples (%d ok, %d errors) in %.1fs", value.shard, value.status,
                     value.worker, value.samples, value.ok, value.errors, value.seconds)
            self._finish(value)

    def _finish(self, result: ShardResult) -> None:
        self._forget(result.shard)
        self.totals.add(result.samples, result.ok, result.errors)
        self.tally.add(result)
        self.on_result(result)
        self._report()

    def _forget(self, shard: str) -> None:
        live = self.live.pop(shard, None)
        if live is not None:
            self.totals.add(live.samples, live.ok, live.errors, sign=-1)

    def _lost(self, task: _Task, exc: BaseException, why: Optional[str] = None) -> None:
        assert task.shard is not None
        shard = task.shard
        self._revive(task.actor)
        why = why or type(exc).__name__
        if task.attempt < self.max_retries:
            log.warning("shard %s: worker lost (%s); retry %d of %d", shard.name, why, task.attempt + 1,
                        self.max_retries)
            self._forget(shard.name)
            self.todo.appendleft((shard, task.attempt + 1))
            self._report()
            return
        log.error("shard %s: worker lost %d times; giving up: %s", shard.name, task.attempt + 1, _first_line(exc))
        self._finish(ShardResult(shard.name, shard.url, CRASHED,
                                 failure=f"worker lost {task.attempt + 1} times: {why}"))

    def _transient(self, task: _Task, exc: BaseException) -> None:
        """A read that broke for transport reasons, or an engine that failed most of a shard: retried
        after a backoff (any actor), never written complete; bounded by ray.max_shard_retries."""
        assert task.shard is not None
        shard = task.shard
        inference = isinstance(exc, ShardInferenceError)
        read = isinstance(exc, TransientReadError)
        what = ("most samples failed in the engine" if inference else
                "transient read error" if read else "transient write error")
        if task.attempt < self.max_retries:
            delay = self.transient_backoff_s * 2 ** task.attempt
            log.warning("shard %s: %s (%s); retry %d of %d in %.1fs", shard.name, what,
                        _cause(exc), task.attempt + 1, self.max_retries, delay)
            self._forget(shard.name)
            heapq.heappush(self.delayed, (time.monotonic() + delay, next(self._seq), shard, task.attempt + 1))
            self._report()
            return
        log.error("shard %s: %s, %d times; left incomplete for the next run", shard.name, what, task.attempt + 1)
        self._finish(ShardResult(shard.name, shard.url, UNREADABLE if read else CRASHED,
                                 failure=f"{what}, {task.attempt + 1} times: {_cause(exc)}"))

    def _abandon(self, reason: str) -> None:
        queued = [*self.todo, *((s, a) for _, _, s, a in self.delayed)]
        log.error("%s; %d shards left unlabeled", reason, len(queued))
        self.todo.clear()
        self.delayed.clear()
        for s, _ in queued:
            self._finish(ShardResult(s.name, s.url, CRASHED, failure=reason))

    # -- actors coming back -----------------------------------------------------------------

    def _revive(self, actor: Any) -> None:
        """A lost actor: Ray restarts it (if restarts are left); ping it until it answers."""
        key = _actor_key(actor)
        self.losses[key] += 1
        if self.losses[key] > self.max_actor_restarts:
            log.error("a Ray worker was lost %d times, more than ray.max_actor_restarts=%d: not used again",
                      self.losses[key], self.max_actor_restarts)
            return
        self.revive_since.setdefault(key, time.monotonic())
        heapq.heappush(self.pings, (time.monotonic() + PING_BACKOFF_S[0], next(self._seq), actor))

    def _send_pings(self, now: float) -> None:
        while self.pings and self.pings[0][0] <= now:
            _, _, actor = heapq.heappop(self.pings)
            self.tasks[actor.ping.options(enable_task_events=False).remote()] = _Task("ping", actor)

    def _pinged(self, actor: Any, value: Any) -> None:
        key = _actor_key(actor)
        if not isinstance(value, BaseException):
            since = self.revive_since.pop(key, None)
            self.died_pings.pop(key, None)
            log.info("a restarted Ray worker is back (%s) after %.1fs", value,
                     time.monotonic() - since if since else 0.0)
            self.idle.append(actor)
            return
        waited = time.monotonic() - self.revive_since.get(key, time.monotonic())
        # A call to an actor Ray is restarting waits for the restart (or fails with "unavailable");
        # "died" again and again means no restart is coming (restarts exhausted, node gone).
        died = self.died_pings[key] = self.died_pings.get(key, 0) + isinstance(value, ActorDiedError)
        if not isinstance(value, RayActorError) or waited > self.stall_timeout_s or died >= DEAD_AFTER_PINGS:
            log.error("a Ray worker did not come back after %.0fs: %s", waited, _first_line(value))
            self.revive_since.pop(key, None)
            return
        delay = PING_BACKOFF_S[min(died, len(PING_BACKOFF_S) - 1)]
        heapq.heappush(self.pings, (time.monotonic() + delay, next(self._seq), actor))

    # -- watchdog ---------------------------------------------------------------------------

    def _watchdog(self, now: float) -> None:
        """Fail a shard whose samples did not move for shard_stall_timeout_s, killing its actor
        (also when it is busy looping: it cannot answer) so that Ray restarts it."""
        if self.shard_stall_timeout_s <= 0 or self.board is None:
            return  # without progress messages a long shard cannot be told from a stuck one
        stuck = [(name, live) for name, live in self.live.items()
                 if now - live.moved_at > self.shard_stall_timeout_s]
        for name, live in stuck:
            task = self.tasks.pop(live.ref, None)
            if task is None:
                continue
            log.error("shard %s: no progress for %.0fs (ray.shard_stall_timeout_s); killing its worker",
                      name, now - live.moved_at)
            try:
                ray.kill(live.actor, no_restart=False)
            except (ValueError, RayActorError) as exc:  # already gone
                log.warning("could not kill the stuck worker: %s", _first_line(exc))
            self._lost(task, TimeoutError(f"no progress for {self.shard_stall_timeout_s:.0f}s"),
                       why=f"no progress for {self.shard_stall_timeout_s:.0f}s")

    # -- progress ---------------------------------------------------------------------------

    def _drain_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.board is None or (not force and now - self._drained_at < DRAIN_INTERVAL_S):
            return
        self._drained_at = now
        try:
            messages = ray.get(self.board.drain.options(enable_task_events=False).remote())
        except INFRA_ERRORS as exc:  # progress is best effort; results arrive through ray.get
            log.warning("progress board lost (%s); live progress stops here", _first_line(exc))
            self.board = None
            return
        moved = False
        for shard, attempt, samples, ok, errs in messages:
            live = self.live.get(shard)
            if live is None or live.attempt != attempt:
                continue  # a late report from a lost attempt or a finished shard
            self.totals.add(samples - live.samples, ok - live.ok, errs - live.errors)
            if samples > live.samples:
                live.moved_at = now
            live.samples, live.ok, live.errors = samples, ok, errs
            moved = True
        if moved:
            self._report()

    def _report(self) -> None:
        self.on_progress(*self.totals.totals())


def _get_many(refs: list[Any]) -> list[Any]:
    """Values of ready refs in one call; an exception stands in for the value of a failed task."""
    if not refs:
        return []
    try:
        return ray.get(refs)
    except Exception:  # noqa: BLE001 - one failed: fetch one by one to know which
        out: list[Any] = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - classified by _collect
                out.append(exc)
        return out


def _actor_key(actor: Any) -> Any:
    return getattr(actor, "_actor_id", None) or id(actor)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _cause(exc: BaseException) -> str:
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
