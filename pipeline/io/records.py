"""Typed records: what travels through a shard's stage, and one dataclass per output file.

- `SampleResult` travels through a shard's stage: read -> decode -> infer -> encode -> write. Each
  step fills its fields and drops the bulky ones it consumed (`data`, `rgb`), so a batch in flight
  holds at most one copy of each image. It becomes one `ManifestRow` (manifest/NAME.parquet).
- `ShardResult` is what a worker returns for a shard; a complete one becomes the `DoneRecord`
  (_done/NAME.json).
- `DatasetMeta` is dataset.json.

Every writer and reader of these files (stage, runner, verify, evaluation, training, report, the
test fixtures) goes through these classes; the JSON documents stay byte-identical to the ones
written before the classes existed (schemas/ describes them). `pipeline.run.lock.LockRecord` is
the same pattern for `_lock.json`.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.redact import redact_config, redact_strings, redact_text, redact_url
from pipeline.io.layout import (
    RowStatus, ShardStatus, conf_member, label_member, manifest_path, mask_shard_path,
)

OK = RowStatus.OK
ERROR = RowStatus.ERROR
DONE_SCHEMA_VERSION = 1
DATASET_SCHEMA_VERSION = 1


class SampleError(Exception):
    """A sample that cannot be labeled; becomes an `error` row `"KIND: message"`, never stops a shard."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class SampleResult:
    key: str  # WebDataset __key__
    sample_index: int  # 0-based position in its input shard
    source_shard: str  # input shard URL as given
    image_member: Optional[str] = None  # extension of the image member used; None when there was none
    data: Optional[bytes] = field(default=None, repr=False)  # encoded image (dropped after decoding)
    rgb: Optional[np.ndarray] = field(default=None, repr=False)  # (H, W, 3) uint8 (dropped after inference)
    source_mode: Optional[str] = None  # Pillow mode before conversion to RGB
    error: Optional[SampleError] = None
    width: Optional[int] = None
    height: Optional[int] = None
    label_png: Optional[bytes] = field(default=None, repr=False)
    conf_png: Optional[bytes] = field(default=None, repr=False)
    mean_confidence: Optional[float] = None
    ignored_pixels: Optional[int] = None
    classes: Optional[list[int]] = None
    class_pixels: Optional[list[int]] = None
    labeled_at: Optional[dt.datetime] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, error: SampleError) -> None:
        self.error = error
        self.data = None
        self.rgb = None

    def label_member(self) -> str:
        return label_member(self.key)

    def conf_member(self) -> str:
        return conf_member(self.key)

    def to_row(self, mask_shard: str) -> "ManifestRow":
        """Its manifest row (schemas/manifest-v1.json)."""
        ok = self.ok
        return ManifestRow(
            key=self.key,
            sample_index=self.sample_index,
            source_shard=redact_url(self.source_shard),  # no user:password or presigned query
            image_member=self.image_member,
            status=OK if ok else ERROR,
            error=None if ok else redact_text(str(self.error)),
            width=self.width,
            height=self.height,
            mask_shard=mask_shard if ok else None,
            label_member=self.label_member() if ok else None,
            conf_member=self.conf_member() if ok else None,
            mean_confidence=self.mean_confidence if ok else None,
            ignored_pixels=self.ignored_pixels if ok else None,
            classes=self.classes if ok else None,
            class_pixels=self.class_pixels if ok else None,
            labeled_at=self.labeled_at or dt.datetime.now(dt.timezone.utc),
        )


@dataclass
class ManifestRow:
    """One row of manifest/NAME.parquet, fields in schema order (schemas/manifest-v1.json)."""

    key: str
    sample_index: int
    source_shard: str
    image_member: Optional[str]
    status: str  # RowStatus
    error: Optional[str]  # "KIND: message" (ErrorKind); None when ok
    width: Optional[int] = None
    height: Optional[int] = None
    mask_shard: Optional[str] = None  # masks/NAME.tar; None when error
    label_member: Optional[str] = None
    conf_member: Optional[str] = None
    mean_confidence: Optional[float] = None
    ignored_pixels: Optional[int] = None
    classes: Optional[list[int]] = None
    class_pixels: Optional[list[int]] = None
    labeled_at: Optional[dt.datetime] = None

    def to_dict(self) -> dict[str, Any]:
        # Not `asdict`: that deep-copies the lists of every row for nothing.
        return {name: getattr(self, name) for name in _MANIFEST_FIELDS}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> "ManifestRow":
        return cls(**{k: row[k] for k in _MANIFEST_FIELDS if k in row})


_MANIFEST_FIELDS = tuple(f.name for f in fields(ManifestRow))


@dataclass
class ShardResult:
    """What a worker returns for one shard."""

    shard: str
    source: str
    status: ShardStatus  # DONE | FAILED (complete) | UNREADABLE | CRASHED (not complete)
    samples: int = 0
    ok: int = 0
    errors: int = 0
    failure: Optional[str] = None
    started_at: str = ""
    finished_at: str = ""
    seconds: float = 0.0
    worker: str = ""
    class_pixels: list[int] = field(default_factory=list)  # per class index, over ok samples
    error_kinds: dict[str, int] = field(default_factory=dict)
    conversions: dict[str, int] = field(default_factory=dict)  # source Pillow mode -> count, non-RGB only
    members: int = 0  # tar members read: each belongs to a sample row or is counted in skipped_members
    # Members in no sample, by reason (pipeline.io.reader.SKIP_REASONS: symlink, directory, hidden, ...).
    skipped_members: dict[str, int] = field(default_factory=dict)
    # What cheap `verify` checks the outputs against without reading the input again:
    keys_sha256: str = ""  # sha256 of the sample keys in input order (pipeline.run.shard_identity)
    input_size: Optional[int] = None  # bytes of the input shard when labeled (None for streams)
    input_etag: Optional[str] = None  # its ETag (object stores) or mtime (local files)
    # Bytes of the committed manifest and mask tar: a listing of OUTPUT then shows a truncated or
    # replaced file without reading it (pipeline.run.shard_check). None in older records.
    manifest_bytes: Optional[int] = None
    mask_bytes: Optional[int] = None

    @property
    def complete(self) -> bool:
        return ShardStatus(self.status).complete


@dataclass
class DoneRecord(ShardResult):
    """`_done/NAME.json` (schemas/done-v1.json): a complete shard's result, the config fingerprint
    it was labeled under and where its files are. A field added to `ShardResult` is recorded too."""

    config_fingerprint: str = ""  # since content fingerprints: the same as `fingerprint` (kept for v1 readers)
    mask_shard: str = ""
    manifest: str = ""
    # Content fingerprint (pipeline.identity) of the engine that labeled the shard; "" in records
    # written before it existed (their config_fingerprint hashed paths, not contents).
    fingerprint: str = ""
    schema_version: int = DONE_SCHEMA_VERSION

    @classmethod
    def of(cls, result: ShardResult, fingerprint: str) -> "DoneRecord":
        values = {f.name: getattr(result, f.name) for f in fields(ShardResult)}
        return cls(**values, config_fingerprint=fingerprint, mask_shard=mask_shard_path(result.shard),
                   manifest=manifest_path(result.shard), fingerprint=fingerprint)

    def to_dict(self) -> dict[str, Any]:
        # schema_version first, then the fields in declaration order: the order of done-v1.
        doc: dict[str, Any] = {"schema_version": self.schema_version}
        doc.update((f.name, getattr(self, f.name)) for f in fields(self) if f.name != "schema_version")
        # Secrets never leave the process (pipeline.redact): the URL loses user:password and query.
        doc["source"] = redact_url(doc["source"]) if doc.get("source") else doc.get("source")
        doc["failure"] = redact_text(doc["failure"]) if doc.get("failure") else doc.get("failure")
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "DoneRecord":
        """Tolerant of fields it does not know (written by a newer version) and of missing
        optional ones (written by an older one)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in known}
        values["status"] = ShardStatus(values.get("status", ShardStatus.DONE))
        return cls(**values)

    @classmethod
    def from_json(cls, blob: bytes | str) -> "DoneRecord":
        doc = json.loads(blob)
        if not isinstance(doc, dict):
            raise ValueError("a completion record must be a JSON object")
        return cls.from_dict(doc)


@dataclass
class VocabEntry:
    index: int
    name: str  # display name (first synonym)
    synonyms: list[str]
    color: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "synonyms": list(self.synonyms),
                "color": list(self.color)}


@dataclass
class DatasetMeta:
    """`dataset.json` (schemas/dataset-v1.json): what the labels of one OUTPUT mean and how they
    were made."""

    vocabulary: list[VocabEntry]  # by class index
    num_classes: int
    ignore_index: int  # label value of ignored pixels (255 for uint8 labels, 65535 for uint16)
    label_dtype: str  # "uint8" | "uint16"
    config: dict[str, Any] = field(default_factory=dict)
    config_fingerprint: Optional[str] = None
    model: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = DATASET_SCHEMA_VERSION
    # Content fingerprint and what it hashes (pipeline.identity.Identity.to_dict()); None/empty in
    # outputs written before content fingerprints.
    fingerprint: Optional[str] = None
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.vocabulary]

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return [e.color for e in self.vocabulary]

    @property
    def label_mode(self) -> str:
        """Pillow mode of the label PNGs."""
        return "L" if self.label_dtype == "uint8" else "I;16"

    @property
    def raw(self) -> dict[str, Any]:
        """The document as a mapping (as written)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        doc = self._base_dict()
        if self.fingerprint is not None:  # absent from older documents: they stay byte-identical
            doc["fingerprint"] = self.fingerprint
            doc["identity"] = redact_strings(self.identity)  # its `sources` are paths or URLs as given
        return doc

    def _base_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "vocabulary": [e.to_dict() for e in self.vocabulary],
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "label_dtype": self.label_dtype,
            "config": redact_config(self.config),  # io.storage_options' credentials never written
            "config_fingerprint": self.config_fingerprint,
            "model": redact_strings(self.model),  # a checkpoint URL loses user:password and query
            "versions": self.versions,
            "created_at": self.created_at,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode()

    @classmethod
    def from_json(cls, blob: bytes | str, strict: bool = False) -> "DatasetMeta":
        """Parse dataset.json; `ValueError`/`KeyError`/`TypeError` when it does not follow the layout.

        Lenient by default (readers: a missing label_dtype means uint8, a missing ignore_index the
        dtype's maximum); `strict` requires the label-format fields (verify)."""
        doc = json.loads(blob)
        if not isinstance(doc, dict):
            raise ValueError("dataset.json must be a JSON object")
        if strict:
            missing = [k for k in ("num_classes", "ignore_index", "label_dtype") if k not in doc]
            if missing:
                raise KeyError(f"dataset.json lacks {missing}")
        vocab = sorted(doc["vocabulary"], key=lambda e: int(e["index"]))
        entries = [VocabEntry(int(e["index"]), str(e["name"]), [str(s) for s in e.get("synonyms") or []],
                              tuple(int(c) for c in e["color"])) for e in vocab]  # type: ignore[misc]
        label_dtype = str(doc.get("label_dtype", "uint8"))
        if label_dtype not in ("uint8", "uint16"):
            raise ValueError(f"label_dtype {label_dtype!r} is neither uint8 nor uint16")
        num_classes = int(doc.get("num_classes", len(entries)))
        if num_classes != len(entries):
            raise ValueError(f"num_classes={num_classes} but {len(entries)} vocabulary entries")
        return cls(
            vocabulary=entries,
            num_classes=num_classes,
            ignore_index=int(doc.get("ignore_index", 255 if label_dtype == "uint8" else 65535)),
            label_dtype=label_dtype,
            config=dict(doc.get("config") or {}),
            config_fingerprint=doc.get("config_fingerprint"),
            model=dict(doc.get("model") or {}),
            versions=dict(doc.get("versions") or {}),
            created_at=str(doc.get("created_at", "")),
            schema_version=int(doc.get("schema_version", DATASET_SCHEMA_VERSION)),
            fingerprint=doc.get("fingerprint"),
            identity=dict(doc.get("identity") or {}),
        )

    def class_index(self, name_or_index: str | int) -> int:
        """Class index of a display name, a synonym, or an index given as int or digit string;
        a `UserError` when there is none."""
        if isinstance(name_or_index, (int, np.integer)) or str(name_or_index).isdigit():
            idx = int(name_or_index)
            if not 0 <= idx < self.num_classes:
                raise UserError(f"class index {idx} is outside 0..{self.num_classes - 1} of this output's vocabulary")
            return idx
        wanted = str(name_or_index).strip().lower()
        for entry in self.vocabulary:
            if wanted in (s.strip().lower() for s in [entry.name, *entry.synonyms]):
                return entry.index
        raise UserError(f"class {name_or_index!r} is not in this output's vocabulary ({', '.join(self.names)})")
