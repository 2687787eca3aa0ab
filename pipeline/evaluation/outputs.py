"""Read a finished `pseudolabel run` output directory through its documented format only.

The layout (README "Output layout", schemas/): `dataset.json`, `manifest/NAME.parquet` (schema manifest-v1) and
`masks/NAME.tar` holding `KEY.label.png` + `KEY.conf.png` for every ok sample. Nothing here
imports the writer: evaluation, the report and the training loader all read through this module.

Paths may be local or any fsspec URL (s3://...). Tar files are streamed (`r|`), never seeked, and
a reader stops as soon as it has every member it was asked for.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, TypeVar

import fsspec
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from pipeline.errors import UserError
from pipeline.io.tarfiles import iter_members

log = logging.getLogger(__name__)

T = TypeVar("T")

# Columns every reader here relies on; checked when a manifest is loaded.
_REQUIRED_COLUMNS = (
    "key", "sample_index", "source_shard", "image_member", "status", "error",
    "mask_shard", "label_member", "conf_member", "mean_confidence", "classes", "class_pixels",
)


@dataclass
class DatasetInfo:
    """The parts of `OUTPUT/dataset.json` that readers need (the whole file stays in `raw`)."""

    names: list[str]  # class index -> display name
    colors: list[tuple[int, int, int]]  # class index -> RGB
    num_classes: int
    ignore_index: int  # label value of ignored pixels (255 for uint8 labels, 65535 for uint16)
    label_dtype: str  # "uint8" | "uint16"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def class_index(self, name_or_index: str | int) -> int:
        """Class index of a display name, a synonym, or an index given as int or digit string."""
        if isinstance(name_or_index, (int, np.integer)) or str(name_or_index).isdigit():
            idx = int(name_or_index)
            if not 0 <= idx < self.num_classes:
                raise UserError(f"class index {idx} is outside 0..{self.num_classes - 1} of this output's vocabulary")
            return idx
        wanted = str(name_or_index).strip().lower()
        for entry in self.raw.get("vocabulary", []):
            spellings = [entry.get("name", "")] + list(entry.get("synonyms") or [])
            if wanted in (s.strip().lower() for s in spellings):
                return int(entry["index"])
        raise UserError(f"class {name_or_index!r} is not in this output's vocabulary ({', '.join(self.names)})")


class OutputDir:
    """A `pseudolabel run` output directory (local path or fsspec URL)."""

    def __init__(self, root: str, storage_options: Optional[Mapping[str, Any]] = None):
        self.root = str(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self._path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self._info: Optional[DatasetInfo] = None

    def url(self, relative: str) -> str:
        """Full URL/path of a file given relative to the output root (e.g. `masks/a.tar`)."""
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.fs.exists(posixpath.join(self._path, relative))

    @property
    def info(self) -> DatasetInfo:
        if self._info is None:
            self._info = load_dataset_info(self)
        return self._info

    def read_json(self, relative: str) -> Any:
        try:
            with self.fs.open(posixpath.join(self._path, relative), "r") as f:
                return json.load(f)
        except FileNotFoundError as exc:
            raise UserError(f"{self.url(relative)} does not exist: is {self.root} a `pseudolabel run` output?") from exc
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.url(relative)} is not valid JSON: {exc}") from exc

    def manifest_files(self) -> list[str]:
        """Manifest file names relative to the root, sorted (`manifest/NAME.parquet`)."""
        found = self.fs.glob(posixpath.join(self._path, "manifest", "*.parquet"))
        return sorted("manifest/" + posixpath.basename(p) for p in found)

    def load_manifest(self) -> pd.DataFrame:
        """All manifest rows of the output, with an added `shard` column (the NAME of NAME.parquet)."""
        files = self.manifest_files()
        if not files:
            raise UserError(f"no manifest/*.parquet under {self.root}: has `pseudolabel run` finished any shard?")
        frames = []
        for rel in files:
            with self.fs.open(posixpath.join(self._path, rel), "rb") as f:
                frame = pq.read_table(f).to_pandas()
            missing = [c for c in _REQUIRED_COLUMNS if c not in frame.columns]
            if missing:
                raise UserError(f"{self.url(rel)} lacks manifest columns {missing}: not a manifest-v1 file")
            frame["shard"] = posixpath.basename(rel)[: -len(".parquet")]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)


def load_dataset_info(output: OutputDir) -> DatasetInfo:
    raw = output.read_json("dataset.json")
    try:
        vocab = sorted(raw["vocabulary"], key=lambda e: int(e["index"]))
        names = [str(e["name"]) for e in vocab]
        colors = [tuple(int(c) for c in e["color"]) for e in vocab]
        num_classes = int(raw.get("num_classes", len(names)))
        label_dtype = str(raw.get("label_dtype", "uint8"))
        default_ignore = 255 if label_dtype == "uint8" else 65535
        ignore_index = int(raw.get("ignore_index", default_ignore))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{output.url('dataset.json')} does not follow the documented layout: {exc!r}") from exc
    if len(names) != num_classes:
        raise UserError(f"{output.url('dataset.json')}: num_classes={num_classes} but {len(names)} vocabulary entries")
    return DatasetInfo(names, colors, num_classes, ignore_index, label_dtype, raw)


def iter_tar_members(
    url: str, wanted: Mapping[str, T], storage_options: Optional[Mapping[str, Any]] = None
) -> Iterator[tuple[T, str, bytes]]:
    """Stream the tar at `url`, yielding `(wanted[name], name, data)` for members named in `wanted`.

    Stops reading once every wanted member has been seen, so asking for the first samples of a
    large shard costs only the bytes up to them.
    """
    remaining = set(wanted)
    if not remaining:
        return
    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as raw:
            # The predicate runs as each member is reached, so a repeated name is read only once.
            for name, data in iter_members(raw, read=remaining.__contains__):
                if data is None:
                    continue
                remaining.discard(name)
                yield wanted[name], name, data
                if not remaining:
                    break
    except (OSError, tarfile.TarError) as exc:
        raise UserError(f"cannot read tar {url}: {exc}") from exc
    if remaining:
        log.warning("%s: %d requested members not found (e.g. %s)", url, len(remaining), sorted(remaining)[0])


def group_members(
    members: Iterable[tuple[tuple[str, str], str, bytes]], parts: tuple[str, ...]
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group `((key, part), name, data)` items into `(key, {part: data})` once every part is present."""
    partial: dict[str, dict[str, bytes]] = {}
    for (key, part), _name, data in members:
        got = partial.setdefault(key, {})
        got[part] = data
        if all(p in got for p in parts):
            yield key, partial.pop(key)


def decode_label_png(data: bytes) -> np.ndarray:
    """Label PNG -> integer array (uint8 for "L"/"P", uint16 for 16-bit), values untouched."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode in ("L", "P"):
            return np.asarray(img, dtype=np.uint8)
        if img.mode.startswith("I;16"):
            return np.asarray(img).astype(np.uint16)
        if img.mode == "I":
            return np.asarray(img).astype(np.int64)
        raise ValueError(f"label PNG has mode {img.mode!r}; expected L, P or I;16")


def decode_conf_png(data: bytes) -> np.ndarray:
    """Confidence PNG (uint8 = round(255 * p)) -> uint8 array; divide by 255 for probabilities."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode != "L":
            raise ValueError(f"confidence PNG has mode {img.mode!r}; expected L")
        return np.asarray(img, dtype=np.uint8)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image -> uint8 HxWx3 RGB, EXIF orientation applied (as the pipeline measured it)."""
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def mask_members(rows: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """`{member name: (key, "label"|"conf")}` for the ok rows of one shard's manifest."""
    wanted: dict[str, tuple[str, str]] = {}
    for key, label_member, conf_member in zip(rows["key"], rows["label_member"], rows["conf_member"]):
        wanted[str(label_member)] = (str(key), "label")
        wanted[str(conf_member)] = (str(key), "conf")
    return wanted


def image_members(rows: pd.DataFrame) -> dict[str, str]:
    """`{member name: key}` of the image members of one shard's ok rows (`KEY.<image_member>`)."""
    return {f"{key}.{ext}": str(key) for key, ext in zip(rows["key"], rows["image_member"]) if isinstance(ext, str)}


def iter_masks(
    output: OutputDir, mask_shard: str, rows: pd.DataFrame
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """`(key, label, conf_uint8)` for the given ok rows of one mask shard, in tar order."""
    members = iter_tar_members(output.url(mask_shard), mask_members(rows), output.storage_options)
    for key, parts in group_members(members, ("label", "conf")):
        yield key, decode_label_png(parts["label"]), decode_conf_png(parts["conf"])


def resolve_source(source_shard: str, images_root: Optional[str]) -> str:
    """Where to read an input shard: as recorded, or `images_root/<file name>` when given."""
    if images_root:
        return f"{str(images_root).rstrip('/')}/{posixpath.basename(source_shard)}"
    return source_shard


def ok_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[(manifest["status"] == "ok") & manifest["mask_shard"].notna()]


def per_shard(frame: pd.DataFrame, column: str = "shard") -> Iterator[tuple[str, pd.DataFrame]]:
    """Group rows by shard, keeping first-appearance order and row order inside each shard."""
    for name in dict.fromkeys(frame[column]):
        yield str(name), frame[frame[column] == name]
