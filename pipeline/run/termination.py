"""SIGTERM as a request to stop gracefully, the way Kubernetes and Ray Jobs stop a driver.

The first SIGTERM sets `GracefulStop.requested`: the dispatcher hands out no more shards, lets the
ones in flight finish within `ray.term_grace_s`, and the run ends with `Terminated` (the command
line prints one line and exits 143, the OUTPUT lock is released on the way out). A second SIGTERM,
or the grace running out, ends it at once: the loops that wait (worker start-up, the dispatcher)
look at `overdue()` at least every second and raise `Terminated`. The handler itself only sets
flags: an exception raised from it inside Ray's Cython calls (`ray.wait`) comes out as a
SystemError, not as itself.

`ray.init` installs Python SIGTERM handlers in the driver (`sys.exit`; for a local Ray one that
kills Ray's processes), and then Ray's C++ core worker installs absl's failure-signal handler for
SIGTERM, which prints `*** SIGTERM received ... ***` and a stack and aborts: exit 134 (docs/faults.md).
So the handler is installed again once Ray is up (`install`), and the previous one is put back
when the run ends.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any, Optional

log = logging.getLogger(__name__)

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: what schedulers expect of a process that obeyed SIGTERM


class Terminated(BaseException):
    """The run stopped because of SIGTERM. A BaseException, like KeyboardInterrupt: no `except
    Exception` on the way out may swallow it. `complete`: shards complete in OUTPUT (the runner
    fills it in)."""

    def __init__(self, why: str, complete: Optional[int] = None, labeled: int = 0):
        super().__init__(why)
        self.why = why
        self.complete = complete
        self.labeled = labeled  # shards this run made complete before it stopped


class GracefulStop:
    """SIGTERM handling for one run; a context manager that restores the previous handler."""

    def __init__(self, grace_s: float):
        self.grace_s = float(grace_s)
        self.requested = threading.Event()
        self.deadline: Optional[float] = None
        self._previous: Any = None
        self._installed = False
        self.second = threading.Event()  # a second SIGTERM: stop without waiting for the grace

    def __enter__(self) -> "GracefulStop":
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def install(self) -> None:
        """(Re)take SIGTERM; only the main thread can, elsewhere this is a no-op."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        if not self._installed:
            self._previous, self._installed = previous, True

    def check(self) -> None:
        """Raise `Terminated` once a stop was requested (before shards are handed out)."""
        if self.requested.is_set():
            raise Terminated("stopped by SIGTERM")

    def overdue(self) -> bool:
        """Whether the run must stop now: a second SIGTERM, or the grace ran out."""
        return self.second.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)

    def raise_if_overdue(self, in_flight: int) -> None:
        if self.second.is_set():
            raise Terminated("stopped by a second SIGTERM")
        if self.overdue():
            log.error("the grace after SIGTERM (ray.term_grace_s=%.0fs) ran out with %d shards in flight",
                      self.grace_s, in_flight)
            raise Terminated(f"stopped by SIGTERM; ray.term_grace_s={self.grace_s:.0f}s ran out with "
                             f"{in_flight} shards in flight")

    def _on_sigterm(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested.is_set():
            self.second.set()
            log.warning("second SIGTERM: stopping now")
            return
        self.deadline = time.monotonic() + self.grace_s
        self.requested.set()
        log.warning("SIGTERM: no more shards are handed out; shards in flight get %.0fs to finish "
                    "(ray.term_grace_s); a second SIGTERM stops at once", self.grace_s)
