"""Run lock on an OUTPUT: two runs never write the same output at the same time.

The lock is one object, `OUTPUT/_lock.json`, holding its owner (host, pid, run id, start time) and
a heartbeat timestamp that a background thread refreshes while the run lives. A second run that
finds a live lock fails fast with a `LockHeldError` naming the holder.

Acquisition is atomic where the storage allows it:

- local file system: the record is written to a private temporary file and hard-linked to
  `_lock.json` (`link(2)` fails when the name exists, like `O_CREAT|O_EXCL`, and readers never see
  a half-written lock); file systems without hard links fall back to `O_CREAT|O_EXCL`;
- S3 and S3-compatible stores: a conditional put (`If-None-Match: *`, s3fs `mode="create"`);
- any other fsspec store: exists-check, write, read back. Two runs that start within the same
  round trip can both pass the check there; the loser's heartbeat thread notices at its next beat
  that the lock names another run and sets `RunLock.lost` (residual race, documented in
  jobs/README.md). The same holds for S3-compatible servers that ignore `If-None-Match`.

A lock is stale, and is broken with a WARNING, when its heartbeat is older than the HOLDER's
recorded `stale_after_s` (at least `STALE_HEARTBEATS` of its heartbeats; the breaking run's own
setting does not count, so a short `--lock-stale-after` cannot take a live run's lock) and, for a
holder on this host, its process is gone. A holder on this host whose process is gone
is already stale once it has missed two heartbeats (a new run waits for that, at most 20 s by
default), so a killed local run does not block the next one for the whole staleness period.
`break_lock=True` (`--break-lock`) breaks any lock.

Breaking is "read, check it is still the stale record, delete, create": two runs breaking the same
stale lock at the same instant can both delete and re-create it; again the heartbeat thread of
the loser notices within one beat. Staleness compares wall clocks of different hosts, so hosts
are assumed to be NTP-synchronised to well within `stale_after_s`.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Optional

import fsspec

from pipeline.errors import UserError
from pipeline.io.atomic import create_temp, write_atomic
from pipeline.io.layout import LOCK_JSON
from pipeline.io.storage import storage_options_for
from pipeline.redact import redact_text
from pipeline.run.lock_record import (  # noqa: F401 - LockRecord and the staleness settings are part of this API
    DEFAULT_STALE_AFTER_S, STALE_ENV, LockRecord, dead_grace, default_stale_after_s, holder_stale_after, pid_alive,
    pid_start,
)
from pipeline.timestamps import utc_now_iso

log = logging.getLogger(__name__)

LOCK_NAME = LOCK_JSON
_ACQUIRE_ATTEMPTS = 4


class LockHeldError(UserError):
    """Another live run holds the lock on this OUTPUT."""


class RunLock:
    """Context manager holding `OUTPUT/_lock.json` for the lifetime of a run.

    `lost` is set (and an ERROR logged) if the heartbeat finds the lock replaced by another run;
    long loops can call `check()` to stop at that point.
    """

    def __init__(
        self,
        output_url: str,
        storage_options: Optional[dict[str, Any]] = None,
        stale_after_s: Optional[float] = None,
        *,
        break_lock: bool = False,
        heartbeat_s: Optional[float] = None,
        run_id: Optional[str] = None,
        on_lost: Optional[Callable[[str], None]] = None,
    ):
        self.output_url = output_url
        self.stale_after_s = float(stale_after_s) if stale_after_s else default_stale_after_s()
        if heartbeat_s is None:
            heartbeat_s = min(10.0, self.stale_after_s / 4)
        if heartbeat_s <= 0 or heartbeat_s >= self.stale_after_s:
            raise UserError(
                f"lock heartbeat {heartbeat_s}s must be positive and below the staleness "
                f"{self.stale_after_s}s"
            )
        self.heartbeat_s = float(heartbeat_s)
        self.break_lock = break_lock
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.on_lost = on_lost
        self.fs, root = fsspec.core.url_to_fs(output_url, **storage_options_for(output_url, storage_options))
        self.root = root.rstrip("/")
        self.path = f"{self.root}/{LOCK_NAME}"
        self.local = _is_local(self.fs)
        self.lost = threading.Event()
        self.record: Optional[LockRecord] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- public ---------------------------------------------------------------------------
    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def acquire(self) -> "RunLock":
        if self.local:
            self.fs.makedirs(self.root, exist_ok=True)
        waited = False
        for _ in range(_ACQUIRE_ATTEMPTS):
            record = self._new_record()
            if self._create(record):
                return self._took(record)
            holder = self._read()
            if holder is None:
                continue  # released between our create and our read: try again
            if holder.run_id == self.run_id:
                # Our own create, whose answer was lost (a retried conditional PUT then sees our
                # object): the lock is ours, never "held by another run".
                return self._took(record)
            reason = "--break-lock was given" if self.break_lock else self._stale_reason(holder)
            if reason is None and not waited:
                wait_s = self._dead_holder_wait(holder)
                if wait_s is not None:
                    log.info("lock %s: its holder (pid %d on this host) is gone; waiting %.1fs for its "
                             "heartbeat to lapse", self.path, holder.pid, wait_s)
                    time.sleep(wait_s)
                    waited = True
                    continue
            if reason is None:
                raise LockHeldError(
                    f"{self.output_url} is locked by {holder.describe()}. Wait for that run to "
                    f"finish; if it is dead, the lock is broken automatically once its heartbeat "
                    f"is {holder_stale_after(holder):.0f}s old (the holder's setting), or pass --break-lock "
                    f"(lock object: {self.path})"
                )
            log.warning("breaking lock %s held by %s: %s", self.path, holder.describe(), reason)
            self._remove_if_unchanged(holder)
        raise LockHeldError(
            f"could not take the lock on {self.output_url} after {_ACQUIRE_ATTEMPTS} attempts: "
            f"other runs keep taking it (lock object: {self.path})"
        )

    def _took(self, record: LockRecord) -> "RunLock":
        self.record = record
        self._start_heartbeat()
        log.info("took lock %s as run %s (heartbeat every %.0fs, stale after %.0fs)",
                 self.path, self.run_id, self.heartbeat_s, self.stale_after_s)
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 30)
            self._thread = None
        if self.record is None:
            return
        try:
            holder = self._read()
            if holder is not None and holder.run_id == self.run_id:
                self.fs.rm_file(self.path)
                log.info("released lock %s (run %s)", self.path, self.run_id)
            else:
                log.error("lock %s was no longer ours at release (holder: %s); left in place",
                          self.path, holder.describe() if holder else "none")
        except OSError as exc:
            log.error("could not release lock %s: %s; the next run will break it once stale",
                      self.path, exc)
        self.record = None

    def check(self) -> None:
        """Raise `LockHeldError` if another run has taken the lock since we acquired it."""
        if self.lost.is_set():
            raise LockHeldError(f"lost the lock on {self.output_url}: another run took it over")

    # -- storage --------------------------------------------------------------------------
    def _new_record(self) -> LockRecord:
        now = utc_now_iso()
        return LockRecord(
            run_id=self.run_id, host=socket.gethostname(), pid=os.getpid(), started_at=now,
            heartbeat_at=now, heartbeat_s=self.heartbeat_s, stale_after_s=self.stale_after_s,
            output=self.output_url, command=redact_text(" ".join(sys.argv))[:500],  # no credentials
            pid_start=pid_start(os.getpid()),
        )

    def _create(self, record: LockRecord) -> bool:
        """Create the lock object only if it does not exist; True when we created it."""
        blob = record.to_json()
        if self.local:
            return _create_local(self.path, blob)
        self.fs.invalidate_cache(self.path)  # listings cached by a long-lived filesystem go stale
        try:
            self.fs.pipe_file(self.path, blob, mode="create")
        except FileExistsError:
            return False  # acquire() reads the holder: our own run id there means the create took
        except (TypeError, NotImplementedError, ValueError):
            # A backend without exclusive create: check, plain write, then read back below.
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, blob)
        except Exception:  # noqa: BLE001 - an ambiguous create (5xx, lost answer): the object decides
            self.fs.invalidate_cache(self.path)
            if not self._is_ours(record):
                raise
            log.info("lock %s: the create failed ambiguously but the object is ours", self.path)
        self.fs.invalidate_cache(self.path)
        back = self._read()
        return back is not None and back.run_id == record.run_id

    def _is_ours(self, record: LockRecord) -> bool:
        try:
            back = self._read()
        except Exception:  # noqa: BLE001 - cannot tell: the caller re-raises the create's error
            return False
        return back is not None and back.run_id == record.run_id

    def _read(self) -> Optional[LockRecord]:
        try:
            blob = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            return LockRecord.from_json(blob)
        except (ValueError, TypeError, KeyError):
            return self._unreadable_record()

    def _unreadable_record(self) -> Optional[LockRecord]:
        """A lock object we cannot parse: treat it as held by an unknown run, aged by its mtime."""
        try:
            info = self.fs.info(self.path)
        except FileNotFoundError:
            return None
        mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
        if isinstance(mtime, dt.datetime):
            stamp = mtime.astimezone(dt.timezone.utc).isoformat()
        elif mtime is not None:
            stamp = dt.datetime.fromtimestamp(float(mtime), dt.timezone.utc).isoformat()
        else:
            stamp = utc_now_iso()
        return LockRecord(
            run_id="<unreadable>", host="<unknown>", pid=-1, started_at=stamp, heartbeat_at=stamp,
            heartbeat_s=self.heartbeat_s, stale_after_s=self.stale_after_s, output=self.output_url,
            command="<unreadable lock object>",
        )

    def _remove_if_unchanged(self, seen: LockRecord) -> None:
        current = self._read()
        if current is None or current != seen:
            return  # someone else broke or refreshed it meanwhile; the next attempt decides
        try:
            self.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    def _write_heartbeat(self, record: LockRecord) -> None:
        blob = record.to_json()
        if self.local:
            # A random temporary created exclusively, never `<lock>.<run_id>.hb.tmp`: the run id is
            # public, and a symlink planted at that name would be written through.
            write_atomic(self.path, blob)
        else:
            self.fs.pipe_file(self.path, blob)

    # -- staleness ------------------------------------------------------------------------
    def _stale_reason(self, holder: LockRecord) -> Optional[str]:
        """Why `holder` is dead, or None. Judged by the holder's own recorded staleness (and
        heartbeat), never by this run's `stale_after_s`: see `holder_stale_after`."""
        age = holder.heartbeat_age()
        same_host = holder.host == socket.gethostname()
        if same_host:
            if pid_alive(holder.pid, holder.pid_start):
                return None
            if age > dead_grace(holder):
                return f"its process {holder.pid} on this host is gone and it missed its heartbeats"
            return None
        limit = holder_stale_after(holder)
        if age > limit:
            return f"its heartbeat is {age:.0f}s old (stale after {limit:.0f}s, the holder's setting)"
        return None

    def _dead_holder_wait(self, holder: LockRecord) -> Optional[float]:
        """Seconds until a same-host holder whose process is gone counts as stale; None otherwise.

        The grace of two heartbeats guards against another machine (or container with its own pid
        namespace) that shares this host name: a live holder there keeps its heartbeat fresh.
        """
        if holder.host != socket.gethostname() or pid_alive(holder.pid, holder.pid_start):
            return None
        return max(0.0, dead_grace(holder) - holder.heartbeat_age()) + 0.1

    # -- heartbeat ------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"run-lock-heartbeat-{self.run_id}", daemon=True
        )
        self._thread.start()

    def _heartbeat_loop(self) -> None:
        assert self.record is not None
        last_ok = time.monotonic()
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder = self._read()
                if holder is None or holder.run_id != self.run_id:
                    self._mark_lost(holder)
                    return
                self.record.heartbeat_at = utc_now_iso()
                self._write_heartbeat(self.record)
                last_ok = time.monotonic()
            except OSError as exc:
                silent = time.monotonic() - last_ok
                level = logging.ERROR if silent > self.stale_after_s / 2 else logging.WARNING
                log.log(level, "lock heartbeat on %s failed (%s); no heartbeat for %.0fs",
                        self.path, exc, silent)

    def _mark_lost(self, holder: Optional[LockRecord]) -> None:
        who = holder.describe() if holder else "nobody (the lock object is gone)"
        message = f"lost the lock {self.path}: it is now held by {who}"
        log.error(message)
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(message)


def read_lock(output_url: str, storage_options: Optional[dict[str, Any]] = None) -> Optional[LockRecord]:
    """The current lock record of an OUTPUT, or None (for status tools and tests)."""
    fs, root = fsspec.core.url_to_fs(output_url, **storage_options_for(output_url, storage_options))
    try:
        return LockRecord.from_json(fs.cat_file(f"{root.rstrip('/')}/{LOCK_NAME}"))
    except FileNotFoundError:
        return None


def _create_local(path: str, blob: bytes) -> bool:
    fd, tmp = create_temp(os.path.dirname(path), os.path.basename(path))  # O_EXCL | O_NOFOLLOW, random
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # No hard links here (some network or FUSE file systems): exclusive create instead.
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        return True
    finally:
        os.unlink(tmp)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


