"""Which engine exceptions mean the device itself is gone for this process.

After a sticky CUDA error (an illegal memory access, a device-side assert, an Xid that resets the
context) every later call in the same process fails too: labeling on would turn the rest of every
shard into `inference` error rows and mark the shards complete. Such an error is fatal to the
worker: the actor exits, Ray restarts it with a fresh CUDA context, and the shard is retried.
Out-of-memory is not fatal: it is a property of the batch (the stage retries image by image).
"""
from __future__ import annotations

import sys

# Messages of CUDA's sticky or context-wide failures, as the runtime and its libraries word them.
_FATAL_MARKERS = (
    "cuda error", "illegal memory access", "device-side assert", "unspecified launch failure",
    "an illegal instruction", "misaligned address", "uncorrectable ecc", "cudnn_status_execution_failed",
    "cublas_status_execution_failed", "cublas_status_internal_error", "cusparse_status", "nccl error",
    "cuda driver error", "device not ready", "launch timed out", "gpu has fallen off the bus",
)


def is_fatal_device_error(exc: BaseException) -> bool:
    """True for a non-OOM CUDA error (by type where torch has one, else by CUDA's message).
    torch is looked up, not imported: an engine that raised a torch error has loaded it already, and
    the driver, which imports this module through the stage, never needs it."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    message = str(exc).lower()
    if "out of memory" in message:
        return False
    accelerator = getattr(torch, "AcceleratorError", None)  # raised for CUDA errors since torch 2.8
    if accelerator is not None and isinstance(exc, accelerator):
        return True
    return isinstance(exc, RuntimeError) and any(marker in message for marker in _FATAL_MARKERS)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure of the device (the batch was too big, not the device broken)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and "out of memory" in str(exc).lower()


def release_cached_memory() -> None:
    """Return the caching allocator's free blocks to the device, so that the retried, smaller batch
    is not refused for fragmentation. Called after the failed batch's traceback is gone."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
