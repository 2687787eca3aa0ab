"""What a completion record keeps of its input shard so that `verify` need not read it again.

`keys_digest`: sha256 over the shard's sample keys in input order (one per manifest row, so the
manifest can be checked against it); `input_identity`: the input object's size and ETag (or
mtime locally) from one metadata request, compared by verify against a listing of INPUT.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterable, Optional

import fsspec

from pipeline.io.storage import read_with_retries

log = logging.getLogger(__name__)


def keys_digest(keys: Iterable[str]) -> str:
    h = hashlib.sha256()
    for key in keys:
        h.update(key.encode("utf-8", "surrogateescape"))
        h.update(b"\n")  # keys hold no newline (tar member names), so the joining is unambiguous
    return h.hexdigest()


def identity_of(info: dict[str, Any]) -> tuple[Optional[int], Optional[str]]:
    """(size, etag) from an fsspec info/ls entry; ETag on object stores, mtime on local disks."""
    size = info.get("size")
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
    return (int(size) if size is not None else None), (str(tag).strip('"') if tag is not None else None)


def input_identity(url: str, storage_options: Optional[dict[str, Any]] = None) -> tuple[Optional[int], Optional[str]]:
    """Size and ETag of an input shard, or (None, None) for streams (`pipe:`, `-`) and on errors."""
    if url.startswith("pipe:") or url == "-":
        return None, None
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        # Transport failures are retried, then raise TransientReadError (the shard is retried
        # later): a record without the identity would fail verify.
        return identity_of(read_with_retries(lambda: fs.info(path), f"reading the size and ETag of {url}"))
    except (OSError, ValueError) as exc:  # the read itself reports an unreadable shard
        log.debug("no size/etag for %s: %s", url, exc)
        return None, None
