"""The byte stream a tar shard is read through: typed transport errors, bounded reads, cheap skips.

`tarfile`'s stream mode (`r|`) skips a member's data by reading it block by block and keeps
going after the end of the data, so a header that declares 10^15 bytes makes it spin for ever.
Here tarfile runs in its random-access mode on top of a `Cursor`, which

- skips forward by seeking the input when the input can seek (a local file, an object-store or
  HTTP file with a known size), else by reading and dropping 1 MiB chunks until the skip is done
  or the data ends: bounded by the bytes really there, never by what a header claims;
- refuses any single read larger than `max_read` (what a header may declare), so a hostile PAX or
  GNU long-name header cannot make it hold gigabytes;
- keeps the last few KiB it returned, for the one-byte step back tarfile takes to probe for the
  end of data and for the end-of-archive check;
- refuses any read tarfile makes for a header record (PAX extended header, GNU long name) larger
  than MAX_HEADER_BYTES, before reading it: a 20 MiB "key" never reaches memory;
- stops a compressed shard that expands more than `max_expansion` times its compressed bytes read
  so far (past a MIN_INFLATED_BYTES allowance): a 14 KB bzip2 bomb costs milliseconds, not the
  minutes of decompressing a GiB. Each of these is a `tarfile.ReadError`: the shard's failure.

`Source` sits under any decompressor: everything the input itself raises while being read (a
dropped connection, an HTTP payload error, a timeout, EIO) becomes a `TransientReadError`, which
the tar parser above does not mistake for a truncated archive.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from typing import IO, Any, Optional

from pipeline.errors import TransientReadError

CHUNK = 1 << 20  # largest single read from the input while skipping or reading a big member
KEEP = 1 << 12  # bytes kept behind the position: tarfile steps back 1, the end check 512
# A PAX header or GNU long name holds a path and a few attributes: KiBs. 1 MiB is far above any
# real one and bounds what one hostile header can make us hold.
MAX_HEADER_BYTES = 1 << 20
# Images in a tar barely compress (JPEG/PNG/WebP are compressed already): a gzip/bzip2/xz shard
# expanding more than this is a bomb. io.max_expansion_ratio; 0 = no limit.
DEFAULT_MAX_EXPANSION = 100.0
MIN_INFLATED_BYTES = 64 << 20  # always allowed, whatever the ratio (small shards of tiny files pad a lot)


def _size(raw: Any) -> Optional[int]:
    """The input's length when it can seek (fsspec files know it without a request), else None."""
    try:
        if not raw.seekable():
            return None
        here = raw.tell()
        end = raw.seek(0, 2)
        raw.seek(here)
        return int(end)
    except Exception:  # noqa: BLE001 - an input that cannot say is read forward only
        return None


class Source:
    """The raw input, read forward only; `head` bytes can be peeked (compression sniffing)."""

    def __init__(self, raw: IO[bytes], url: str, typed_errors: bool = True):
        self.raw, self.url = raw, url
        self.typed_errors = typed_errors  # False: the input's own exceptions pass through unchanged
        self.pos = 0  # bytes consumed by readers of this object (= the raw position once `head` is empty)
        self.size = _size(raw)  # None: not seekable
        self._head = b""

    def peek(self, n: int) -> bytes:
        while len(self._head) < n:
            more = self._raw_read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head[:n]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK  # decompressors ask for "all"; hand out bounded pieces, they loop
        out, self._head = self._head[:n], self._head[n:]
        if len(out) < n:
            out += self._raw_read(n - len(out))
        self.pos += len(out)
        return out

    def skip(self, n: int) -> bool:
        """Move `n` bytes forward by seeking; False when this input cannot (the caller reads)."""
        if self.size is None or self._head:
            return False
        try:
            # Never past the end (some files refuse offsets beyond their file system's limit);
            # reads there return b"" all the same.
            self.raw.seek(min(self.pos + n, self.size))
        except Exception as exc:  # noqa: BLE001 - any failure of the input itself is transport
            if not self.typed_errors:
                raise
            raise TransientReadError(f"seeking in {self.url} at byte {self.pos} failed: "
                                     f"{type(exc).__name__}: {exc}; the shard is retried") from exc
        self.pos += n
        return True

    def _raw_read(self, n: int) -> bytes:
        try:
            return self.raw.read(n)
        except Exception as exc:  # noqa: BLE001 - any failure of the input itself is transport
            if not self.typed_errors:
                raise
            raise TransientReadError(f"reading {self.url} failed at byte {self.pos}: "
                                     f"{type(exc).__name__}: {exc}; the shard is retried") from exc


class Cursor:
    """The file object tarfile reads in `r:` mode: read, tell, seek (forward anywhere, back a little)."""

    def __init__(self, stream: Any, max_read: int, source: Optional[Source] = None,
                 compressed: Optional[Source] = None, max_expansion: float = DEFAULT_MAX_EXPANSION):
        self.stream = stream  # a Source, or a decompressor reading one
        self.source = source  # set when `stream` is the Source itself: skips may seek
        self.compressed = compressed  # set when `stream` decompresses this Source: expansion is bounded
        self.max_expansion = max_expansion
        self.max_read = max_read
        self.reading_member = False  # member_bytes reads data (max_read); otherwise tarfile reads headers
        self.inflated = 0  # bytes taken from the decompressor
        self.pos = 0
        self.eof = False
        self._behind = b""  # the last bytes before pos
        self._ahead = b""  # bytes after pos taken from the stream already (after a step back)

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.max_read:
            raise tarfile.ReadError(f"the tar asks for a read of {n} bytes at byte {self.pos}, more than "
                                    f"the {self.max_read} allowed (io.max_member_bytes)")
        if n > MAX_HEADER_BYTES and not self.reading_member:
            raise tarfile.ReadError(f"a tar header record (PAX extended header or GNU long name) of {n} bytes at "
                                    f"byte {self.pos}: more than the {MAX_HEADER_BYTES} allowed; not read")
        parts, have = [self._ahead[:n]], len(self._ahead[:n])
        self._ahead = self._ahead[n:]
        while have < n and not self.eof:
            chunk = self._pull(min(n - have, CHUNK))
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        out = b"".join(parts)
        self.pos += len(out)
        self._behind = (self._behind + out[-KEEP:])[-KEEP:]
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.pos + offset
        if whence not in (0, 1) or target < 0:
            raise tarfile.ReadError(f"unsupported seek to {offset} (whence {whence}) in a tar stream")
        if target < self.pos:
            self._back(self.pos - target)
        elif target > self.pos:
            self._forward(target - self.pos)
        return self.pos

    def _back(self, n: int) -> None:
        if n > len(self._behind):
            raise tarfile.ReadError(f"cannot step back {n} bytes in a tar stream at byte {self.pos}")
        self._ahead = self._behind[-n:] + self._ahead
        self._behind = self._behind[:-n]
        self.pos -= n

    def _forward(self, n: int) -> None:
        held = min(n, len(self._ahead))
        self._behind = (self._behind + self._ahead[:held])[-KEEP:]
        self._ahead, self.pos, n = self._ahead[held:], self.pos + held, n - held
        if n == 0:
            return
        self._behind = b""  # what lies before the new position was never seen
        if not self.eof and self.source is not None and self.source.skip(n):
            self.pos += n  # past the end is fine: the next read returns b""
            return
        while n > 0 and not self.eof:
            chunk = self._pull(min(n, CHUNK))
            if not chunk:
                self.eof = True
                break
            n -= len(chunk)
            self.pos += len(chunk)
            self._behind = (self._behind + chunk[-KEEP:])[-KEEP:]

    def _pull(self, n: int) -> bytes:
        """Up to `n` bytes from the stream; a decompressor's output is bounded by its input."""
        chunk = self.stream.read(n)
        if self.compressed is not None and self.max_expansion > 0:
            self.inflated += len(chunk)
            allowed = max(MIN_INFLATED_BYTES, self.max_expansion * self.compressed.pos)
            if self.inflated > allowed:
                raise tarfile.ReadError(
                    f"the compressed shard expands more than {self.max_expansion:g}x ({self.inflated} bytes from "
                    f"{self.compressed.pos} read): a decompression bomb? (io.max_expansion_ratio); stopped")
        return chunk

    def bytes_at(self, offset: int, n: int) -> bytes:
        """Bytes [offset, offset + n): a step back within what was kept, or a read ahead."""
        self.seek(offset)
        return self.read(n)


def open_cursor(raw: Any, url: str, max_read: int, typed_errors: bool = True,
                max_expansion: float = DEFAULT_MAX_EXPANSION) -> Cursor:
    """A cursor over the tar in `raw`, gzip/bz2/xz undone here rather than in tarfile so that the
    cursor's offsets are tar offsets. Open the tar with `tarfile.open(fileobj=cursor, mode="r:")`."""
    source = Source(raw, url, typed_errors)
    head = source.peek(6)
    if head.startswith(b"\x1f\x8b"):
        stream: Any = gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[arg-type]
    elif head.startswith(b"BZh"):
        stream = bz2.BZ2File(source, mode="rb")  # type: ignore[arg-type]
    elif head.startswith(b"\xfd7zXZ\x00"):
        stream = lzma.LZMAFile(source, mode="rb")  # type: ignore[arg-type]
    else:
        return Cursor(source, max_read, source)
    return Cursor(stream, max_read, compressed=source, max_expansion=max_expansion)


def members(tar: tarfile.TarFile) -> Any:
    """tarfile's headers one by one, without the list of every header tarfile keeps (a shard may
    have millions of members)."""
    while (member := tar.next()) is not None:
        tar.members.clear()
        yield member


def member_bytes(cursor: Cursor, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The data of a regular member, read in one piece (its size was checked by the caller)."""
    cursor.reading_member = True  # member data: bounded by max_read, not by MAX_HEADER_BYTES
    try:
        if member.issparse():
            f = tar.extractfile(member)  # holes to fill in: let tarfile assemble it
            return f.read() if f is not None else b""
        cursor.seek(member.offset_data)
        data = cursor.read(member.size)
    finally:
        cursor.reading_member = False
    if len(data) != member.size:
        raise tarfile.ReadError(f"unexpected end of data in member {member.name} "
                                f"({len(data)} of {member.size} bytes)")
    return data
