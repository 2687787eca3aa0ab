"""The one class for an OUTPUT folder (local path or fsspec URL): read, write and lock it.

Every part that touches an OUTPUT goes through `OutputDir`: the stage writes shard outputs with it,
the runner plans and records with it, verify checks it, and evaluation, the report and the
training loader read it. Paths come from `pipeline.io.layout`, file contents from the typed
records in `pipeline.io.records`; writes are atomic (`Storage.atomic_path`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import posixpath
import re
from typing import Any, Iterable, Iterator, Mapping, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io import layout
from pipeline.io.records import DatasetMeta, DoneRecord
from pipeline.io.storage import Storage

# Columns every manifest reader relies on; checked when a manifest is loaded.
_REQUIRED_COLUMNS = (
    "key", "sample_index", "source_shard", "image_member", "status", "error",
    "mask_shard", "label_member", "conf_member", "mean_confidence", "classes", "class_pixels",
)
_READ_THREADS = 16  # object stores are slow per call: small records are read in parallel
# What `clear` may delete in each per-shard folder: the names this project writes there.
_SHARD_NAME = r"[A-Za-z0-9._+=@-]+"  # pipeline.io.shards.shard_name's alphabet
_OURS = {
    layout.DONE_DIR: re.compile(rf"^{_SHARD_NAME}{re.escape(layout.DONE_SUFFIX)}$"),
    layout.MASKS_DIR: re.compile(rf"^{_SHARD_NAME}{re.escape(layout.MASK_SUFFIX)}$"),
    layout.MANIFEST_DIR: re.compile(rf"^{_SHARD_NAME}{re.escape(layout.MANIFEST_SUFFIX)}$"),
}
_EXTRA_DIRS = ("_index",)  # pipeline.run.done_index keeps its compacted index there


class OutputDir:
    """A `pseudolabel run` output. `root` is the URL as given; relative paths follow `layout`."""

    def __init__(self, root: str, storage_options: Optional[Mapping[str, Any]] = None):
        self.root = str(root).rstrip("/") or "/"
        self.storage_options = dict(storage_options or {})
        self.storage = Storage(self.root, self.storage_options)
        self.fs = self.storage.fs
        self.is_local = self.storage.is_local
        self._meta: Optional[DatasetMeta] = None

    # -- files ----------------------------------------------------------------------------
    def url(self, rel: str) -> str:
        """Full URL/path of a file given relative to the output root (e.g. `masks/a.tar`)."""
        return f"{self.root}/{rel}"

    def path(self, rel: str) -> str:
        """The file system path of `rel` (for `self.fs`)."""
        return self.storage.path(rel)

    def exists(self, rel: str) -> bool:
        return self.storage.exists(rel)

    def read_bytes(self, rel: str) -> bytes:
        return self.storage.read_bytes(rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.storage.write_bytes(rel, data)

    def atomic_path(self, rel: str) -> contextlib.AbstractContextManager[str]:
        return self.storage.atomic_path(rel)

    def listdir(self, rel: str) -> list[str]:
        return self.storage.listdir(rel)

    def remove(self, rel: str) -> None:
        self.storage.remove(rel)

    def clean_tmp(self) -> None:
        self.storage.clean_tmp()

    def open(self, rel: str, mode: str = "rb") -> Any:
        return self.fs.open(self.path(rel), mode)

    def shard_names(self, folder: str, suffix: str) -> set[str]:
        """NAMEs of the `folder/NAME<suffix>` files."""
        return {layout.shard_name(n, suffix) for n in self.listdir(folder) if n.endswith(suffix)}

    def read_json(self, rel: str) -> Any:
        """A JSON file of the output; a `UserError` naming it when missing or invalid."""
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError as exc:
            raise UserError(f"{self.url(rel)} does not exist: is {self.root} a `pseudolabel run` output?") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.url(rel)} is not valid JSON: {exc}") from exc

    def read_json_or_none(self, rel: str) -> Optional[Any]:
        return self.read_json(rel) if self.exists(rel) else None

    # -- dataset.json ---------------------------------------------------------------------
    @property
    def info(self) -> DatasetMeta:
        """dataset.json (read once)."""
        if self._meta is None:
            self._meta = self.dataset_meta()
        return self._meta

    def dataset_meta(self, strict: bool = False) -> DatasetMeta:
        try:
            blob = self.read_bytes(layout.DATASET_JSON)
        except FileNotFoundError as exc:
            raise UserError(f"{self.url(layout.DATASET_JSON)} does not exist: is {self.root} a "
                            "`pseudolabel run` output?") from exc
        try:
            return DatasetMeta.from_json(blob, strict=strict)
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.url(layout.DATASET_JSON)} is not valid JSON: {exc}") from exc
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.url(layout.DATASET_JSON)} does not follow the documented layout: "
                            f"{exc!r}") from exc

    def dataset_meta_or_none(self) -> Optional[DatasetMeta]:
        return self.dataset_meta() if self.exists(layout.DATASET_JSON) else None

    def write_dataset_meta(self, meta: DatasetMeta) -> None:
        self.write_bytes(layout.DATASET_JSON, meta.to_json())
        self._meta = meta

    # -- completion records ---------------------------------------------------------------
    def done_record(self, name: str) -> Optional[DoneRecord]:
        """`_done/NAME.json`, or None when the shard is not complete."""
        rel = layout.done_path(name)
        try:
            blob = self.read_bytes(rel)
        except FileNotFoundError:
            return None
        try:
            return DoneRecord.from_json(blob)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.url(rel)} is not a valid completion record ({exc}); `pseudolabel run` "
                            "relabels that shard (run/shard_check.py)") from exc

    def done_records(self, names: Iterable[str]) -> dict[str, DoneRecord]:
        """Completion records of the given shards that are complete (one listing, parallel reads)."""
        present = self.shard_names(layout.DONE_DIR, layout.DONE_SUFFIX)
        wanted = [n for n in names if n in present]
        with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
            records = list(pool.map(self.done_record, wanted))
        return {n: r for n, r in zip(wanted, records) if r is not None}

    def write_done(self, record: DoneRecord) -> None:
        """Written last for a shard: its presence is what makes the shard complete."""
        self.write_bytes(layout.done_path(record.shard), record.to_json())

    # -- manifests ------------------------------------------------------------------------
    def manifest_files(self) -> list[str]:
        """Manifest file names relative to the root, sorted (`manifest/NAME.parquet`)."""
        names = self.shard_names(layout.MANIFEST_DIR, layout.MANIFEST_SUFFIX)
        return sorted(layout.manifest_path(n) for n in names)

    def load_manifest(self, columns: Optional[Iterable[str]] = None, workers: int = 16) -> pd.DataFrame:
        """All manifest rows of the output, with an added `shard` column (the NAME of NAME.parquet).

        `columns`: read only these (plus `shard`); the files are read in parallel (object stores
        are slow per request) and joined as Arrow before one conversion to pandas."""
        files = self.manifest_files()
        if not files:
            raise UserError(f"no manifest/*.parquet under {self.root}: has `pseudolabel run` finished any shard?")
        wanted = list(dict.fromkeys(columns)) if columns is not None else None
        need = [c for c in _REQUIRED_COLUMNS if wanted is None or c in wanted]

        def read(rel: str) -> Any:
            with self.open(rel) as f:
                table = pq.read_table(f, columns=wanted)
            missing = [c for c in need if c not in table.column_names]
            if missing:
                raise UserError(f"{self.url(rel)} lacks manifest columns {missing}: not a manifest-v1 file")
            name = layout.shard_name(posixpath.basename(rel), layout.MANIFEST_SUFFIX)
            return table.append_column("shard", pa.array([name] * table.num_rows, pa.string()))

        with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(files)))) as pool:
            tables = list(pool.map(read, files))
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()

    # -- the run lock ---------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, *, break_lock: bool = False, stale_after_s: Optional[float] = None) -> Iterator[Any]:
        """Hold `_lock.json` (`pipeline.run.lock.RunLock`) while the block runs; yields the lock.

        Raises `LockHeldError` at the end when another run took the lock over part way, so a run
        that lost its lock never reports success."""
        from pipeline.run.lock import RunLock  # the lock's heartbeat thread is run machinery

        self.check_folders()  # before anything is written: a planted symlinked folder is refused
        with RunLock(self.root, self.storage_options, stale_after_s, break_lock=break_lock) as lock:
            yield lock
            lock.check()

    def check_folders(self) -> None:
        """Refuse (one-line `UserError`) a local OUTPUT whose per-run folders are symlinks: a
        planted `OUTPUT/masks -> elsewhere` would make a run write, list and delete elsewhere."""
        for sub in (*layout.SHARD_DIRS, layout.TMP_DIR, *_EXTRA_DIRS):
            self.storage.refuse_links(sub)

    def clear(self, extra_files: Iterable[str] = ()) -> None:
        """Remove every output of previous runs (`--overwrite`), completion records first.

        Only files this project writes, by their name patterns (`masks/NAME.tar`, ...), under the
        real OUTPUT (no symlinked folder): anything else a colleague put there stays. `extra_files`:
        more relative paths of ours (the runner's done index)."""
        self.check_folders()
        for sub in layout.SHARD_DIRS:
            pattern = _OURS[sub]
            for name in self.listdir(sub):
                if pattern.match(name):
                    self.remove(f"{sub}/{name}")
        for name in (*layout.RUN_FILES, *extra_files):
            self.remove(name)
