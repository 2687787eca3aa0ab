"""The completion records of an OUTPUT, from one listing and one compacted index, not N reads.

`_done/NAME.json` stays the truth (a shard is complete exactly when its record exists); the index
`_index/done.parquet` is a cache of the records' contents, one row per shard, written at the end of
each run. Loading lists `_done/` (one request per 1,000 names on S3), reads the index (one GET),
keeps the index rows whose record is still listed and reads only the records the index does not
have yet, all in one concurrent batched call (fsspec `cat` of many paths). A no-op resume of
100,000 complete shards is ~100 LIST pages and one GET, instead of 100,000 GETs; a run killed
before it wrote the index costs one batched read of the records it finished.

`DoneIndex` answers what the runner asks of its records (`in`, `len`, `values()`), with the rows
kept as Arrow columns, not one dict per shard.

Each row also keeps the record file's listing stamp ("size:ETag-or-mtime") from when it was read:
a record rewritten or damaged since (another size or ETag/mtime in the listing) is read again, not
trusted from the index. A record that cannot be parsed, or names another shard, is not complete:
it lands in `DoneIndex.unreadable` (name -> why) and the runner relabels that shard.
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io.layout import DONE_DIR, DONE_SUFFIX, done_path, shard_name
from pipeline.io.storage import Storage

log = logging.getLogger(__name__)

INDEX_PATH = "_index/done.parquet"
INDEX_VERSION = "1"
# Typed columns; every other record field travels in `extra` (JSON text), so fields added to the
# record later need no index change.
_SCHEMA = pa.schema([
    ("shard", pa.string()), ("status", pa.string()), ("samples", pa.int64()), ("ok", pa.int64()),
    ("errors", pa.int64()), ("failure", pa.string()), ("started_at", pa.string()),
    ("finished_at", pa.string()), ("worker", pa.string()), ("config_fingerprint", pa.string()),
    ("class_pixels", pa.list_(pa.int64())), ("extra", pa.string()),
    ("listed", pa.string()),  # the record file's "size:tag" when it was read (null: an older index)
], metadata={"pseudolabel_done_index": INDEX_VERSION})
_TYPED = [f.name for f in _SCHEMA if f.name not in ("extra", "listed")]


class DoneIndex:
    """Completion records by shard name, as Arrow columns."""

    def __init__(self, table: Optional[pa.Table] = None):
        self.table = table if table is not None else _SCHEMA.empty_table()
        self._names: Optional[set[str]] = None
        self.changed = False  # differs from the stored index
        self.records_read = 0  # records fetched one by one because the index lacked them
        self.unreadable: dict[str, str] = {}  # listed records that do not parse: name -> why

    @property
    def names(self) -> set[str]:
        if self._names is None:
            self._names = set(self.table.column("shard").to_pylist())
        return self._names

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return self.table.num_rows

    def __bool__(self) -> bool:
        return self.table.num_rows > 0

    def values(self) -> Iterator[dict[str, Any]]:
        """One record dict per shard (made on the fly from the columns)."""
        for row in self.table.to_pylist():
            extra = json.loads(row.pop("extra") or "{}")
            row.pop("listed", None)
            yield {**extra, **row}

    def restrict(self, names: Iterable[str]) -> "DoneIndex":
        keep = set(names)
        wanted = pa.array(sorted(keep), pa.string())
        mask = pc.is_in(self.table.column("shard"), value_set=wanted)
        out = DoneIndex(self.table.filter(mask))
        out.changed, out.records_read = self.changed, self.records_read
        out.unreadable = {n: why for n, why in self.unreadable.items() if n in keep}
        return out

    def without(self, names: Iterable[str]) -> "DoneIndex":
        """These records dropped (shards about to be relabeled)."""
        drop = pa.array(sorted(set(names)), pa.string())
        mask = pc.invert(pc.is_in(self.table.column("shard"), value_set=drop))
        out = DoneIndex(self.table.filter(mask))
        out.changed, out.records_read, out.unreadable = self.changed, self.records_read, dict(self.unreadable)
        return out

    def totals(self) -> tuple[int, int, int]:
        """Samples, ok and error rows over every record (vectorised)."""
        def total(col: str) -> int:
            return int(pc.sum(self.table.column(col)).as_py() or 0)
        return total("samples"), total("ok"), total("errors")

    def save(self, storage: Storage) -> None:
        buf = io.BytesIO()
        pq.write_table(self.table.sort_by("shard"), buf, compression="zstd")
        storage.write_bytes(INDEX_PATH, buf.getvalue())
        self.changed = False


def load_done_index(storage: Storage, listed: Optional[dict[str, str]] = None) -> DoneIndex:
    """Every completion record under `storage` (see the module doc for the requests it makes).
    `listed`: the `_done/` listing (name -> stamp) when the caller already has one."""
    if listed is None:
        listed = list_records(storage)
    cached = _read_index(storage)
    stale = 0
    if cached.num_rows:
        names = cached.column("shard").to_pylist()
        stamps = cached.column("listed").to_pylist()
        # Kept: rows whose record is still listed with the stamp it had when read (an older index
        # without stamps adopts the current ones). A record removed since (relabel that shard) or
        # rewritten since (relabeled, edited, truncated) leaves the index and is read again.
        keep = [n in listed and (s is None or s == listed[n]) for n, s in zip(names, stamps)]
        stale = len(keep) - sum(keep)
        adopted = sum(1 for n, s, k in zip(names, stamps, keep) if k and s is None)
        cached = cached.filter(pa.array(keep, pa.bool_()))
        if adopted:
            cached = cached.set_column(cached.schema.get_field_index("listed"), "listed",
                                       pa.array([listed[n] for n in cached.column("shard").to_pylist()],
                                                pa.string()))
            stale += adopted  # not stale, but the index changed: save it with the stamps
    have = set(cached.column("shard").to_pylist())
    missing = sorted(set(listed) - have)
    unreadable: dict[str, str] = {}
    docs = _read_named(storage, missing, unreadable)
    table = records_table([d for _, d in docs], [listed[n] for n, _ in docs])
    index = DoneIndex(pa.concat_tables([cached, table]) if docs else cached)
    index.changed = bool(docs) or stale > 0
    index.records_read = len(missing)
    index.unreadable = unreadable
    if missing or stale:
        log.info("completion records: %d listed, %d from the index, %d read, %d dropped from the index",
                 len(listed), len(have), len(missing), stale)
    for name, why in sorted(unreadable.items())[:5]:
        log.warning("completion record of shard %s does not check (%s): the shard is not complete", name, why)
    return index


def list_records(storage: Storage) -> dict[str, str]:
    """`_done/` in one (paginated) listing: shard name -> "size:ETag-or-mtime" of its record."""
    from pipeline.run.shard_check import list_files

    return {shard_name(base, DONE_SUFFIX): f"{size}:{tag}"
            for base, size, tag in list_files(storage.fs, storage.path(DONE_DIR)) if base.endswith(DONE_SUFFIX)}


def read_records(storage: Storage, names: list[str]) -> list[dict[str, Any]]:
    """The records of `names`, read concurrently in one batched call; a record deleted meanwhile
    is skipped, an unparsable one is a UserError naming it."""
    bad: dict[str, str] = {}
    docs = [d for _, d in _read_named(storage, names, bad)]
    if bad:
        name, why = sorted(bad.items())[0]
        raise UserError(f"{storage.path(done_path(name))} is not a valid completion record ({why}); "
                        "`pseudolabel run` relabels that shard")
    return docs


def _read_named(storage: Storage, names: list[str], bad: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, record) of `names`, read in one batched call; a record that does not parse, or that
    names another shard, goes to `bad` (name -> why) instead; one deleted meanwhile is skipped."""
    if not names:
        return []
    paths = [storage.path(done_path(n)) for n in names]
    blobs = storage.fs.cat(paths, on_error="omit")  # s3fs/gcsfs: concurrent requests, in batches
    docs = []
    for name, path in zip(names, paths):
        blob = blobs.get(path)
        if blob is None:
            blob = _strip_protocol_get(blobs, path)
        if blob is None:
            continue
        try:
            doc = json.loads(blob)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            bad[name] = f"unreadable: {str(exc)[:120]}"
            continue
        if doc.get("shard") != name:
            bad[name] = f"names shard {doc.get('shard')!r}"
            continue
        docs.append((name, doc))
    return docs


def _strip_protocol_get(blobs: dict[str, bytes], path: str) -> Optional[bytes]:
    # fsspec returns keys without the protocol for some file systems; match on the tail.
    tail = path.split("://", 1)[-1]
    for key, blob in blobs.items():
        if key.split("://", 1)[-1] == tail:
            return blob
    return None


def records_table(docs: list[dict[str, Any]], stamps: Optional[list[Optional[str]]] = None) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in _SCHEMA.names}
    cols["listed"] = list(stamps) if stamps is not None else [None] * len(docs)
    for doc in docs:
        for name in _TYPED:
            value = doc.get(name)
            if name == "class_pixels":
                value = [int(v) for v in value or []]
            elif name in ("samples", "ok", "errors"):
                value = int(value or 0)
            elif value is not None:
                value = str(value)
            cols[name].append(value)
        cols["extra"].append(json.dumps({k: v for k, v in doc.items() if k not in _TYPED}, sort_keys=True))
    return pa.table(cols, schema=_SCHEMA)


def _read_index(storage: Storage) -> pa.Table:
    try:
        # use_threads=False: Arrow's reader threads outliving the call made short-lived readers
        # (`pseudolabel progress`) abort at exit, "terminate called without an active exception",
        # rc 134, in 3 of 165 runs (0 of 136 single-threaded); the index is small.
        table = pq.read_table(io.BytesIO(storage.read_bytes(INDEX_PATH)), use_threads=False)
    except FileNotFoundError:
        return _SCHEMA.empty_table()
    except (OSError, pa.ArrowException) as exc:  # a broken cache is rebuilt from the records
        log.warning("%s is unreadable (%s); rebuilding it from the completion records",
                    storage.path(INDEX_PATH), exc)
        return _SCHEMA.empty_table()
    if (table.schema.metadata or {}).get(b"pseudolabel_done_index") != INDEX_VERSION.encode():
        return _SCHEMA.empty_table()
    if "listed" not in table.column_names:  # an index written before stamps: adopts the listing's
        table = table.append_column("listed", pa.nulls(table.num_rows, pa.string()))
    try:
        return table.select(_SCHEMA.names).cast(_SCHEMA)
    except (KeyError, pa.ArrowException):
        return _SCHEMA.empty_table()
