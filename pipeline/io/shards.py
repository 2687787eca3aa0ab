"""Expand an INPUT spec into the list of input shards, each with the NAME its outputs are keyed by.

Accepted specs (combinations are comma-free: one spec per call):
- brace notation `data/train-{000000..000127}.tar` (any URL scheme),
- a directory (local or object store): every `*.tar` / `*.tar.gz` / `*.tgz` directly in it,
- a glob `s3://bucket/train-*.tar`,
- a text file (`.txt` / `.lst` / `.list`) with one spec per line (`#` comments, blank lines ok;
  relative paths are relative to the list file),
- a single shard URL understood by fsspec (`file://`, `s3://`, `gs://`, `http(s)://`),
- `pipe:CMD` (CMD's stdout is the shard), only with `allow_pipe` (the command line's `--allow-pipe`).

`pipe:` runs a shell command on every worker, so it is accepted only from the person at the command
line: never from a list file (local or on an object store; other teams write those) and never from
a config. A `pipe:` line in a list file is a UserError even with `allow_pipe` (docs/security.md).
"""
from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any, Optional

import fsspec
from braceexpand import braceexpand

from pipeline.errors import UserError
from pipeline.io.storage import storage_options_for

SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar")
LIST_SUFFIXES = (".txt", ".lst", ".list")
_NAME_OK = re.compile(r"^[A-Za-z0-9._+=@-]+$")
PIPE = "pipe:"


@dataclass(frozen=True)
class ShardSpec:
    url: str  # as given (after brace expansion); opened with pipeline.io.storage.open_input
    name: str  # file name without directories and suffix: outputs are masks/NAME.tar etc.


def expand_input(spec: str, options: Optional[dict[str, Any]] = None, *,
                 allow_pipe: bool = False) -> list[ShardSpec]:
    """All shards named by `spec`, in the order given; a NAME used twice is a UserError.
    `allow_pipe`: the user asked for `pipe:` on the command line (`--allow-pipe`); it never
    extends to list files."""
    urls = _expand(spec.strip(), options, 0, _Origin(allow_pipe))
    if not urls:
        raise UserError(f"INPUT {spec!r} names no shards; give a .tar, a directory of .tar files, "
                        "brace notation like data/train-{000000..000009}.tar, or a list file")
    shards = [ShardSpec(url, shard_name(url)) for url in urls]
    _check_unique(shards)
    return shards


def shard_name(url: str) -> str:
    """`s3://b/x/train-000001.tar` -> `train-000001`; for `pipe:` the last token that is a shard."""
    target = url
    if url.startswith("pipe:"):
        tokens = [t for t in shlex.split(url[len("pipe:"):]) if t.lower().endswith(SHARD_SUFFIXES)]
        if not tokens:
            raise UserError(f"cannot name shard {url!r}: the pipe command has no argument ending in .tar")
        target = tokens[-1]
    base = posixpath.basename(target.split("?", 1)[0].rstrip("/"))
    for suffix in SHARD_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    if not base or not _NAME_OK.match(base):
        raise UserError(f"cannot derive an output name from shard {url!r} (got {base!r}); "
                        "shard file names may use letters, digits and . _ + = @ -")
    return base


def pipe_command(url: str) -> Optional[str]:
    """The shell command of a `pipe:` shard URL, None for any other URL."""
    return url[len(PIPE):] if url.startswith(PIPE) else None


@dataclass(frozen=True)
class _Origin:
    """Where a spec came from: the command line (`list_file` None) or a line of a list file."""
    allow_pipe: bool
    list_file: Optional[str] = None
    line: int = 0

    def check_pipe(self, spec: str) -> None:
        if self.list_file is not None:
            # Whoever can write the list (another team, a shared bucket) must not run commands here.
            raise UserError(f"shard list {_shown(self.list_file)} line {self.line}: pipe: commands are not accepted "
                            "from list files (they would run on every worker); give the command itself as INPUT "
                            "with --allow-pipe")
        if not self.allow_pipe:
            raise UserError(f"INPUT {_shown(spec)} is a pipe: command, which runs a shell command on every worker; "
                            "pass --allow-pipe to run it")


def _expand(spec: str, options: Optional[dict[str, Any]], depth: int, origin: _Origin) -> list[str]:
    if depth > 3:
        raise UserError(f"shard list {spec!r} nests list files more than 3 deep")
    if spec.startswith(PIPE):
        origin.check_pipe(spec)
        return list(braceexpand(spec))
    if "{" in spec and (".." in spec or "," in spec):
        return [u for part in braceexpand(spec) for u in _expand(part, options, depth, origin)]
    where = spec.split("://", 1)[-1]
    if spec.lower().startswith(("http://", "https://")):
        where = where.split("?", 1)[0]  # `?` starts a query there (a presigned URL), not a glob
    is_glob = any(c in where for c in "*?[")
    if not is_glob and spec.split("?", 1)[0].lower().endswith(SHARD_SUFFIXES):
        return [spec]  # a single shard: no listing, so http(s) URLs need no round trip here
    fs, path = _fs(spec, options)
    if is_glob:
        return [_unstrip(spec, fs, p) for p in sorted(fs.glob(path)) if p.lower().endswith(SHARD_SUFFIXES)]
    if path.lower().endswith(LIST_SUFFIXES):
        return _read_list(spec, fs, path, options, depth)
    if _isdir(fs, path):
        entries = sorted(fs.ls(path, detail=False))
        return [_unstrip(spec, fs, p) for p in entries if p.lower().endswith(SHARD_SUFFIXES)]
    return [spec]


def _read_list(spec: str, fs: Any, path: str, options: Optional[dict[str, Any]], depth: int) -> list[str]:
    try:
        text = fs.cat_file(path).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read shard list {spec!r}: {exc}") from exc
    base = spec.rsplit("/", 1)[0] if "/" in spec else "."
    urls = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        origin = _Origin(False, spec, number)
        if line.startswith(PIPE):
            origin.check_pipe(line)
        if "://" not in line and not line.startswith("/"):
            line = f"{base}/{line}"
        urls.extend(_expand(line, options, depth + 1, origin))
    return urls


def _shown(text: str, limit: int = 120) -> str:
    """`text` for a one-line message: control characters escaped, long ones cut."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}...'"


def _fs(spec: str, options: Optional[dict[str, Any]]) -> tuple[Any, str]:
    try:
        return fsspec.core.url_to_fs(spec, **storage_options_for(spec, options))
    except (ImportError, ValueError) as exc:
        raise UserError(f"cannot open INPUT {spec!r}: {exc}") from exc


def _isdir(fs: Any, path: str) -> bool:
    try:
        return fs.isdir(path)
    except OSError:
        return False  # unreachable input: treat as one shard, whose failure is then recorded


def _unstrip(spec: str, fs: Any, path: str) -> str:
    """fsspec returns paths without the protocol; put it back so workers open the same store."""
    protocol = spec.split("://", 1)[0] if "://" in spec else None
    if protocol is None or protocol == "file":
        return path
    return f"{protocol}://{path}"


def _check_unique(shards: list[ShardSpec]) -> None:
    seen: dict[str, str] = {}
    for s in shards:
        if s.name in seen:
            raise UserError(f"input shards {seen[s.name]!r} and {s.url!r} share the name {s.name!r}; "
                            "outputs are keyed by shard file name, so rename one or label them separately")
        seen[s.name] = s.url
