"""Writing and streaming plain tar files: the one place that decides how a tar member looks.

Members get fixed metadata (mtime 0, uid/gid 0, mode 0644, no owner names), so the same members
always give the same bytes: a regenerated corpus or a relabeled shard is byte-identical to the
previous one. Readers stream (`r|*`) because shards may sit on object stores, where every seek
is a request, and may be gzip/bz2/xz compressed.

`pipeline.io.reader.iter_samples` keeps its own loop over the tar: it needs the archive offset after
the last member and per-member error handling to tell a truncated shard from a complete one.
"""
from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Literal, overload

from pipeline.io.atomic import atomic_local_path
from pipeline.io.tarstream import member_bytes, members, open_cursor

# For short ASCII names PAX writes plain ustar headers (the same bytes as USTAR_FORMAT); unlike
# USTAR it can still store names over 100 characters and members over 8 GiB.
TAR_FORMAT = tarfile.PAX_FORMAT
# Largest single member (or header) `iter_members` reads into memory; a bigger one is a ReadError.
MAX_MEMBER_READ = 16 * 2**30

Source = str | os.PathLike[str] | IO[bytes]


def tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """Arguments for `TarFile.addfile` that write `data` as member `name` with fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # These equal TarInfo's defaults today; set anyway because shard bytes must not depend on them.
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    return info, io.BytesIO(data)


def write_tar(path: str | os.PathLike[str], members: Iterable[tuple[str, bytes]], atomic: bool = True) -> Path:
    """Write the `(name, bytes)` members, in order, to a local tar at `path`; return the path.

    With `atomic` the tar is written under a temporary name in the same folder and renamed into
    place (`pipeline.io.atomic`), so a reader (or a re-run after a crash) sees the whole file or
    none of it; a failure part way leaves `path` as it was. Outputs on object stores go through
    `Storage.atomic_path` instead.
    """
    path = Path(path)
    with atomic_local_path(path) if atomic else contextlib.nullcontext(path) as target:
        with tarfile.open(target, "w", format=TAR_FORMAT) as tar:
            for name, data in members:
                tar.addfile(*tar_member(name, data))
    return path


@overload
def iter_members(source: Source, read: Literal[True] = True) -> Iterator[tuple[str, bytes]]: ...


@overload
def iter_members(source: Source, read: bool | Callable[[str], bool]) -> Iterator[tuple[str, bytes | None]]: ...


def iter_members(source: Source, read: bool | Callable[[str], bool] = True) -> Iterator[tuple[str, bytes | None]]:
    """`(name, data)` for every regular-file member, in archive order, streaming.

    `read` is True (every member's bytes), False (names only, data None) or a predicate on the
    member name (data None where it says no). Data that is not read is skipped, never held in
    memory. A path is opened and closed here; a file object is left for its owner to close.
    A broken archive raises `tarfile.TarError` or `OSError` after the members before the damage;
    one cut exactly between two members reads as complete (tarfile cannot tell).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from iter_members(f, read)
        return
    # tarfile's stream mode would skip a member by reading its declared size block by block, for
    # ever when a hostile header declares 10^15 bytes; the cursor seeks, or reads what is there.
    cursor = open_cursor(source, str(getattr(source, "name", "tar")), MAX_MEMBER_READ, typed_errors=False)
    tar = tarfile.open(fileobj=cursor, mode="r:")  # type: ignore[call-overload]
    for info in members(tar):
        if not info.isreg():
            continue
        if not (read(info.name) if callable(read) else read):
            yield info.name, None
            continue
        yield info.name, member_bytes(cursor, tar, info)
