"""Pack a folder tree of images into WebDataset tar shards (`pseudolabel pack DIR OUT`), again and
again as the folder grows.

Deterministic: files are taken in the sorted order of their relative paths, each becomes the
member `KEY.EXT` where KEY is the relative path (POSIX separators) without the extension and EXT
is the extension exactly as on disk (case kept: `IMG_1.JPG` stays `.JPG`), and members get the
fixed tar metadata of `pipeline.io.tarfiles`, so the same folder always gives the same bytes.

WebDataset cuts a key at the first dot of the file name, so other dots in a name become `_`
(`a.b.jpg` -> key `a_b`); two files that would get one key are an error naming both. Hidden
files and files with other extensions are left out, and named in `PackResult.left_out`.

Incremental: `OUT/_pack/NAME.parquet` is the manifest of shard `OUT/NAME.tar` (key, member,
original path, size, mtime, sha256; the packed folder in its metadata), written right after the
shard, so a shard without one is the debris of an interrupted pack. Packing into an OUT that
already holds shards adds only what is new under new shard names (numbers after the highest one);
old shards are never rewritten, so a `pseudolabel run` over OUT skips them. A file whose size or
mtime changed and whose content hash differs is packed again as new; `_pack/changed.parquet`
records (key, old shard, new shard) so readers (the exports) take the newer version only.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io.atomic import atomic_local_path
from pipeline.io.tarfiles import write_tar

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # = io.image_extensions' default: what `run` reads
INDEX_DIR = "_pack"
CHANGED_FILE = "changed.parquet"
LISTED = 5  # left-out files named per reason; the rest are counted

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()), ("member", pa.string()), ("path", pa.string()),  # path: relative to the folder
    ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string()),
])
CHANGED_SCHEMA = pa.schema([("key", pa.string()), ("path", pa.string()), ("old_shard", pa.string()),
                            ("new_shard", pa.string())])

# reason -> how `pack` explains it
REASONS = {
    "hidden": "hidden (name starts with '.')",
    "extension": "extension not in --extensions",
    "no_extension": "no extension",
}


@dataclass(frozen=True)
class SourceFile:
    key: str
    ext: str
    rel: str  # path relative to the packed folder, POSIX separators
    path: Path
    size: int
    mtime_ns: int


@dataclass
class LeftOut:
    """Files of one reason: the first few named, all counted (O(1) memory per reason)."""

    count: int = 0
    names: list[str] = field(default_factory=list)

    def add(self, rel: str) -> None:
        self.count += 1
        if len(self.names) < LISTED:
            self.names.append(rel)


@dataclass
class PackResult:
    shards: list[Path]  # shards written by this call
    samples: int  # images packed by this call
    unchanged: int = 0  # images already in OUT, left as they are
    changed: list[str] = field(default_factory=list)  # relative paths packed again (content changed)
    left_out: dict[str, LeftOut] = field(default_factory=dict)  # reason -> files
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    existing_shards: int = 0  # shards OUT held before
    gone: int = 0  # files packed before that the folder no longer holds (their shards are kept)

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> number of files left out."""
        return {reason: lo.count for reason, lo in self.left_out.items()}

    def describe_left_out(self) -> list[str]:
        """One line per reason, naming a few files and `--extensions` where it helps."""
        lines = []
        for reason, lo in self.left_out.items():
            more = f" and {lo.count - len(lo.names)} more" if lo.count > len(lo.names) else ""
            why = REASONS.get(reason, reason)
            if reason == "extension":
                why += f" (now {','.join(self.extensions)}; add more to take them)"
            lines.append(f"{lo.count} {why}: {', '.join(lo.names)}{more}")
        return lines


def image_files(root: Path, extensions: Sequence[str], left_out: dict[str, LeftOut],
                exclude: Optional[Path] = None) -> list[SourceFile]:
    """Sorted SourceFiles for every image under `root` (never under `exclude`)."""
    wanted = {e.lower().lstrip(".") for e in extensions}
    found: list[SourceFile] = []
    excluded = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        keep = []  # sorted walk: the left-out files named first are the same on every machine
        for d in sorted(dirnames):
            if d.startswith("."):
                left_out.setdefault("hidden", LeftOut()).add(_rel(root, dirpath, d) + "/")
            elif excluded is None or Path(dirpath, d).resolve() != excluded:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            reason = _reason(name, wanted)
            if reason:
                left_out.setdefault(reason, LeftOut()).add(_rel(root, dirpath, name))
                continue
            found.append(_source_file(root, Path(dirpath, name)))
    found.sort(key=lambda f: f.rel)
    _check_unique(found)
    return found


def _rel(root: Path, dirpath: str, name: str) -> str:
    return Path(dirpath, name).relative_to(root).as_posix()


def _reason(name: str, wanted: set[str]) -> str:
    if name.startswith("."):
        return "hidden"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return "no_extension"
    return "" if ext.lower() in wanted else "extension"


def _source_file(root: Path, path: Path) -> SourceFile:
    rel = path.relative_to(root).as_posix()
    stem, _, ext = rel.rpartition(".")
    directory, _, base = stem.rpartition("/")
    key = f"{directory}/{base.replace('.', '_')}" if directory else base.replace(".", "_")
    st = path.stat()
    return SourceFile(key, ext, rel, path, st.st_size, st.st_mtime_ns)


def _check_unique(found: list[SourceFile]) -> None:
    first: dict[str, str] = {}
    for f in found:
        if f.key in first:
            raise UserError(f"{first[f.key]} and {f.rel} would both be sample {f.key!r}; rename one of them")
        first[f.key] = f.rel


def pack_folder(root: str | Path, out: str | Path, per_shard: int = 1000, prefix: str = "shard",
                extensions: Sequence[str] = DEFAULT_EXTENSIONS, exclude: Optional[Path] = None,
                dry_run: bool = False) -> PackResult:
    """Write the images of `root` not yet in `out` into new shards `out/PREFIX-NNNNNN.tar`
    (`dry_run`: only count them; nothing is written)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    if per_shard < 1:
        raise UserError(f"--per-shard must be at least 1, got {per_shard}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise UserError(f"--prefix {prefix!r}: use letters, digits, '.', '_' and '-' only")
    extensions = tuple(e.lower().lstrip(".") for e in extensions if e.strip())
    result = PackResult([], 0, extensions=extensions)
    files = image_files(root, extensions, result.left_out, exclude=exclude or out)  # OUT inside DIR: not an input
    if not files:
        raise UserError(f"no image ({', '.join(extensions)}) under {root}; "
                        f"{'; '.join(result.describe_left_out()) or 'the folder is empty'}")
    if not (out / INDEX_DIR).is_dir() and any(out.glob("*.tar")):
        raise UserError(f"{out} holds shards that `pack` did not write (no {out / INDEX_DIR}); pack into a new folder")
    if dry_run:
        state = PackState.load(out, prefix)
        new, changed = state.new_files(files)
        result.existing_shards = len(state.shards)
        result.samples, result.unchanged, result.changed = len(new), len(files) - len(new), [f.rel for f, _ in changed]
        return result
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        state = PackState.load(out, prefix)
        result.existing_shards = len(state.shards)
        new, changed = state.new_files(files)
        result.unchanged = len(files) - len(new)
        result.changed = [f.rel for f, _ in changed]
        result.gone = len(set(state.known) - {f.rel for f in files})
        next_number = state.next_number()
        old_shard = {f.key: shard for f, shard in changed}
        changes = []
        for i, start in enumerate(range(0, len(new), per_shard)):
            name = f"{prefix}-{next_number + i:06d}"
            batch = new[start: start + per_shard]
            result.shards.append(_write_shard(out, name, batch, root))
            changes += [(f.key, f.rel, old_shard[f.key], name) for f in batch if f.key in old_shard]
        state.add_changes(changes)
        state.remove_orphans(keep={p.stem for p in result.shards})
    result.samples = len(new)
    log.info("packed %d new images from %s into %d shards under %s (%d unchanged)", len(new), root,
             len(result.shards), out, result.unchanged)
    return result


def _write_shard(out: Path, name: str, files: list[SourceFile], root: Path) -> Path:
    """The shard, then its manifest: a shard with a manifest is complete."""
    hashes: list[str] = []
    shard = write_tar(out / f"{name}.tar", _members(files, hashes))
    table = pa.table({
        "key": [f.key for f in files], "member": [f"{f.key}.{f.ext}" for f in files],
        "path": [f.rel for f in files], "size": [f.size for f in files],
        "mtime_ns": [f.mtime_ns for f in files], "sha256": hashes,
    }, schema=INDEX_SCHEMA.with_metadata({"root": str(root.resolve())}))
    with atomic_local_path(out / INDEX_DIR / f"{name}.parquet") as tmp:
        pq.write_table(table, tmp)
    return shard


def _members(files: list[SourceFile], hashes: list[str]) -> Iterator[tuple[str, bytes]]:
    for f in files:
        try:
            data = f.path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {f.path}: {exc.strerror}") from exc
        hashes.append(hashlib.sha256(data).hexdigest())
        yield f"{f.key}.{f.ext}", data


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One pack at a time into `out` (two `run`s on one folder would otherwise both pack it)."""
    import fcntl

    (out / INDEX_DIR).mkdir(exist_ok=True)
    # O_NOFOLLOW: a symlink planted at the lock's name is refused, never written through
    fd = os.open(out / INDEX_DIR / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class _Known:
    size: int
    mtime_ns: int
    sha256: str
    shard: str


class PackState:
    """What `out` already holds, from its `_pack/*.parquet` manifests."""

    def __init__(self, out: Path, prefix: str, shards: list[str], known: dict[str, _Known]):
        self.out, self.prefix, self.shards, self.known = out, prefix, shards, known

    @classmethod
    def load(cls, out: Path, prefix: str) -> "PackState":
        index = out / INDEX_DIR
        shards = sorted(p.stem for p in index.glob("*.parquet") if p.name != CHANGED_FILE
                        and (out / f"{p.stem}.tar").is_file())
        tars = {p.stem for p in out.glob("*.tar")}
        foreign = sorted(tars - set(shards) - {s for s in tars if _number(s, prefix) is not None})
        if foreign:
            raise UserError(f"{out} holds shards that `pack` did not write ({foreign[0]}.tar); "
                            "pack into a new folder")
        known: dict[str, _Known] = {}
        for name in shards:  # sorted: a later shard's version of a path wins
            table = pq.read_table(index / f"{name}.parquet", columns=["path", "size", "mtime_ns", "sha256"])
            for path, size, mtime, sha in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                known[path] = _Known(size, mtime, sha, name)
        return cls(out, prefix, shards, known)

    def new_files(self, files: list[SourceFile]) -> tuple[list[SourceFile], list[tuple[SourceFile, str]]]:
        """(files to pack, [(changed file, shard of its older version)])."""
        new, changed = [], []
        for f in files:
            seen = self.known.get(f.rel)
            if seen is None:
                new.append(f)
            elif (seen.size, seen.mtime_ns) != (f.size, f.mtime_ns) and _sha256(f.path) != seen.sha256:
                new.append(f)
                changed.append((f, seen.shard))
        return new, changed

    def next_number(self) -> int:
        numbers = [n for n in (_number(s, self.prefix) for s in self.shards) if n is not None]
        return max(numbers) + 1 if numbers else 0

    def add_changes(self, rows: list[tuple[str, str, str, str]]) -> None:
        if not rows:
            return
        path = self.out / INDEX_DIR / CHANGED_FILE
        old = pq.read_table(path).to_pylist() if path.exists() else []
        new = [dict(zip(CHANGED_SCHEMA.names, r)) for r in rows]
        with atomic_local_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(old + new, schema=CHANGED_SCHEMA), tmp)

    def remove_orphans(self, keep: set[str]) -> None:
        """Shards an interrupted pack wrote without their manifest: never complete, never labeled
        as such; the files they held are packed again (deterministically: same bytes)."""
        for tar in self.out.glob(f"{self.prefix}-*.tar"):
            if tar.stem not in keep and tar.stem not in self.shards and _number(tar.stem, self.prefix) is not None:
                log.warning("removing %s: an interrupted pack left it without its manifest", tar)
                tar.unlink()


def _number(name: str, prefix: str) -> Optional[int]:
    match = re.fullmatch(re.escape(prefix) + r"-(\d{6,})", name)
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- readers of a packed folder (exports) ----------------------------------------------------

def pack_index(shard_url: str) -> Optional[dict[str, str]]:
    """{key: original path} of a packed shard (from its `_pack` manifest), None when it has none."""
    tar = _local(shard_url)
    if tar is None:
        return None
    index = tar.parent / INDEX_DIR / f"{tar.name.split('.')[0]}.parquet"
    if not index.is_file():
        return None
    table = pq.read_table(index, columns=["key", "path"])
    meta = table.schema.metadata or {}
    root = Path(meta.get(b"root", b"").decode())
    return {k: str(root / p) for k, p in zip(table.column("key").to_pylist(), table.column("path").to_pylist())}


def superseded(shard_url: str) -> set[tuple[str, str]]:
    """(shard name, key) pairs of the folder of `shard_url` whose file was packed again, changed."""
    tar = _local(shard_url)
    path = tar.parent / INDEX_DIR / CHANGED_FILE if tar is not None else None
    if path is None or not path.is_file():
        return set()
    return _changed(str(path), path.stat().st_mtime_ns)


def superseded_in(shard_urls: Sequence[str]) -> set[tuple[str, str]]:
    """`superseded` of every folder that holds one of `shard_urls` (distinct URLs): one look per
    folder, not per shard (10^5 shards share one or a few folders)."""
    older: set[tuple[str, str]] = set()
    folders: set[str] = set()
    for url in shard_urls:
        folder = str(url).rsplit("/", 1)[0] if "/" in str(url) else "."
        if folder not in folders:
            folders.add(folder)
            older |= superseded(str(url))
    return older


@functools.lru_cache(maxsize=8)
def _changed(path: str, mtime_ns: int) -> frozenset[tuple[str, str]]:
    """Read once per export, not once per shard (mtime in the key: a later pack invalidates it)."""
    table = pq.read_table(path, columns=["old_shard", "key"])
    return frozenset(zip(table.column("old_shard").to_pylist(), table.column("key").to_pylist()))


def _local(url: str) -> Optional[Path]:
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return None if "://" in url or url.startswith("pipe:") else Path(url)


# ---- `run FOLDER OUTPUT`: pack on the fly ------------------------------------------------------

INPUT_DIR = "_input"


def is_photo_folder(spec: str) -> bool:
    """A local folder with no shard directly in it: photos to pack, not shards to read."""
    path = _local(spec)
    if path is None or not path.is_dir():
        return False
    return not any(p.name.lower().endswith((".tar", ".tgz", ".tar.gz")) for p in path.iterdir() if p.is_file())


def pack_for_run(folder: str, output: str, extensions: Sequence[str], per_shard: int = 1000,
                 dry_run: bool = False) -> tuple[str, PackResult]:
    """Pack `folder`'s new photos into OUTPUT/_input; (the shard folder to label, what was packed)."""
    out = _local(output)
    if out is None:
        raise UserError(f"INPUT {folder} is a folder of photos: with a remote OUTPUT, pack it first "
                        f"(`pseudolabel pack {folder} SHARDS`) and run on SHARDS")
    dest = out / INPUT_DIR
    return str(dest), pack_folder(folder, dest, per_shard=per_shard, extensions=extensions, exclude=out,
                                  dry_run=dry_run)
