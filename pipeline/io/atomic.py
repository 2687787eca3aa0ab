"""The one way a local file is replaced: write a temporary beside it, fsync, rename into place.

A reader never sees half a file: `os.replace` within one folder (one file system) is atomic, and
the fsync before it makes the data reach the disk before the name does (else a power cut can leave
an empty file under the final name). Outputs that may live on object stores go through
`pipeline.io.storage.Storage.atomic_path`, whose local commit is `commit_local` below.

Temporary files are created by `create_temp` only: a random name made with
`O_CREAT | O_EXCL | O_NOFOLLOW` (`tempfile.mkstemp`), so a symlink planted at a guessed name in a
shared folder is never followed and never overwritten through (docs/security.md, threat 4).
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import Iterator


def create_temp(directory: str | os.PathLike[str], name: str) -> tuple[int, Path]:
    """A new, empty temporary file in `directory` for the final file `name`: (open fd, path).

    Created exclusively under a random name (never an existing file or symlink), with the
    permissions a plain `open(..., "w")` would give (mkstemp's own 0600 would hide outputs that
    other users of a shared folder read)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=os.fspath(directory))
    try:
        os.fchmod(fd, _file_mode())
    except OSError:
        pass  # a file system without modes (some FUSE mounts): its own default stands
    return fd, Path(tmp)


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """0o666 less the process umask, read without changing it (`os.umask` is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def commit_local(tmp: str | os.PathLike[str], final: str | os.PathLike[str], fsync: bool = True) -> None:
    """Make the written file `tmp` appear as `final` in one step (same file system). A symlink at
    `final` is replaced, never followed."""
    if fsync:
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_local_path(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` (created empty, exclusively); on a clean exit it
    replaces `path`, on error it is dropped. `fsync=False` for many small files whose loss in a
    power cut is harmless (an export re-run rewrites them)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(final.parent, final.name)
    os.close(fd)
    try:
        yield tmp
        commit_local(tmp, final, fsync=fsync)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_atomic(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> Path:
    """Replace the local file `path` with `data` atomically."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(final.parent, final.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return final
