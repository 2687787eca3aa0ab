"""Iterate the samples of one WebDataset tar shard, robustly.

Members are grouped into samples the WebDataset way: the key is the member path up to the first
dot of its file name, the extension is the rest, and consecutive members with the same key form
one sample. Only the image member is kept (the first of io.image_extensions present, in that
order of preference); other members are skipped without being held in memory.

Tar-level problems never raise out of `iter_samples`: they end the iteration and are recorded in
the `ReadReport`. Samples read before the problem are yielded as usual; the sample being read
when the tar broke becomes a `truncated_tar` error row unless its image member was read whole.
Python's `tarfile` treats an archive cut exactly at a header as a normal end, so a clean end is
confirmed by looking for the end-of-archive zero block ourselves.
"""
from __future__ import annotations

import bz2
import collections
import gzip
import lzma
import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Iterator, Optional

from pipeline.io.records import SampleError, SampleResult
from pipeline.io.storage import open_input

TRUNCATED_TAR = "truncated_tar"
DUPLICATE_KEY = "duplicate_key"
BLOCK = 512
# Everything a broken or unreachable stream can raise while being read or decompressed.
STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


@dataclass
class ReadReport:
    members: int = 0  # regular-file members seen
    samples: int = 0  # samples yielded
    failure: Optional[str] = None  # why the tar could not be read to its end; None when it was

    @property
    def unreadable(self) -> bool:
        """Failed before a single member: nothing of the shard could be read."""
        return self.failure is not None and self.members == 0


@dataclass
class _Pending:
    key: str
    index: int
    ext: Optional[str] = None
    data: Optional[bytes] = None
    rank: int = 1 << 30  # preference of the kept image extension (lower is better)
    broken: bool = False  # a member of this sample was cut off by the end of the data


@dataclass
class _Shape:
    extensions: list[str]
    seen: set[str] = field(default_factory=set)


def iter_samples(url: str, extensions: list[str], report: ReadReport,
                 options: Optional[dict[str, Any]] = None) -> Iterator[SampleResult]:
    """Yield one SampleResult per sample of the shard at `url`, in order; fill `report` as it goes."""
    shape = _Shape([e.lower().lstrip(".") for e in extensions])
    pending: Optional[_Pending] = None
    try:
        with open_input(url, options) as raw:
            stream = _TailTracker(_decompressed(raw))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    report.members += 1
                    key, ext = split_member_name(member.name)
                    if key is None:
                        continue
                    if pending is not None and key != pending.key:
                        yield _finish(pending, url, shape, report)
                        pending = None
                    if pending is None:
                        pending = _Pending(key, report.samples)
                    _read_member(tar, member, ext, pending, shape)
                _check_end(stream, tar.offset)
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


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, ext: str, pending: _Pending, shape: _Shape) -> None:
    ext = ext.lower()
    if ext not in shape.extensions:
        return  # skipped: tarfile reads past its data when asked for the next member
    rank = shape.extensions.index(ext)
    if rank >= pending.rank:
        return
    f = tar.extractfile(member)
    if f is None:
        return
    try:
        data = f.read()
    except STREAM_ERRORS:
        pending.broken = True
        raise
    pending.ext, pending.data, pending.rank = ext, data, rank


def _finish(pending: _Pending, url: str, shape: _Shape, report: ReadReport) -> SampleResult:
    result = SampleResult(key=pending.key, sample_index=pending.index, source_shard=url,
                          image_member=pending.ext, data=pending.data)
    report.samples += 1
    if pending.broken:
        result.fail(SampleError(TRUNCATED_TAR, "the shard ended inside this sample"))
    elif pending.key in shape.seen:
        # Two samples with one key would collide in the mask shard; the first one wins.
        result.fail(SampleError(DUPLICATE_KEY, f"key {pending.key!r} already appeared earlier in this shard"))
    elif pending.data is None:
        result.fail(SampleError("no_image", f"no member with extension {'/'.join(shape.extensions)}"))
    shape.seen.add(pending.key)
    return result


def _check_end(stream: "_TailTracker", offset: int) -> None:
    block = stream.bytes_at(offset, BLOCK)
    if len(block) < BLOCK or block.count(0) != BLOCK:
        raise tarfile.ReadError(f"archive ends at byte {offset} without an end-of-archive block (truncated)")


def _decompressed(raw: IO[bytes]) -> Any:
    """Undo gzip/bz2/xz here rather than in tarfile, so offsets seen by _TailTracker are tar offsets."""
    head = raw.read(6)
    stream = _Prefixed(head, raw)  # fsspec and pipe streams cannot all peek: put the head back
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(stream, mode="rb")
    return stream


class _Prefixed:
    """A read-only stream that first returns `head`, then the rest of `raw`."""

    def __init__(self, head: bytes, raw: IO[bytes]):
        self.head, self.raw = head, raw

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n is None or n < 0:
            out, self.head = self.head + self.raw.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out


class _TailTracker:
    """Read-through wrapper remembering the last few chunks with their offsets."""

    def __init__(self, raw: Any, keep: int = 6):
        self.raw = raw
        self.pos = 0
        self.chunks: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=keep)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.chunks.append((self.pos, data))
            self.pos += len(data)
        return data

    def bytes_at(self, offset: int, n: int) -> bytes:
        """Bytes [offset, offset + n) of the stream, as far as they were read and are still kept;
        reads on when the stream has not got that far yet."""
        while self.pos < offset + n and self.read(max(n, 1 << 16)):
            pass
        out = bytearray()
        for start, data in self.chunks:
            lo, hi = max(offset, start), min(offset + n, start + len(data))
            if lo < hi:
                out += data[lo - start:hi - start]
        return bytes(out)
