"""One thread that waits for engine outputs to land on the host, in order, before their encoding
enters the pool.

On CUDA the Segmenter hands back `engine.host_copy.PendingArray`s: a non-blocking device-to-host
copy is still in flight. Encoding one reads its bytes, so an encode task submitted straight to the
decode/encode pool would block a pool thread for the batch's GPU time, and the decodes queued
behind it would wait too: CPU and GPU work would run one after the other. Here a single waiter
thread waits for each output's copy (blocking CUDA events: the thread sleeps, it does not spin),
in submission order, and only then submits its encoding to the pool, so no pool thread ever
waits on the GPU. Outputs already on the host (CPU engines, the student) go straight to the pool.

The wait is also where a sticky CUDA error of the batch's kernels first surfaces on the host: it
is classified here (`device_errors.is_fatal_device_error`) and becomes a `DeviceFatalError` on
the returned future, which the stage raises while writing, so the actor restarts and the shard is
retried instead of being recorded as crashed.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import CancelledError, Executor, Future
from typing import Any, Callable, Optional

from pipeline.errors import DeviceFatalError
from pipeline.run.device_errors import is_fatal_device_error

# The parts of an engine output that may still be in flight (engine/postprocess.BandOutputs).
_PARTS = ("pred", "confidence", "ignored", "mean_confidence")


def pending_parts(out: Any) -> list[Any]:
    """The parts of `out` whose host copy may still be in flight (they have `wait_copy`)."""
    parts = (getattr(out, name, None) for name in _PARTS)
    return [p for p in parts if callable(getattr(type(p), "wait_copy", None))]


def wait_landed(out: Any) -> None:
    """Block until every part of `out` is on the host; a fatal device error becomes DeviceFatalError."""
    try:
        for part in pending_parts(out):
            part.wait_copy()
    except Exception as exc:  # noqa: BLE001 - classified: the device, or a bug that re-raises as is
        if is_fatal_device_error(exc):
            raise DeviceFatalError(f"engine device failed (surfaced by the copy to the host): "
                                   f"{type(exc).__name__}: {exc}") from exc
        raise


class CopyWaiter:
    """`submit(fn, sample, out)`: a Future of `fn(sample, out)`, run in `pool` once `out` has landed."""

    def __init__(self, pool: Executor):
        self.pool = pool
        self._queue: queue.SimpleQueue[Optional[tuple[Future, Callable, Any, Any]]] = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[Any, Any], Any], sample: Any, out: Any) -> Future:
        if not pending_parts(out):
            return self.pool.submit(fn, sample, out)
        outer: Future = Future()
        self._start()
        self._queue.put((outer, fn, sample, out))
        return outer

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name="copy-waiter")
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            outer, fn, sample, out = item
            if not outer.set_running_or_notify_cancel():
                continue
            try:
                wait_landed(out)
                inner = self.pool.submit(fn, sample, out)
            except BaseException as exc:  # noqa: BLE001 - handed to the writer, which raises it
                outer.set_exception(exc)
                continue
            inner.add_done_callback(lambda f, outer=outer: _relay(f, outer))


def _relay(inner: Future, outer: Future) -> None:
    if inner.cancelled():
        outer.set_exception(CancelledError())
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())
    else:
        outer.set_result(inner.result())
