"""Where outputs go and inputs come from: fsspec paths with atomic writes.

A reader of OUTPUT must never see half a file, so every write goes to a temporary name first:
locally a file under `OUTPUT/_tmp/` renamed into place (same file system, so `os.replace` is
atomic), on object stores a local temporary file uploaded as one object (an object appears only
when its upload completes).
"""
from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import subprocess
import tempfile
import uuid
from typing import IO, Any, Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import UserError

log = logging.getLogger(__name__)

TMP_DIR = "_tmp"  # under OUTPUT; holds local temporary files until they are renamed into place


def storage_options_for(url: str, options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Options for fsspec: cfg.io.storage_options, plus an S3 endpoint from the environment.

    Credentials themselves come from the usual environment variables / config files, which s3fs
    and gcsfs read on their own; only the endpoint of S3-compatible stores needs passing through.
    """
    opts = dict(options or {})
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
    return opts


class Storage:
    """An output root (local directory or object-store prefix) addressed by relative posix paths."""

    def __init__(self, root: str, options: Optional[dict[str, Any]] = None):
        self.url = root
        try:
            self.fs, path = fsspec.core.url_to_fs(root, **storage_options_for(root, options))
        except (ImportError, ValueError) as exc:
            raise UserError(f"cannot open output {root!r}: {exc}; install the fsspec backend or fix the URL") from exc
        self.root = path.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        """File names (not paths) directly under `rel`; empty when it does not exist."""
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.atomic_path(rel) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)

    @contextlib.contextmanager
    def atomic_path(self, rel: str) -> Iterator[str]:
        """Yield a local path to write; on success it becomes `rel` in one step, on error nothing."""
        tmp_dir = self._tmp_dir()
        tmp = os.path.join(tmp_dir, f"{uuid.uuid4().hex}-{posixpath.basename(rel)}")
        try:
            yield tmp
            self._commit(tmp, rel)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            if not self.is_local:
                shutil.rmtree(tmp_dir, ignore_errors=True)

    def clean_tmp(self) -> None:
        """Drop temporaries left by a crashed run (a killed process cannot remove its own)."""
        if self.is_local:
            shutil.rmtree(self.path(TMP_DIR), ignore_errors=True)

    def _tmp_dir(self) -> str:
        if self.is_local:
            tmp_dir = self.path(TMP_DIR)
            os.makedirs(tmp_dir, exist_ok=True)
            return tmp_dir
        return tempfile.mkdtemp(prefix="pseudolabel-")

    def _commit(self, tmp: str, rel: str) -> None:
        final = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            # Data must reach the disk before the name does, or a power cut can leave an empty file.
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        else:
            self.fs.put_file(tmp, final)


def open_input(url: str, options: Optional[dict[str, Any]] = None) -> contextlib.AbstractContextManager[IO[bytes]]:
    """Open an input shard for streaming: `pipe:CMD` runs CMD and reads its stdout, else fsspec."""
    if url.startswith("pipe:"):
        return _open_pipe(url[len("pipe:"):])
    return fsspec.open(url, "rb", **storage_options_for(url, options))


@contextlib.contextmanager
def _open_pipe(cmd: str) -> Iterator[IO[bytes]]:
    proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None  # guaranteed by stdout=PIPE
    try:
        yield proc.stdout
        # Drain so that the exit status reflects the whole command, then report a failing command
        # as an I/O error: its output may have been cut short.
        proc.stdout.read()
        rc = proc.wait()
        if rc != 0:
            err = proc.stderr.read().decode(errors="replace").strip()[:200] if proc.stderr else ""
            raise OSError(f"pipe command exited with status {rc}: {err}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
