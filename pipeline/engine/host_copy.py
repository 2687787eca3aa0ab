"""One device-to-host copy per image, handed over lazily (the CUDA path of `postprocess`).

Post-processing writes each band's label map, uint8 confidence, ignored mask and the mean
confidence into views of one device byte buffer (`PackedBuffers`); `send()` then queues a single
non-blocking copy into pinned host memory on a side stream and returns the host arrays as
`PendingArray`s. Their shape and dtype are known at once (the stage checks shapes in its inference
thread), and their contents are waited for only when first read or `wait_copy()` is called (the
stage's one copy-waiter thread, `run/copy_waiter.py`, before it hands the encoding to its pool), so
the copy overlaps the next batch's kernels instead of stalling the inference thread on every band
as a blocking `.cpu()` did.

The waiting is behind a tiny `Waitable` interface (`synchronize()`), so the logic is tested on
CPU with a fake that performs the copy only when waited on.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch
from numpy.lib.mixins import NDArrayOperatorsMixin
from torch import Tensor

_ALIGN = 8  # every part starts on an 8-byte boundary, so any dtype can view its bytes


class Waitable(Protocol):
    def synchronize(self) -> None: ...


class PendingCopy:
    """A copy in flight: `wait()` blocks until it has landed, once (later calls return at once)."""

    def __init__(self, done: Waitable):
        self._done: Optional[Waitable] = done
        self._lock = threading.Lock()  # several encode threads may read parts of one image

    def wait(self) -> None:
        with self._lock:
            if self._done is not None:
                self._done.synchronize()
                self._done = None


class PendingArray(NDArrayOperatorsMixin):
    """A host array whose bytes are still being copied: shape and dtype now, contents on first read.
    `np.asarray`, numpy functions, operators, indexing and ndarray methods all wait first."""

    def __init__(self, copy: PendingCopy, host: np.ndarray):
        self._copy = copy
        self._host = host

    shape = property(lambda self: self._host.shape)
    dtype = property(lambda self: self._host.dtype)
    ndim = property(lambda self: self._host.ndim)
    size = property(lambda self: self._host.size)

    def wait_copy(self) -> None:
        """Block until the bytes have landed (the stage's copy waiter calls this before encoding)."""
        self._copy.wait()

    def value(self) -> np.ndarray:
        self._copy.wait()
        return self._host

    def __array__(self, dtype=None, copy=None):
        a = self.value()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        unwrap = lambda x: x.value() if isinstance(x, PendingArray) else x  # noqa: E731
        if "out" in kwargs:
            kwargs["out"] = tuple(unwrap(x) for x in kwargs["out"])
        return getattr(ufunc, method)(*(unwrap(x) for x in inputs), **kwargs)

    def __getattr__(self, name: str):  # only for names not defined here: astype, sum, max, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.value(), name)

    def __getitem__(self, index):
        return self.value()[index]

    def __len__(self) -> int:
        return len(self._host)

    def __iter__(self):
        return iter(self.value())

    def __float__(self) -> float:
        return float(self.value())

    def __repr__(self) -> str:
        return f"PendingArray({self.value()!r})"


class PackedBuffers:
    """Named device tensors laid out in one byte buffer, so one copy moves them all."""

    def __init__(self, parts: Sequence[tuple[str, tuple[int, ...], torch.dtype]], device: torch.device):
        spans, offset = [], 0
        for name, shape, dtype in parts:
            nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
            spans.append((name, shape, dtype, offset, nbytes))
            offset += -(-nbytes // _ALIGN) * _ALIGN
        self._spans = spans
        self.raw = torch.empty(max(offset, _ALIGN), dtype=torch.uint8, device=device)
        self.views = {name: self._view(self.raw, o, n, shape, dtype) for name, shape, dtype, o, n in spans}

    @staticmethod
    def _view(raw: Tensor, offset: int, nbytes: int, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        return raw[offset : offset + nbytes].view(dtype).view(shape)

    def send(self, copier: Optional[Callable[[Tensor, Tensor], Waitable]] = None) -> dict[str, PendingArray]:
        """Queue the copy to the host (default: `cuda_copy`); the parts as pending host arrays."""
        host = torch.empty(self.raw.shape, dtype=torch.uint8, pin_memory=self.raw.is_cuda)
        pending = PendingCopy((copier or cuda_copy)(host, self.raw))
        flat = host.numpy()  # shares the pinned memory and keeps it alive while any view lives
        return {name: PendingArray(pending, _np_view(flat, o, n, shape, dtype))
                for name, shape, dtype, o, n in self._spans}


def _np_view(flat: np.ndarray, offset: int, nbytes: int, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    return flat[offset : offset + nbytes].view(np_dtype).reshape(shape)


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def cuda_copy(host: Tensor, device_buf: Tensor) -> torch.cuda.Event:
    """Non-blocking copy on a side stream (the next batch's kernels run while it lands); returns the
    event recorded after it. The side stream waits for the kernels that wrote `device_buf`, and the
    buffer is marked as used there so the allocator does not hand its memory out before the copy."""
    device = device_buf.device
    stream = _COPY_STREAMS.get(device)
    if stream is None:
        stream = _COPY_STREAMS[device] = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    # Blocking: a thread waiting on it sleeps in the driver instead of spinning a core for the
    # batch's GPU time (the default event busy-waits).
    event = torch.cuda.Event(blocking=True)
    with torch.cuda.stream(stream):
        host.copy_(device_buf, non_blocking=True)
        event.record(stream)
    device_buf.record_stream(stream)
    return event
