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
], metadata={"pseudolabel_done_index": INDEX_VERSION})
_TYPED = [f.name for f in _SCHEMA if f.name != "extra"]


class DoneIndex:
    """Completion records by shard name, as Arrow columns."""

    def __init__(self, table: Optional[pa.Table] = None):
        self.table = table if table is not None else _SCHEMA.empty_table()
        self._names: Optional[set[str]] = None
        self.changed = False  # differs from the stored index
        self.records_read = 0  # records fetched one by one because the index lacked them

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
            yield {**extra, **row}

    def restrict(self, names: Iterable[str]) -> "DoneIndex":
        wanted = pa.array(sorted(set(names)), pa.string())
        mask = pc.is_in(self.table.column("shard"), value_set=wanted)
        out = DoneIndex(self.table.filter(mask))
        out.changed, out.records_read = self.changed, self.records_read
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


def load_done_index(storage: Storage) -> DoneIndex:
    """Every completion record under `storage` (see the module doc for the requests it makes)."""
    # Workers write records from other processes: a listing fsspec cached earlier would miss them.
    storage.fs.invalidate_cache(storage.path(DONE_DIR))
    listed = {shard_name(n, DONE_SUFFIX) for n in storage.listdir(DONE_DIR) if n.endswith(DONE_SUFFIX)}
    cached = _read_index(storage)
    stale = 0
    if cached.num_rows:
        keep = pc.is_in(cached.column("shard"), value_set=pa.array(sorted(listed), pa.string()))
        stale = cached.num_rows - int(pc.sum(keep).as_py() or 0)
        cached = cached.filter(keep)  # a record removed since (relabel that shard): gone from the index
    have = set(cached.column("shard").to_pylist())
    missing = sorted(listed - have)
    docs = read_records(storage, missing)
    index = DoneIndex(pa.concat_tables([cached, records_table(docs)]) if docs else cached)
    index.changed = bool(docs) or stale > 0
    index.records_read = len(missing)
    if missing or stale:
        log.info("completion records: %d listed, %d from the index, %d read, %d dropped from the index",
                 len(listed), len(have), len(missing), stale)
    return index


def read_records(storage: Storage, names: list[str]) -> list[dict[str, Any]]:
    """The records of `names`, read concurrently in one batched call; a record deleted meanwhile
    is skipped, an unparsable one is a UserError naming it."""
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
        except ValueError as exc:
            raise UserError(f"{storage.path(done_path(name))} is not a valid completion record ({exc}); "
                            "delete it to relabel that shard") from exc
        docs.append(doc)
    return docs


def _strip_protocol_get(blobs: dict[str, bytes], path: str) -> Optional[bytes]:
    # fsspec returns keys without the protocol for some file systems; match on the tail.
    tail = path.split("://", 1)[-1]
    for key, blob in blobs.items():
        if key.split("://", 1)[-1] == tail:
            return blob
    return None


def records_table(docs: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in _SCHEMA.names}
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
        table = pq.read_table(io.BytesIO(storage.read_bytes(INDEX_PATH)))
    except FileNotFoundError:
        return _SCHEMA.empty_table()
    except (OSError, pa.ArrowException) as exc:  # a broken cache is rebuilt from the records
        log.warning("%s is unreadable (%s); rebuilding it from the completion records",
                    storage.path(INDEX_PATH), exc)
        return _SCHEMA.empty_table()
    if (table.schema.metadata or {}).get(b"pseudolabel_done_index") != INDEX_VERSION.encode():
        return _SCHEMA.empty_table()
    try:
        return table.select(_SCHEMA.names).cast(_SCHEMA)
    except (KeyError, pa.ArrowException):
        return _SCHEMA.empty_table()
