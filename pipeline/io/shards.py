"""Expand an INPUT spec into the list of input shards, each with the NAME its outputs are keyed by.

Accepted specs (combinations are comma-free: one spec per call):
- brace notation `data/train-{000000..000127}.tar` (any URL scheme),
- a directory (local or object store): every `*.tar` / `*.tar.gz` / `*.tgz` directly in it,
- a glob `s3://bucket/train-*.tar`,
- a text file (`.txt` / `.lst` / `.list`) with one spec per line (`#` comments, blank lines ok;
  relative paths are relative to the list file),
- a single shard URL understood by fsspec or webdataset (`file://`, `s3://`, `gs://`, `http(s)://`,
  `pipe:CMD`).
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


@dataclass(frozen=True)
class ShardSpec:
    url: str  # as given (after brace expansion); opened with pipeline.io.storage.open_input
    name: str  # file name without directories and suffix: outputs are masks/NAME.tar etc.


def expand_input(spec: str, options: Optional[dict[str, Any]] = None) -> list[ShardSpec]:
    """All shards named by `spec`, in the order given; a NAME used twice is a UserError."""
    urls = _expand(spec.strip(), options, depth=0)
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


def _expand(spec: str, options: Optional[dict[str, Any]], depth: int) -> list[str]:
    if depth > 3:
        raise UserError(f"shard list {spec!r} nests list files more than 3 deep")
    if spec.startswith("pipe:"):
        return list(braceexpand(spec))
    if "{" in spec and (".." in spec or "," in spec):
        return [u for part in braceexpand(spec) for u in _expand(part, options, depth)]
    is_glob = any(c in spec.split("://", 1)[-1] for c in "*?[")
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
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "://" not in line and not line.startswith(("pipe:", "/")):
            line = f"{base}/{line}"
        urls.extend(_expand(line, options, depth + 1))
    return urls


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
