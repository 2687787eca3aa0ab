"""Ground-truth label maps for `pseudolabel eval`: where they come from and how their ids map to ours.

Sources (`open_ground_truth`):
- a folder of `KEY.png` label maps (VOC's SegmentationClass layout; palette PNGs hold indices);
- WebDataset tar shards with members `KEY.label.png` or `KEY.png`: one `.tar`, a folder of
  `*.tar`, a brace pattern (`gt-{000..009}.tar`), a glob (`gt/*.tar`) or a list of those.

`ClassMap` turns raw gt ids into our class indices, with -1 for "not evaluated".
"""
from __future__ import annotations

import logging
import posixpath
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import braceexpand
import fsspec
import numpy as np
import yaml

from pipeline.errors import UserError
from pipeline.evaluation.outputs import DatasetInfo, decode_label_png
from pipeline.io.tarfiles import iter_members

log = logging.getLogger(__name__)

GtSpec = Union[str, Path, Sequence[Union[str, Path]]]

GT_IGNORE = -1  # value of not-evaluated gt pixels after `ClassMap.apply`


class GroundTruth:
    """Key -> raw gt label array (uint8/uint16), from a PNG folder or from tar shards.

    A sample key is looked up as is, then by its last path component (gt folders usually lack
    the directory prefix a WebDataset key may carry) when that component is unambiguous.
    """

    def __init__(self, description: str):
        self.description = description
        self._entries: dict[str, Any] = {}  # gt key -> where its mask is (path or encoded bytes)
        self._by_stem: dict[str, Any] = {}

    def _index_stems(self) -> None:
        stems: dict[str, list[Any]] = {}
        for key, entry in self._entries.items():
            stems.setdefault(posixpath.basename(key), []).append(entry)
        self._by_stem = {stem: entries[0] for stem, entries in stems.items() if len(entries) == 1}

    def _entry(self, key: str) -> Any:
        entry = self._entries.get(key)
        return entry if entry is not None else self._by_stem.get(posixpath.basename(key))

    def keys(self) -> set[str]:
        return set(self._entries)

    def has(self, key: str) -> bool:
        return self._entry(key) is not None

    def get(self, key: str) -> Optional[np.ndarray]:
        entry = self._entry(key)
        if entry is None:
            return None
        try:
            return decode_label_png(self._read(entry))
        except (OSError, ValueError) as exc:
            raise UserError(f"ground-truth mask of {key!r} in {self.description} is unreadable: {exc}") from exc

    def _read(self, entry: Any) -> bytes:
        raise NotImplementedError


class PngFolderGroundTruth(GroundTruth):
    """`KEY.png` files under a folder (searched recursively; KEY = path relative to the folder)."""

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        self._entries = {p.relative_to(folder).as_posix()[: -len(".png")]: p for p in folder.rglob("*.png")}
        self._index_stems()

    def _read(self, entry: Path) -> bytes:
        return entry.read_bytes()


class TarGroundTruth(GroundTruth):
    """Reads every listed shard once, keeping the encoded PNGs (small) keyed by sample key."""

    def __init__(self, urls: list[str], storage_options: Optional[Mapping[str, Any]] = None):
        super().__init__(", ".join(urls) if len(urls) <= 3 else f"{urls[0]} ... ({len(urls)} shards)")
        for url in urls:
            self._load(url, storage_options)
        self._index_stems()

    def _read(self, entry: bytes) -> bytes:
        return entry

    def _load(self, url: str, storage_options: Optional[Mapping[str, Any]]) -> None:
        found = 0
        try:
            with fsspec.open(url, "rb", **dict(storage_options or {})) as raw:
                for name, data in iter_members(raw, read=lambda n: _gt_key(n)[0] is not None):
                    key, is_label = _gt_key(name)
                    if key is None or data is None:
                        continue
                    found += 1
                    if key in self._entries and not is_label:
                        continue  # KEY.label.png wins over KEY.png
                    self._entries[key] = data
        except (OSError, tarfile.TarError) as exc:
            raise UserError(f"cannot read ground-truth shard {url}: {exc}") from exc
        if not found:
            log.warning("ground-truth shard %s has no KEY.label.png or KEY.png member", url)


def _gt_key(name: str) -> tuple[Optional[str], bool]:
    """(key, is_label_png) of a gt tar member; (None, False) for members that are not gt masks."""
    if name.endswith(".label.png"):
        return name[: -len(".label.png")], True
    if name.endswith(".conf.png"):  # a pseudo-label shard's confidence member, not a mask
        return None, False
    if name.endswith(".png"):
        return name[: -len(".png")], False
    return None, False


def open_ground_truth(spec: GtSpec, storage_options: Optional[Mapping[str, Any]] = None) -> GroundTruth:
    """A `GroundTruth` for a PNG folder, a tar, a folder of tars, a brace pattern, a glob or a list."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise UserError("no ground truth given")
    if len(specs) == 1 and Path(str(specs[0])).is_dir():
        folder = Path(str(specs[0]))
        if any(folder.rglob("*.png")):
            return PngFolderGroundTruth(folder)
        tars = sorted(str(p) for p in folder.glob("*.tar"))
        if not tars:
            raise UserError(f"ground-truth folder {folder} holds neither KEY.png files nor *.tar shards")
        return TarGroundTruth(tars, storage_options)
    urls: list[str] = []
    for item in specs:
        urls.extend(_expand(str(item), storage_options))
    if not urls:
        raise UserError(f"ground truth {spec!r} matches no file")
    return TarGroundTruth(urls, storage_options)


def _expand(item: str, storage_options: Optional[Mapping[str, Any]]) -> list[str]:
    out: list[str] = []
    for pattern in braceexpand.braceexpand(item):
        if Path(pattern).is_dir():
            out.extend(sorted(str(p) for p in Path(pattern).glob("*.tar")))
        elif any(ch in pattern for ch in "*?["):
            fs, _ = fsspec.core.url_to_fs(pattern, **dict(storage_options or {}))
            protocol = pattern.split("://", 1)[0] + "://" if "://" in pattern else ""
            out.extend(sorted(protocol + p if protocol and not p.startswith(protocol) else p for p in fs.glob(pattern)))
        else:
            out.append(pattern)
    return out


@dataclass
class ClassMap:
    """Raw gt id -> our class index (or GT_IGNORE), as a lookup table over all 16-bit ids.

    Without a file (`identity`) gt ids are our indices and any id that is neither a class nor the
    gt ignore value is an error. With a file, ids the file does not list are not evaluated and are
    counted (`unmapped_ids`, and the pixel count returned by `apply`).
    """

    lut: np.ndarray  # int64 (65536,): raw id -> class index or GT_IGNORE
    defined: np.ndarray  # bool (65536,): ids that are classes, ignore, or listed in the file
    explicit: bool  # True when built from a --class-map mapping
    num_classes: int
    gt_ignore: Optional[int]
    source: Optional[str] = None
    unmapped_ids: set[int] = field(default_factory=set)

    @classmethod
    def identity(cls, num_classes: int, gt_ignore: Optional[int]) -> "ClassMap":
        lut = np.full(65536, GT_IGNORE, dtype=np.int64)
        lut[:num_classes] = np.arange(num_classes)
        defined = np.zeros(65536, dtype=bool)
        defined[:num_classes] = True
        if gt_ignore is not None and 0 <= gt_ignore < 65536:
            lut[gt_ignore] = GT_IGNORE
            defined[gt_ignore] = True
        return cls(lut, defined, explicit=False, num_classes=num_classes, gt_ignore=gt_ignore)

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[Any, Any], info: DatasetInfo, gt_ignore: Optional[int], source: Optional[str] = None
    ) -> "ClassMap":
        where = f"class map {source}" if source else "class map"
        lut = np.full(65536, GT_IGNORE, dtype=np.int64)
        defined = np.zeros(65536, dtype=bool)
        for raw_id, target in mapping.items():
            try:
                gid = int(raw_id)
            except (TypeError, ValueError) as exc:
                raise UserError(f"{where}: key {raw_id!r} is not an integer gt id") from exc
            if not 0 <= gid < 65536:
                raise UserError(f"{where}: gt id {gid} is outside 0..65535")
            defined[gid] = True
            if target is None or (isinstance(target, str) and target.strip().lower() in ("ignore", "none", "")):
                continue
            try:
                lut[gid] = info.class_index(target)
            except UserError as exc:
                raise UserError(f"{where}: gt id {gid}: {exc}") from exc
        if gt_ignore is not None and 0 <= gt_ignore < 65536:
            lut[gt_ignore] = GT_IGNORE
            defined[gt_ignore] = True
        return cls(lut, defined, explicit=True, num_classes=info.num_classes, gt_ignore=gt_ignore, source=source)

    @classmethod
    def load(cls, path: str | Path, info: DatasetInfo, gt_ignore: Optional[int]) -> "ClassMap":
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise UserError(f"cannot read class map {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise UserError(f"class map {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise UserError(f"class map {path} must be a mapping `gt id: our class index or name` (null = ignore)")
        return cls.from_mapping(data, info, gt_ignore, source=str(path))

    def apply(self, raw: np.ndarray, key: str = "") -> tuple[np.ndarray, int]:
        """Raw gt ids -> class indices (GT_IGNORE where not evaluated), and the unmapped pixel count."""
        raw = np.asarray(raw).astype(np.int64, copy=False)
        if raw.size and (raw.min() < 0 or raw.max() >= 65536):
            raise UserError(f"ground truth of {key!r} has ids outside 0..65535")
        undefined = ~self.defined[raw]
        if not undefined.any():
            return self.lut[raw], 0
        if not self.explicit:
            bad = int(raw[undefined][0])
            raise UserError(
                f"ground truth of {key!r} has id {bad}, which is neither a class index (0..{self.num_classes - 1}) "
                f"nor the gt ignore value {self.gt_ignore}: pass --class-map FILE (gt id -> class) or --gt-ignore"
            )
        self.unmapped_ids.update(int(v) for v in np.unique(raw[undefined]))
        return self.lut[raw], int(undefined.sum())
