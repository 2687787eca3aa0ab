"""Start the label workers: every actor loads its engine in `setup()` and reports the identity it
loaded before it is given a shard.

Errors raised by `setup()` reach the driver as the actor's own exception (Ray wraps it in a
`RayTaskError` whose `cause` is the original): a `UserError` keeps its one-line message, so a
missing checkpoint or an offline tag reads the same as in `predict`, with no traceback text to
pick apart. Such an error is not retried (the same load would fail the same way). A worker that
loaded another engine than the driver checked (`IdentityMismatch`) stops the run before any shard
is handed out.

An actor that dies while starting (killed, out of memory, a crash in a native library) is treated
like one that dies later: Ray restarts it (`ray.max_actor_restarts`, Ray counts them). While no
actor is ready, its `setup()` is called again after a backoff, so a run whose every worker died
once still starts; once one is ready,
the restarting ones are handed to the dispatcher, which takes them back when they answer (their
first shard loads the engine and checks it). The run stops only when no actor can start, with the
reason of the last failure.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pipeline.errors import UserError
from pipeline.identity import Identity, IdentityMismatch, mismatch_message

log = logging.getLogger(__name__)

POLL_S = 0.5  # longest wait between looks at `should_stop` while workers load
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # before calling a restarting actor's setup() again (last repeats)
DEAD_AFTER = 2  # "actor died" answers (not "unavailable: restarting") before an actor counts as gone


@dataclass
class Workers:
    ready: list[Any]  # actor handles whose engine loaded and matched
    described: dict[str, Any]  # LabelWorker.describe() of the first: what dataset.json records
    identity: Identity  # what they loaded (equal to the driver's)
    failures: list[str] = field(default_factory=list)  # one line per worker that could not start
    # Actors that died while starting and that Ray is restarting: (handle, deaths so far)
    restarting: list[tuple[Any, int]] = field(default_factory=list)


def setup_workers(actors: list[Any], expected: Identity, timeout_s: float,
                  should_stop: Optional[Callable[[], None]] = None) -> Workers:
    """Call `setup()` on every actor; the ones that answer with `expected`'s identity are ready.
    An actor that died is called again (Ray restarts it, within `ray.max_actor_restarts`) while
    none is ready; see the module doc. Raises the workers' own `UserError` when none could start,
    `IdentityMismatch` when any loaded something else; `should_stop()` may raise to end the wait
    (SIGTERM)."""
    import ray

    pending = {a.setup.remote(): a for a in actors}
    deadline = time.monotonic() + timeout_s
    calls: collections.Counter[Any] = collections.Counter()  # failed setup calls per actor (backoff)
    gone: collections.Counter[Any] = collections.Counter()  # "died for good" answers per actor
    later: list[tuple[float, Any]] = []  # (when, actor): setup to call again once Ray restarted it
    ready: list[Any] = []
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    died: list[Any] = []  # died while another actor is ready: the dispatcher revives them
    while pending or later:
        if should_stop is not None:
            should_stop()
        now = time.monotonic()
        if now > deadline:
            errors += [UserError(f"a Ray worker did not load the engine within {timeout_s:.0f}s (no free GPU/CPU "
                                 "for it, or a very slow model store)")] * (len(pending) + len(later))
            break
        if ready and later:  # someone labels already: the dispatcher takes the restarting ones back
            died += [a for _, a in later]
            later = []
        for when, actor in [x for x in later if x[0] <= now]:
            later.remove((when, actor))
            pending[actor.setup.remote()] = actor
        if not pending:
            time.sleep(POLL_S)
            continue
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        for ref in done:
            actor = pending.pop(ref)
            try:
                answers.append(ray.get(ref))
                ready.append(actor)
            except ray.exceptions.RayTaskError as exc:
                errors.append(_cause(exc))
            except ray.exceptions.RayActorError as exc:
                cause = _cause(exc)
                if isinstance(cause, UserError):  # a constructor that raised: its own exception
                    errors.append(cause)
                    continue
                reason = UserError(f"a Ray worker died while starting: {_first_line(cause)}")
                # "Unavailable": restarting, call again; "died" twice: no restart is coming
                gone[actor] += not isinstance(exc, ray.exceptions.ActorUnavailableError)
                if gone[actor] >= DEAD_AFTER:
                    errors.append(reason)
                    continue
                calls[actor] += 1
                log.warning("a worker died or is restarting while starting (call %d): %s", calls[actor],
                            _first_line(cause))
                later.append((time.monotonic() + BACKOFF_S[min(calls[actor], len(BACKOFF_S)) - 1], actor))
    for exc in errors:
        if isinstance(exc, IdentityMismatch):
            raise exc
    for answer in answers:
        theirs = Identity.from_dict(answer["identity"])
        if theirs.fingerprint != expected.fingerprint:  # the worker checks too; this is the driver's word
            raise IdentityMismatch(mismatch_message(
                expected.differences(theirs), f"worker {answer['worker']} loaded another engine than the driver "
                "checked", "worker loaded", "driver has", "Make every node see the same files and re-run"))
    if not ready:
        last = errors[-1] if errors else UserError("no Ray worker was started")
        raise last if isinstance(last, UserError) else UserError(f"no Ray worker could load the engine: "
                                                                 f"{type(last).__name__}: {_first_line(last)}")
    failures = [_first_line(e) for e in errors]
    for line in failures:
        log.warning("a worker failed to start: %s", line)
    return Workers(ready, answers[0]["describe"], Identity.from_dict(answers[0]["identity"]), failures,
                   [(a, 1) for a in died])


def _cause(exc: BaseException) -> BaseException:
    """The innermost exception Ray wrapped (RayTaskError.cause, ActorDiedError.cause, ...)."""
    for _ in range(5):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__
