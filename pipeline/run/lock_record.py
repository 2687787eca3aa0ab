"""Contents of `OUTPUT/_lock.json` and the host facts its staleness rests on.

`LockRecord` is the lock object (owner, heartbeat); `pid_alive`/`pid_start` tell whether a holder
on this host still runs (a reused pid is told apart by its start time). `pipeline.run.lock.RunLock`
takes, refreshes and breaks the lock.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional

from pipeline.errors import UserError
from pipeline.redact import redact_text  # a record written before redaction may still hold a secret

STALE_ENV = "PSEUDOLABEL_LOCK_STALE_S"
DEFAULT_STALE_AFTER_S = 300.0
DEFAULT_HEARTBEAT_S = 10.0  # what a record written before `heartbeat_s` existed is assumed to beat at
# A holder counts as stale only after missing at least this many of its own heartbeats, whatever
# staleness it recorded: one slow write or a short network outage must not cost it the lock.
STALE_HEARTBEATS = 3


@dataclass
class LockRecord:
    """Contents of `_lock.json`."""

    run_id: str
    host: str
    pid: int
    started_at: str  # ISO 8601, UTC
    heartbeat_at: str  # ISO 8601, UTC; refreshed every `heartbeat_s`
    heartbeat_s: float
    stale_after_s: float
    output: str
    command: str
    pid_start: Optional[str] = None  # /proc/<pid>/stat start time: tells a reused pid apart
    version: int = 1

    @classmethod
    def from_json(cls, blob: bytes) -> "LockRecord":
        data = json.loads(blob)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        # Records of older versions may lack the holder's timing: judge them by the defaults.
        known.setdefault("stale_after_s", DEFAULT_STALE_AFTER_S)
        known.setdefault("heartbeat_s", DEFAULT_HEARTBEAT_S)
        return cls(**known)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    def heartbeat_age(self, now: Optional[float] = None) -> float:
        now = time.time() if now is None else now
        return now - parse_time(self.heartbeat_at)

    def describe(self) -> str:
        age = self.heartbeat_age()
        return (
            f"run {self.run_id} on host {self.host} pid {self.pid} "
            f"(started {self.started_at}, last heartbeat {age:.0f}s ago, command: {redact_text(self.command)})"
        )


def default_stale_after_s() -> float:
    raw = os.environ.get(STALE_ENV)
    if not raw:
        return DEFAULT_STALE_AFTER_S
    try:
        value = float(raw)
    except ValueError as exc:
        raise UserError(f"{STALE_ENV}={raw!r} is not a number of seconds") from exc
    if value <= 0:
        raise UserError(f"{STALE_ENV}={raw!r} must be a positive number of seconds")
    return value


def holder_stale_after(holder: LockRecord) -> float:
    """Seconds without a heartbeat after which `holder` counts as dead, judged by the HOLDER's
    recorded settings, never by the run that wants the lock: a breaker passing a short
    `--lock-stale-after` must not take a healthy run's lock between two of its heartbeats.

    At least `STALE_HEARTBEATS` of its heartbeat intervals; a record with unusable values (not a
    positive number) falls back to the defaults."""
    stale = _positive(holder.stale_after_s, DEFAULT_STALE_AFTER_S)
    beat = _positive(holder.heartbeat_s, DEFAULT_HEARTBEAT_S)
    return max(stale, STALE_HEARTBEATS * beat)


def _positive(value: object, default: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if 0 < number < float("inf") else default


def dead_grace(holder: LockRecord, stale_after_s: Optional[float] = None) -> float:
    """How long a same-host holder whose process is gone keeps the lock: two heartbeats (at most
    its own staleness)."""
    limit = holder_stale_after(holder) if stale_after_s is None else stale_after_s
    return min(2 * max(_positive(holder.heartbeat_s, DEFAULT_HEARTBEAT_S), 0.1), limit)


def pid_start(pid: int) -> Optional[str]:
    """Start time of `pid` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
    return fields[19] if len(fields) > 19 else None


def pid_alive(pid: int, pid_start: Optional[str]) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    fields = stat[stat.rfind(")") + 2:].split()
    if fields and fields[0] in ("Z", "X"):
        return False  # zombie: killed, not yet reaped
    if pid_start is not None and len(fields) > 19 and fields[19] != pid_start:
        return False  # the pid now belongs to another process
    return True


def parse_time(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()
