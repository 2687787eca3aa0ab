"""An export appears whole or not at all: it is written into a fresh folder beside DEST and
renamed to DEST at the end.

The staging folder is made by `tempfile.mkdtemp` (a random name, created exclusively, mode 0700
until the rename), so nothing planted in a shared parent folder is written through, and the files
inside it can be plain writes. On any error, Ctrl-C included, the staging folder is removed and
DEST is left as it was. With `overwrite`, an existing DEST is moved aside and removed only after
the new one is in place.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError


@contextlib.contextmanager
def staged_dest(dest: Path, overwrite: bool) -> Iterator[Path]:
    """Yield the staging folder; on a clean exit it becomes `dest`."""
    if dest.exists() and not dest.is_dir():
        raise UserError(f"export destination {dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise UserError(f"export destination {dest} is not empty; choose a new folder or pass --overwrite")
    parent = dest.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise UserError(f"cannot create the export folder next to {dest}: {exc.strerror or exc}") from exc
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        _replace_dir(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _replace_dir(stage: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(stage, dest)
        return
    if not any(dest.iterdir()):
        dest.rmdir()
        os.rename(stage, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.absolute().parent))
    os.rename(dest, old / "previous")  # moved aside, not deleted, until the new one is in place
    try:
        os.rename(stage, dest)
    except OSError:
        os.rename(old / "previous", dest)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process umask, read without setting it (`os.umask` would race with other threads)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022
