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
import stat
import subprocess
import tempfile
import time
from typing import IO, Any, Callable, Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import TransientReadError, TransientWriteError, UserError
from pipeline.io.atomic import commit_local, create_temp
from pipeline.redact import redact_foreign, register_secrets

log = logging.getLogger(__name__)

TMP_DIR = "_tmp"  # under OUTPUT; holds local temporary files until they are renamed into place


def storage_options_for(url: str, options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Options for fsspec: cfg.io.storage_options, plus an S3 endpoint from the environment.

    Credentials themselves come from the usual environment variables / config files, which s3fs
    and gcsfs read on their own; only the endpoint of S3-compatible stores needs passing through.
    """
    opts = dict(options or {})
    register_secrets(opts)  # redacted wherever they show up later in this process (pipeline.redact)
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
        """File names (not paths) directly under `rel`; empty when it does not exist. A local
        folder reached through a symlink is refused (`refuse_links`): nothing outside OUTPUT is listed."""
        self.refuse_links(rel)
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def remove(self, rel: str) -> None:
        """Delete one file. Locally never through a symlinked folder, and a symlink itself is
        unlinked, never followed (fsspec's rm would follow one to a folder)."""
        if self.is_local:
            self.refuse_links(posixpath.dirname(rel))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(rel))
            return
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(rel))

    def refuse_links(self, rel: str) -> None:
        """Raise `UserError` when a folder on the way from the root to `rel` (itself included) is
        a symlink (local roots only; the root itself may be one: that is the user's choice). A
        planted `OUTPUT/masks -> elsewhere` must not make a run write, list or delete elsewhere."""
        if not self.is_local or not rel:
            return
        here = self.root
        for part in rel.strip("/").split("/"):
            here = os.path.join(here, part)
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                return  # created by us later, as a real folder (checked again before use)
            if stat.S_ISLNK(mode):
                raise UserError(f"{here} is a symbolic link; pseudolabel never writes, lists or deletes "
                                "through one inside OUTPUT: remove it or use another OUTPUT")

    def write_bytes(self, rel: str, data: bytes) -> None:
        # The bytes are known: an upload whose answer was lost is checked by reading the object back.
        with self.atomic_path(rel, expect=data) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)

    @contextlib.contextmanager
    def atomic_path(self, rel: str, expect: Optional[bytes] = None) -> Iterator[str]:
        """Yield a local path to write; on success it becomes `rel` in one step, on error nothing.
        On object stores the upload is retried with backoff (`upload_with_retries`)."""
        tmp_dir = self._tmp_dir()
        fd, tmp_path = create_temp(tmp_dir, posixpath.basename(rel))  # random, O_EXCL | O_NOFOLLOW
        os.close(fd)
        tmp = str(tmp_path)
        try:
            yield tmp
            self._commit(tmp, rel, expect)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            if not self.is_local:
                shutil.rmtree(tmp_dir, ignore_errors=True)

    def clean_tmp(self) -> None:
        """Drop temporaries left by a crashed run (a killed process cannot remove its own)."""
        if self.is_local:
            self.refuse_links(TMP_DIR)
            shutil.rmtree(self.path(TMP_DIR), ignore_errors=True)

    def _tmp_dir(self) -> str:
        if self.is_local:
            tmp_dir = self.path(TMP_DIR)
            os.makedirs(tmp_dir, exist_ok=True)
            self.refuse_links(TMP_DIR)  # after makedirs: exist_ok accepts a symlink to a folder
            return tmp_dir
        return tempfile.mkdtemp(prefix="pseudolabel-")

    def _commit(self, tmp: str, rel: str, expect: Optional[bytes] = None) -> None:
        final = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            self.refuse_links(posixpath.dirname(rel))
            commit_local(tmp, final)  # fsync, then rename: the data reaches the disk before the name
        else:
            upload_with_retries(self.fs, tmp, final, expect)


# Object-store requests: the client (botocore, s3fs) already retries quickly a few times; these
# attempts add a backoff long enough to ride out a store that is failing for seconds. An upload
# is one whole object, so repeating it is harmless. (The dispatcher then retries the whole shard,
# after its own backoff, ray.max_shard_retries times.)
RETRY_ATTEMPTS = 5
RETRY_BACKOFF_S = 1.0  # before the 2nd attempt; doubles (1, 2, 4, 8 s: 15 s of waiting in all)


def upload_with_retries(fs: Any, local: str, final: str, expect: Optional[bytes] = None) -> None:
    """`fs.put_file(local, final)`, retried on transient errors (`is_transient_error`). When the
    bytes are given (`expect`) and an attempt failed, the object is read back first: an upload
    that took effect but whose answer was lost counts as done. Raises `TransientWriteError`
    (type name and message only) when every attempt failed, the error itself when not transient."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            fs.put_file(local, final)
            return
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_transient_error(exc):
                raise
            if expect is not None and _holds(fs, final, expect):
                log.warning("upload of %s failed (%s) but the object holds what was written; done",
                            final, describe_error(exc))
                return
            if attempt == RETRY_ATTEMPTS:
                raise TransientWriteError(f"writing {final} failed {attempt} times, last: "
                                          f"{describe_error(exc)}") from None
            _back_off(f"upload of {final}", exc, attempt)


def read_with_retries(call: Callable[[], Any], what: str) -> Any:
    """`call()`, retried on transient errors like uploads are; `TransientReadError` (type name and
    message only) when every attempt failed, the error itself when not transient."""
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_transient_error(exc):
                raise
            if attempt == RETRY_ATTEMPTS:
                raise TransientReadError(f"{what} failed {attempt} times, last: {describe_error(exc)}") from None
            _back_off(what, exc, attempt)


def _back_off(what: str, exc: BaseException, attempt: int) -> None:
    delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
    log.warning("%s failed (%s); attempt %d of %d in %.0fs", what, describe_error(exc), attempt + 1,
                RETRY_ATTEMPTS, delay)
    time.sleep(delay)


def _holds(fs: Any, path: str, expect: bytes) -> bool:
    """Whether the object at `path` has exactly these bytes (False when it cannot be read)."""
    try:
        fs.invalidate_cache(path)
        return fs.cat_file(path) == expect
    except Exception:  # noqa: BLE001 - unknown is "no": the upload is attempted again
        return False


_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                        FileExistsError)


def is_transient_error(exc: BaseException) -> bool:
    """A transport failure worth retrying: an OSError from the store other than missing, refused or
    exists (s3fs maps 5xx to OSError), a timeout, or a connection-level error of botocore or
    aiohttp (which are not OSErrors)."""
    if isinstance(exc, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(exc, OSError):  # also TimeoutError, ConnectionError
        return True
    for cls in type(exc).__mro__:
        module = cls.__module__ or ""
        if cls.__name__ in ("HTTPClientError", "ConnectionError") and module.startswith("botocore"):
            return True
        if cls.__name__ in ("ClientError", "FSTimeoutError") and module.startswith(("aiohttp", "fsspec")):
            return True
    return False


def describe_error(exc: BaseException) -> str:
    """`TypeName: first line` of an error, at most 300 characters (for logs and records)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}".rstrip(": ")


def open_input(url: str, options: Optional[dict[str, Any]] = None) -> contextlib.AbstractContextManager[IO[bytes]]:
    """Open an input shard for streaming: `pipe:CMD` runs CMD and reads its stdout, else fsspec."""
    if url.startswith("pipe:"):
        return _open_pipe(url[len("pipe:"):])
    return _open_remote(fsspec.open(url, "rb", **storage_options_for(url, options)), url)


@contextlib.contextmanager
def _open_remote(opener: Any, url: str) -> Iterator[IO[bytes]]:
    """Open through fsspec; a transport failure while opening (a 503 on the first request, a cut
    connection) is retried with backoff, then raises `TransientReadError`, so that the shard is
    retried later instead of being recorded unreadable. Errors while reading are typed by the reader."""
    f = read_with_retries(opener.__enter__, f"opening {url}")
    try:
        yield f
    finally:
        opener.__exit__(None, None, None)


PIPE_EXIT_WAIT_S = 5.0  # a command whose output ended has exited or is about to; one still writing is killed
PIPE_DRAIN_LIMIT = 64 * 2**20  # bytes after the tar's end read so that the exit status is the command's own


@contextlib.contextmanager
def _open_pipe(cmd: str) -> Iterator[IO[bytes]]:
    """The stdout of `cmd`. Its exit status is checked however reading ended: a non-zero status
    means the stream may have been cut short by the transport (a dropped `aws s3 cp` or `curl`), so
    it raises `TransientReadError` (retry), also when the tar read so far looked truncated. stderr
    goes to a temporary file: a chatty command can never block on a full stderr pipe."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdout is not None  # guaranteed by stdout=PIPE
        try:
            yield proc.stdout
            # Drain (boundedly) so that the status reflects the whole command, not a SIGPIPE.
            drained = 0
            while drained <= PIPE_DRAIN_LIMIT and (chunk := proc.stdout.read(1 << 20)):
                drained += len(chunk)
            rc = _pipe_status(proc)
            if rc not in (None, 0):
                raise TransientReadError(_pipe_failure(cmd, rc, errors))
        except TransientReadError:
            raise
        except Exception as exc:
            rc = _pipe_status(proc)
            if rc not in (None, 0):
                raise TransientReadError(_pipe_failure(cmd, rc, errors)) from exc
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _pipe_status(proc: subprocess.Popen) -> Optional[int]:
    """The exit status, or None for a command that is still running after PIPE_EXIT_WAIT_S."""
    try:
        return proc.wait(timeout=PIPE_EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        return None


PIPE_TAIL_CHARS = 120  # of the command's last stderr line kept in the failure (records, logs), redacted


def _pipe_failure(cmd: str, rc: int, errors: IO[bytes]) -> str:
    """One line for records and logs. Neither the command (it may hold credentials) nor its stderr
    is copied verbatim: the program's name, and a short redacted tail of the last stderr line."""
    errors.seek(0, os.SEEK_END)
    errors.seek(max(0, errors.tell() - 300))
    tail = errors.read().decode(errors="replace").strip().splitlines()
    last = f": {redact_text(tail[-1])}" if tail else ""
    return (f"pipe command ({_program(cmd)}) exited with status {rc}{last}; its output may be cut short, "
            "the shard is retried")


def redact_text(text: str, limit: int = PIPE_TAIL_CHARS) -> str:
    """`text` of a command's stderr, redacted and cut to `limit` (`pipeline.redact.redact_foreign`,
    the project's one redaction module)."""
    return redact_foreign(text, limit)


def _program(cmd: str) -> str:
    """The program a shell command starts (its first word, without directories), for messages."""
    words = cmd.strip().split(None, 1)
    return posixpath.basename(words[0])[:40] if words else "empty"
