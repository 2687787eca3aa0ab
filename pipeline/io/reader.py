"""Iterate the samples of one WebDataset tar shard, robustly, accounting for every member.

Members are grouped into samples the WebDataset way: the key is the member path up to the first
dot of its file name, the extension is the rest, and consecutive members with the same key form
one sample. Only the image member is kept (the first of io.image_extensions present, in that
order of preference, matched without regard to case); its extension is recorded exactly as it
is spelled in the tar (`x.JPG` -> `image_member: "JPG"`), so readers of the manifest find the
member again. Other members are skipped without being held in memory.

Every member is accounted for: it belongs to a sample row, or it is counted in
`ReadReport.skipped` by reason (`SKIP_REASONS`: not a regular file, hidden, no extension). A
member whose key and extension already appeared in the sample being read (`c.jpg` twice in a
row) starts a new sample, which, like any later sample reusing a key, is a `duplicate_key` row.
Keys with a `..` component or an absolute path, a control or line-separator character (a newline
would split a line of an export's split file), a path component longer than MAX_COMPONENT_BYTES
(no file system holds a 255-byte name plus `.label.png`) or more than MAX_KEY_BYTES in all are
`unsafe_key` rows: they never become mask member names. Such a key is recorded shortened
(`shown_key`), so that a hostile header cannot make every record of the shard hold a megabyte. An image member declaring more than `max_member_bytes` is a `too_large` row and is
skipped unread.

Tar-level problems never raise out of `iter_samples`: they end the iteration and are recorded in
the `ReadReport`. Samples read before the problem are yielded as usual; the sample being read
when the tar broke becomes a `truncated_tar` error row unless its image member was read whole.
Python's `tarfile` treats an archive cut exactly at a header as a normal end, so a clean end is
confirmed by looking for the end-of-archive zero block ourselves. A failure of the input stream
itself (`TransientReadError`: a `pipe:` command that exited non-zero, a dropped connection) does
raise: the shard must be retried, not recorded as truncated.
"""
from __future__ import annotations

import hashlib
import lzma
import posixpath
import tarfile
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from pipeline.io.layout import ErrorKind
from pipeline.io.records import SampleError, SampleResult
from pipeline.io.storage import open_input
from pipeline.io.tarstream import DEFAULT_MAX_EXPANSION, Cursor, member_bytes, members, open_cursor

TRUNCATED_TAR = ErrorKind.TRUNCATED_TAR
DUPLICATE_KEY = ErrorKind.DUPLICATE_KEY
UNSAFE_KEY = ErrorKind.UNSAFE_KEY
BLOCK = 512
DEFAULT_MAX_MEMBER_BYTES = 256 * 2**20  # io.max_member_bytes's default (pipeline/config.py)
# Longest path component of a key (UTF-8 bytes): file systems hold 255, and exports and extractors
# add suffixes such as `.label.png` to it. Longest key in all: far below PATH_MAX (4096).
MAX_COMPONENT_BYTES = 200
MAX_KEY_BYTES = 1024
SHOWN_KEY_CHARS = 120  # of an over-long unsafe key kept in its row, plus a digest of the whole
# Unicode categories that are no part of a name: controls (newline, NUL, ESC...), surrogates (bytes
# that are not UTF-8), line and paragraph separators (str.splitlines() splits on them).
_UNSAFE_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # reorder displayed text
# Everything a broken stream can raise while being parsed or decompressed. Not TransientReadError.
STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)
# Why a member belongs to no sample: the keys of ReadReport.skipped and of `skipped_members`.
SKIP_REASONS = ("directory", "symlink", "hardlink", "device", "fifo", "other_type", "hidden", "no_extension")


@dataclass
class ReadReport:
    members: int = 0  # tar members seen (every type); each is in a sample row or in `skipped`
    samples: int = 0  # samples yielded
    skipped: dict[str, int] = field(default_factory=dict)  # members in no sample, by SKIP_REASONS
    failure: Optional[str] = None  # why the tar could not be read to its end; None when it was

    @property
    def unreadable(self) -> bool:
        """Failed before a single member: nothing of the shard could be read."""
        return self.failure is not None and self.members == 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass
class _Pending:
    key: str
    index: int
    ext: Optional[str] = None  # extension of the kept image member, as spelled in the tar
    data: Optional[bytes] = None
    rank: int = 1 << 30  # preference of the kept image extension (lower is better)
    broken: bool = False  # a member of this sample was cut off by the end of the data
    too_large: Optional[str] = None  # why the preferred image member was not read
    unsafe: Optional[str] = None  # why the key is unsafe (key_problem of the key as read), None when safe
    exts: set[str] = field(default_factory=set)  # extensions seen in this sample, lower case


@dataclass
class _Shape:
    extensions: list[str]
    max_member_bytes: int
    seen: set[str] = field(default_factory=set)


def iter_samples(url: str, extensions: list[str], report: ReadReport,
                 options: Optional[dict[str, Any]] = None, *,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                 max_expansion: float = DEFAULT_MAX_EXPANSION) -> Iterator[SampleResult]:
    """Yield one SampleResult per sample of the shard at `url`, in order; fill `report` as it goes.
    `max_expansion`: io.max_expansion_ratio (pipeline.io.tarstream). Raises
    `pipeline.errors.TransientReadError` when the input stream itself failed."""
    shape = _Shape([e.lower().lstrip(".") for e in extensions], max_member_bytes)
    pending: Optional[_Pending] = None
    try:
        with open_input(url, options) as raw:
            cursor = open_cursor(raw, url, max_member_bytes, max_expansion=max_expansion)
            tar = tarfile.open(fileobj=cursor, mode="r:")  # type: ignore[call-overload]
            for member in members(tar):
                report.members += 1
                key, ext, reason = _sample_member(member)
                if key is None:
                    report.skip(reason)
                    continue
                full, key = key, shown_key(key)
                if pending is not None and (key != pending.key or ext.lower() in pending.exts):
                    yield _finish(pending, url, shape, report)
                    pending = None
                if pending is None:
                    pending = _Pending(key, report.samples, unsafe=key_problem(full))
                _read_member(cursor, tar, member, ext, pending, shape)
            _check_end(cursor, tar.offset)
    except STREAM_ERRORS as exc:
        report.failure = f"{type(exc).__name__}: {exc}"
        if pending is not None and pending.data is None:
            pending.broken = True
    if pending is not None:
        yield _finish(pending, url, shape, report)


def split_member_name(name: str) -> tuple[Optional[str], str]:
    """`dir/abc.seg.png` -> (`dir/abc`, `seg.png`); (None, "") for names that are not sample members."""
    directory, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None, ""  # hidden files (e.g. macOS `._x`) and dot-less names carry no sample
    stem, ext = base.split(".", 1)
    return (posixpath.join(directory, stem) if directory else stem), ext


def unsafe_key(key: str) -> bool:
    """A key that is unsafe as a file or member name; see `key_problem`."""
    return key_problem(key) is not None


def key_problem(key: str) -> Optional[str]:
    """Why `key` is unsafe as a member name or a path under an export folder, None when it is not:
    it would escape the folder (`../x`, `/etc/x`), holds a character that breaks lines or display,
    or is too long for a file system."""
    parts = key.replace("\\", "/").split("/")
    if key.startswith(("/", "\\")) or ".." in parts:
        return "has a '..' component or is an absolute path"
    if any(unicodedata.category(c) in _UNSAFE_CATEGORIES or c in _BIDI_CONTROLS for c in key):
        return "holds a control, line-separator or text-direction character"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes"
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES for p in parts):
        return f"has a path component longer than {MAX_COMPONENT_BYTES} bytes (file systems hold 255)"
    return None


def shown_key(key: str) -> str:
    """`key` as recorded: itself, or when over MAX_KEY_BYTES its start and a digest of the whole
    (still one distinct key per distinct input key)."""
    data = key.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_KEY_BYTES:
        return key
    return f"{key[:SHOWN_KEY_CHARS]}...[{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}]"


def _sample_member(member: tarfile.TarInfo) -> tuple[Optional[str], str, str]:
    """(key, extension, "") for a member of a sample, else (None, "", reason it is skipped)."""
    if not member.isreg():
        return None, "", _type_reason(member)
    key, ext = split_member_name(member.name)
    if key is None:
        return None, "", "hidden" if posixpath.basename(member.name).startswith(".") else "no_extension"
    return key, ext, ""


def _type_reason(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "directory"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "other_type"


def _read_member(cursor: Cursor, tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str,
                 pending: _Pending, shape: _Shape) -> None:
    pending.exts.add(ext.lower())
    if ext.lower() not in shape.extensions or pending.key in shape.seen or pending.unsafe is not None:
        return  # skipped: the next header is found by seeking past this member's data
    rank = shape.extensions.index(ext.lower())
    if rank >= pending.rank:
        return
    pending.ext, pending.rank, pending.data = ext, rank, None
    if member.size > shape.max_member_bytes:
        pending.too_large = (f"member {member.name} declares {member.size} bytes, more than "
                             f"io.max_member_bytes={shape.max_member_bytes}")
        return
    pending.too_large = None
    try:
        pending.data = member_bytes(cursor, tar, member)
    except STREAM_ERRORS:
        pending.broken = True
        raise


def _finish(pending: _Pending, url: str, shape: _Shape, report: ReadReport) -> SampleResult:
    result = SampleResult(key=pending.key, sample_index=pending.index, source_shard=url,
                          image_member=pending.ext if pending.data is not None else None, data=pending.data)
    report.samples += 1
    if pending.broken:
        result.fail(SampleError(TRUNCATED_TAR, "the shard ended inside this sample"))
    elif pending.unsafe is not None:
        shown = repr(pending.key[:SHOWN_KEY_CHARS]) + ("..." if len(pending.key) > SHOWN_KEY_CHARS else "")
        result.fail(SampleError(UNSAFE_KEY, f"key {shown} {pending.unsafe}; it would be unsafe as a member name "
                                            "of the mask shard or a file name of an export"))
    elif pending.key in shape.seen:
        # Two samples with one key would collide in the mask shard; the first one wins.
        result.fail(SampleError(DUPLICATE_KEY, f"key {pending.key!r} already appeared earlier in this shard"))
    elif pending.too_large is not None:
        result.fail(SampleError(ErrorKind.TOO_LARGE, pending.too_large))
    elif pending.data is None:
        result.fail(SampleError(ErrorKind.NO_IMAGE, f"no member with extension {'/'.join(shape.extensions)}"))
    shape.seen.add(pending.key)
    return result


def _check_end(cursor: Cursor, offset: int) -> None:
    block = cursor.bytes_at(offset, BLOCK)
    if len(block) < BLOCK or block.count(0) != BLOCK:
        raise tarfile.ReadError(f"archive ends at byte {offset} without an end-of-archive block (truncated)")
