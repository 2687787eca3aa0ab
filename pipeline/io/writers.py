"""Per-shard outputs, each written to a temporary name and committed in one step.

The mask tar streams to a local temporary file while the shard is labeled (a shard's masks can be
larger than memory); the manifest is small (one row per sample) and is written whole at the end.
Tar members carry fixed metadata (`pipeline.io.tarfiles.tar_member`) so that relabeling the same
input gives byte-identical shards.
"""
from __future__ import annotations

import contextlib
import os
import tarfile
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.layout import done_path, manifest_path, mask_shard_path  # noqa: F401 - re-exported
from pipeline.io.records import ManifestRow, SampleResult
from pipeline.io.schema import manifest_schema
from pipeline.io.output_dir import OutputDir
from pipeline.io.tarfiles import TAR_FORMAT, tar_member


class MaskTarWriter:
    """Context manager: `add(result)` for every ok sample in order; committed on a clean exit only."""

    def __init__(self, storage: OutputDir, rel_path: str):
        self.storage = storage
        self.rel_path = rel_path
        self._stack = contextlib.ExitStack()
        self._tar: Optional[tarfile.TarFile] = None
        self.members = 0
        self.bytes: Optional[int] = None  # size of the committed tar (the completion record keeps it)

    def __enter__(self) -> "MaskTarWriter":
        tmp = self._stack.enter_context(self.storage.atomic_path(self.rel_path))
        # Exits run in reverse: the tar closes (end blocks written), its size is taken, then it commits.
        self._stack.callback(self._measure, tmp)
        self._tar = self._stack.enter_context(tarfile.open(tmp, mode="w", format=TAR_FORMAT))
        return self

    def add(self, result: SampleResult) -> None:
        assert self._tar is not None and result.label_png is not None and result.conf_png is not None
        self._add_member(result.label_member(), result.label_png)
        self._add_member(result.conf_member(), result.conf_png)

    def _add_member(self, name: str, data: bytes) -> None:
        self._tar.addfile(*tar_member(name, data))  # type: ignore[union-attr]
        self.members += 1

    def _measure(self, tmp: str) -> None:
        with contextlib.suppress(OSError):
            self.bytes = os.path.getsize(tmp)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # ExitStack closes the tar first, then commits (or, on an exception, drops) the temp file.
        self._stack.__exit__(exc_type, exc, tb)


def manifest_bytes(rows: Sequence[ManifestRow | Mapping[str, Any]]) -> bytes:
    """All rows of one shard as Parquet, with the explicit v1 schema (never inferred from the data)."""
    dicts = [r.to_dict() if isinstance(r, ManifestRow) else dict(r) for r in rows]
    table = pa.Table.from_pylist(dicts, schema=manifest_schema())
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue().to_pybytes()


def write_manifest(storage: OutputDir, rel_path: str, rows: Sequence[ManifestRow | Mapping[str, Any]]) -> int:
    """Commit the manifest; returns its size in bytes (the completion record keeps it)."""
    blob = manifest_bytes(rows)
    storage.write_bytes(rel_path, blob)
    return len(blob)
