"""The one way a local file is replaced: write a temporary beside it, fsync, rename into place.

A reader never sees half a file: `os.replace` within one folder (one file system) is atomic, and
the fsync before it makes the data reach the disk before the name does (else a power cut can leave
an empty file under the final name). Outputs that may live on object stores go through
`pipeline.io.storage.Storage.atomic_path`, whose local commit is `commit_local` below.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


def commit_local(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Make the written file `tmp` appear as `final` in one step (same file system)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_local_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it replaces `path`, on error it is dropped."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        commit_local(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace the local file `path` with `data` atomically."""
    with atomic_local_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
