"""Versioned output formats. The JSON files in `schemas/` are the source of truth; this module
turns them into explicit `pyarrow.Schema`s so no writer ever infers a schema from its first batch."""
from __future__ import annotations

import functools
import json

import pyarrow as pa

from pipeline.resources import schemas_dir

SCHEMA_DIR = schemas_dir()
MANIFEST_VERSION = 1

_SCALARS = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp[ms, UTC]": pa.timestamp("ms", tz="UTC"),
}


def _arrow_type(name: str) -> pa.DataType:
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(_arrow_type(name[5:-1]))
    try:
        return _SCALARS[name]
    except KeyError as exc:
        raise ValueError(f"schema type {name!r} is not one of {sorted(_SCALARS)} or list<...>") from exc


@functools.lru_cache(maxsize=None)
def schema_spec(name: str, version: int) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}-v{version}.json").read_text())


@functools.lru_cache(maxsize=None)
def manifest_schema(version: int = MANIFEST_VERSION) -> pa.Schema:
    spec = schema_spec("manifest", version)
    fields = [pa.field(f["name"], _arrow_type(f["type"]), nullable=f["nullable"]) for f in spec["fields"]]
    return pa.schema(fields, metadata={b"schema": b"manifest", b"version": str(version).encode()})
