"""Start the label workers: every actor loads its engine in `setup()` and reports the identity it
loaded before it is given a shard.

Errors raised by `setup()` reach the driver as the actor's own exception (Ray wraps it in a
`RayTaskError` whose `cause` is the original): a `UserError` keeps its one-line message, so a
missing checkpoint or an offline tag reads the same as in `predict`, with no traceback text to
pick apart. A worker that loaded another engine than the driver checked (`IdentityMismatch`) stops
the run before any shard is handed out.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserError
from pipeline.identity import Identity, IdentityMismatch, mismatch_message

log = logging.getLogger(__name__)


@dataclass
class Workers:
    ready: list[Any]  # actor handles whose engine loaded and matched
    described: dict[str, Any]  # LabelWorker.describe() of the first: what dataset.json records
    identity: Identity  # what they loaded (equal to the driver's)
    failures: list[str] = field(default_factory=list)  # one line per worker that could not start


def setup_workers(actors: list[Any], expected: Identity, timeout_s: float) -> Workers:
    """Call `setup()` on every actor; the ones that answer with `expected`'s identity are ready.
    Raises the workers' own `UserError` when none could start, `IdentityMismatch` when any loaded
    something else."""
    import ray

    refs = {a.setup.remote(): a for a in actors}
    deadline = time.monotonic() + timeout_s
    ready: list[Any] = []
    answers: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    for ref, actor in refs.items():
        try:
            answers.append(ray.get(ref, timeout=max(1.0, deadline - time.monotonic())))
            ready.append(actor)
        except ray.exceptions.GetTimeoutError:
            errors.append(UserError(f"a Ray worker did not load the engine within {timeout_s:.0f}s "
                                    "(no free GPU/CPU for it, or a very slow model store)"))
        except ray.exceptions.RayTaskError as exc:
            errors.append(_cause(exc))
        except ray.exceptions.RayActorError as exc:
            cause = _cause(exc)  # a constructor that raised: its own exception, when Ray kept it
            errors.append(cause if isinstance(cause, UserError)
                          else UserError(f"a Ray worker died while starting: {_first_line(cause)}"))
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
        first = errors[0] if errors else UserError("no Ray worker was started")
        raise first if isinstance(first, UserError) else UserError(f"no Ray worker could load the engine: "
                                                                   f"{type(first).__name__}: {_first_line(first)}")
    failures = [_first_line(e) for e in errors]
    for line in failures:
        log.warning("a worker failed to start: %s", line)
    return Workers(ready, answers[0]["describe"], Identity.from_dict(answers[0]["identity"]), failures)


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
