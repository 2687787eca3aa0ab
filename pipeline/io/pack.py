"""Pack a folder tree of images into WebDataset tar shards (`pseudolabel pack DIR OUT`).

Deterministic: files are taken in the sorted order of their relative paths, each becomes the
member `KEY.EXT` where KEY is the relative path (POSIX separators) without the extension and EXT
is the extension exactly as on disk (case kept: `IMG_1.JPG` stays `.JPG`), and members get the
fixed tar metadata of `pipeline.io.tarfiles`, so the same folder always gives the same bytes.

WebDataset cuts a key at the first dot of the file name, so other dots in a name become `_`
(`a.b.jpg` -> key `a_b`); two files that would get one key are an error naming both. Hidden
files and files with other extensions are left out and counted.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from pipeline.errors import UserError
from pipeline.io.tarfiles import write_tar

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class PackResult:
    shards: list[Path]
    samples: int
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files


def image_files(root: Path, extensions: Sequence[str], skipped: dict[str, int]) -> list[tuple[str, str, Path]]:
    """Sorted (key, ext, path) for every image under `root`."""
    wanted = {e.lower().lstrip(".") for e in extensions}
    found: list[tuple[str, str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                skipped["hidden"] = skipped.get("hidden", 0) + 1
                continue
            stem, dot, ext = name.rpartition(".")
            if not dot or not stem or ext.lower() not in wanted:
                skipped["not_an_image"] = skipped.get("not_an_image", 0) + 1
                continue
            rel = Path(dirpath, stem).relative_to(root).as_posix()
            directory, _, base = rel.rpartition("/")
            key = f"{directory}/{base.replace('.', '_')}" if directory else base.replace(".", "_")
            found.append((key, ext, Path(dirpath, name)))
    found.sort(key=lambda item: item[2].relative_to(root).as_posix())
    _check_unique(found, root)
    return found


def _check_unique(found: list[tuple[str, str, Path]], root: Path) -> None:
    first: dict[str, Path] = {}
    for key, _ext, path in found:
        if key in first:
            raise UserError(f"{first[key].relative_to(root)} and {path.relative_to(root)} would both be sample "
                            f"{key!r}; rename one of them")
        first[key] = path


def pack_folder(root: str | Path, out: str | Path, per_shard: int = 1000, prefix: str = "shard",
                extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> PackResult:
    """Write `out/PREFIX-000000.tar`, ... with `per_shard` images each."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    if per_shard < 1:
        raise UserError(f"--per-shard must be at least 1, got {per_shard}")
    skipped: dict[str, int] = {}
    files = image_files(root, extensions, skipped)
    if not files:
        raise UserError(f"no image ({', '.join(extensions)}) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing:
        raise UserError(f"{out} already holds {existing[0].name}; pack into a new folder")
    shards = [write_tar(out / f"{prefix}-{i:06d}.tar", _members(files[start: start + per_shard]))
              for i, start in enumerate(range(0, len(files), per_shard))]
    log.info("packed %d images from %s into %d shards under %s (skipped %s)", len(files), root, len(shards), out, skipped)
    return PackResult(shards, len(files), skipped)


def _members(files: list[tuple[str, str, Path]]) -> Iterator[tuple[str, bytes]]:
    for key, ext, path in files:
        try:
            yield f"{key}.{ext}", path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from exc
