"""Read a finished `pseudolabel run` output directory through its documented format only.

The layout (README "Output layout", schemas/): `dataset.json`, `manifest/NAME.parquet` (schema manifest-v1) and
`masks/NAME.tar` holding `KEY.label.png` + `KEY.conf.png` for every ok sample. The folder and
its records are `pipeline.io.output_dir.OutputDir` and `pipeline.io.records` (the same classes the
writer uses); evaluation, the report and the training loader read the mask shards through here.

Paths may be local or any fsspec URL (s3://...). Tar files are streamed (`r|`), never seeked, and
a reader stops as soon as it has every member it was asked for.
"""
from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from typing import Any, Iterable, Iterator, Mapping, Optional, TypeVar

import fsspec
import numpy as np
import pandas as pd
from PIL import Image

from pipeline.errors import UserError
from pipeline.io.decode import decode_rgb, open_png
from pipeline.io.layout import RowStatus
from pipeline.io.output_dir import OutputDir
from pipeline.io.records import DatasetMeta
from pipeline.io.tarfiles import iter_members

log = logging.getLogger(__name__)

T = TypeVar("T")

# The output folder and dataset.json are the library's own classes (one reader and writer of the
# format); these names are kept for the readers built on this module.
DatasetInfo = DatasetMeta


def load_dataset_info(output: OutputDir) -> DatasetInfo:
    return output.dataset_meta()


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
    with open_png(data) as img:  # the PNG decoder only: an OUTPUT may be shared (docs/security.md)
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
    with open_png(data) as img:
        img.load()
        if img.mode != "L":
            raise ValueError(f"confidence PNG has mode {img.mode!r}; expected L")
        return np.asarray(img, dtype=np.uint8)


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image -> uint8 HxWx3 RGB exactly as the labeler decoded it (`pipeline.io.decode`)."""
    return decode_rgb(data)


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
    """`(key, label, conf_uint8)` for the given ok rows of one mask shard, in tar order, at the
    image's size (maps stored smaller, labels.max_side, are resized back: pipeline.io.masks)."""
    from pipeline.io.masks import to_image_size

    sizes = dict(zip(rows["key"], zip(rows["height"], rows["width"]))) if "height" in rows else {}
    members = iter_tar_members(output.url(mask_shard), mask_members(rows), output.storage_options)
    for key, parts in group_members(members, ("label", "conf")):
        label, conf = decode_label_png(parts["label"]), decode_conf_png(parts["conf"])
        size = sizes.get(key)
        if size is not None and size[0] == size[0]:  # a size (not NaN) is recorded
            label, conf = to_image_size(label, int(size[0]), int(size[1])), to_image_size(conf, int(size[0]), int(size[1]))
        yield key, label, conf


def resolve_source(source_shard: str, images_root: Optional[str]) -> str:
    """Where to read an input shard: as recorded, or `images_root/<file name>` when given."""
    if images_root:
        return f"{str(images_root).rstrip('/')}/{posixpath.basename(source_shard)}"
    return source_shard


def ok_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[(manifest["status"] == RowStatus.OK) & manifest["mask_shard"].notna()]


def per_shard(frame: pd.DataFrame, column: str = "shard") -> Iterator[tuple[str, pd.DataFrame]]:
    """Group rows by shard, keeping first-appearance order and row order inside each shard."""
    # One groupby pass (sort=False keeps first-appearance order), not one filter of the frame per shard.
    for name, rows in frame.groupby(column, sort=False):
        yield str(name), rows
