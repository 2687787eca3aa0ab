"""Does a completion record still check? What `run` asks of every shard it would skip.

A shard is complete exactly when its `_done/NAME.json` exists and checks. The cheap check costs
one listing of OUTPUT's shard folders (`manifest/`, `masks/`, with sizes) and one listing of each
input folder (sizes and ETags, or mtimes on local disks, come with fsspec's `ls(detail=True)`);
it never opens a file. Per recorded shard it compares, in this order:

- the input now against the input identity the record took when the shard was labeled
  (size, then ETag/mtime): `input_changed`; a stream (`pipe:`) or a record older than the
  identity is not compared;
- the record against itself: it names its own shard, a complete status, samples = ok + errors,
  members accounted for: `record_mismatch`;
- the listing against the record: the manifest exists (and the mask tar, where it has ok rows or
  its size was recorded), and their sizes equal the recorded `manifest_bytes` / `mask_bytes`
  (records older than those fields: presence only): `missing_manifest`, `missing_masks`,
  `manifest_size`, `masks_size`.

`run --repair` adds verify's cheap checks of each remaining shard (reads its record, manifest and
mask tar, never the input: pipeline.run.verify_shard); the first problem found is the reason.
A record that does not even parse is reported by the index (`DoneIndex.unreadable`).

The shards that fail are relabeled: the runner removes their records first (so that from then on
they are not complete, whatever happens), then labels them like any incomplete shard; new files
replace the old in one step each, and the new record comes last.
"""
from __future__ import annotations

import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from pipeline.io import layout
from pipeline.io.layout import ShardStatus
from pipeline.io.shards import ShardSpec
from pipeline.io.storage import Storage
from pipeline.run.shard_identity import identity_of

log = logging.getLogger(__name__)

# Reason kind -> what it means (the run summary counts relabeled shards by these).
REASONS: dict[str, str] = {
    "input_changed": "the input shard's size or ETag/mtime differs from the one recorded when it was labeled",
    "unreadable_record": "the completion record does not parse or names another shard",
    "record_mismatch": "the completion record contradicts itself or its files",
    "missing_manifest": "the manifest named by the completion record does not exist",
    "missing_masks": "the mask tar named by the completion record does not exist",
    "manifest_size": "the manifest's size differs from the size recorded when it was written",
    "masks_size": "the mask tar's size differs from the size recorded when it was written",
}
NAMES_LISTED = 20  # shard names kept per reason for the plan and the summary; the rest are counted
Identity = tuple[Optional[int], Optional[str]]


@dataclass
class OutputListing:
    """Sizes of the files in OUTPUT's manifest/ and masks/ folders, by shard name."""

    manifests: dict[str, Optional[int]] = field(default_factory=dict)
    masks: dict[str, Optional[int]] = field(default_factory=dict)


@dataclass
class Relabel:
    """Shards whose record does not check: name -> (reason kind, detail)."""

    shards: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, name: str, kind: str, detail: str) -> None:
        self.shards.setdefault(name, (kind, detail))

    @property
    def names(self) -> set[str]:
        return set(self.shards)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, _ in self.shards.values():
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))

    def listed(self, kind: Optional[str] = None) -> list[str]:
        """The first NAMES_LISTED shard names (of one reason kind), sorted."""
        return sorted(n for n, (k, _) in self.shards.items() if kind is None or k == kind)[:NAMES_LISTED]

    def __len__(self) -> int:
        return len(self.shards)


def list_output(storage: Storage) -> OutputListing:
    """One listing of each of OUTPUT's shard folders (paginated on object stores)."""
    return OutputListing(_sizes(storage, layout.MANIFEST_DIR, layout.MANIFEST_SUFFIX),
                         _sizes(storage, layout.MASKS_DIR, layout.MASK_SUFFIX))


def _sizes(storage: Storage, folder: str, suffix: str) -> dict[str, Optional[int]]:
    return {layout.shard_name(base, suffix): size for base, size, _ in list_files(storage.fs, storage.path(folder))
            if base.endswith(suffix)}


def list_files(fs: Any, path: str) -> list[tuple[str, Optional[int], Optional[str]]]:
    """(file name, size, ETag-or-mtime) of the files directly under `path`, from one listing;
    empty when it does not exist. Local folders by os.scandir (one stat per entry, the same
    size and mtime fsspec reports, a third of its time); anything else by `ls(detail=True)`."""
    from fsspec.implementations.local import LocalFileSystem

    fs.invalidate_cache(path)  # workers write from other processes: a cached listing would miss them
    if isinstance(fs, LocalFileSystem):
        try:
            with os.scandir(path) as it:
                return [(e.name, st.st_size, str(st.st_mtime)) for e in it
                        if e.is_file() and (st := e.stat()) is not None]
        except (FileNotFoundError, NotADirectoryError):
            return []
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        if e.get("type", "file") != "directory":
            size, tag = identity_of(e)
            out.append((posixpath.basename(str(e["name"]).rstrip("/")), size, tag))
    return out


def input_identities(specs: Iterable[ShardSpec], storage_options: Optional[dict[str, Any]] = None) -> dict[str, Identity]:
    """Input URL -> (size, ETag or mtime) from one listing per input folder (no per-shard request).
    Streams (`pipe:`, `-`) and folders that cannot be listed are left out (not compared)."""
    import fsspec

    by_dir: dict[str, list[ShardSpec]] = {}
    for spec in specs:
        if not spec.url.startswith("pipe:") and spec.url != "-":
            by_dir.setdefault(posixpath.dirname(spec.url), []).append(spec)
    out: dict[str, Identity] = {}
    for folder, members in by_dir.items():
        try:
            fs, path = fsspec.core.url_to_fs(folder, **dict(storage_options or {}))
            listing = {base: (size, tag) for base, size, tag in list_files(fs, path)}
        except Exception as exc:  # noqa: BLE001 - best effort (an http "folder", a denied LIST): say so, go on
            log.warning("cannot list %s for input sizes (changed inputs there are not detected): %s", folder, exc)
            continue
        for spec in members:
            found = listing.get(posixpath.basename(spec.url))
            if found is not None:
                out[spec.url] = found
    return out


def input_change(record: dict[str, Any], now: Optional[Identity]) -> Optional[str]:
    """Why the input differs from the one `record` was labeled from, or None (also when either
    side does not know: a stream, an older record, an input that is gone)."""
    if now is None:
        return None
    size, etag = record.get("input_size"), record.get("input_etag")
    if size is not None and now[0] is not None and not (isinstance(size, int) and size == now[0]):
        return f"input shard is {now[0]} bytes, {size} when it was labeled"
    if etag and now[1] and str(etag) != now[1]:
        return f"input shard ETag/mtime is {now[1]}, {etag} when it was labeled"
    return None


def record_problem(name: str, record: dict[str, Any], listing: OutputListing) -> Optional[tuple[str, str]]:
    """(kind, detail) of the first way `record` fails against itself and the listing, or None."""
    if record.get("shard") != name:
        return "record_mismatch", f"the record names shard {record.get('shard')!r}"
    if record.get("status") not in (ShardStatus.DONE, ShardStatus.FAILED):
        return "record_mismatch", f"status {record.get('status')!r} is not a complete one"
    try:
        samples, ok, errors = (int(record.get(k) or 0) for k in ("samples", "ok", "errors"))
        members = int(record.get("members") or 0)
        skipped = sum(int(v) for v in (record.get("skipped_members") or {}).values())
    except (TypeError, ValueError, AttributeError) as exc:
        return "record_mismatch", f"counts are not numbers: {exc}"
    if min(samples, ok, errors) < 0 or samples != ok + errors:
        return "record_mismatch", f"samples={samples} but ok={ok} and errors={errors}"
    if members and members - skipped < samples:
        return "record_mismatch", f"{members} members, {skipped} skipped, but {samples} samples"
    for kind, present, recorded in (("manifest", listing.manifests, "manifest_bytes"),
                                    ("masks", listing.masks, "mask_bytes")):
        want = record.get(recorded)
        if name not in present:
            if kind == "manifest" or ok or want is not None:
                return f"missing_{kind}", f"{'manifest' if kind == 'manifest' else 'mask tar'} does not exist"
            continue
        size = present[name]
        if want is not None and size is not None and not (isinstance(want, int) and want == size):
            return f"{kind}_size", f"{size} bytes, {want!r} when it was written"
    return None


def cheap_check(records: Any, listing: OutputListing, specs: dict[str, ShardSpec],
                inputs: dict[str, Identity], unreadable: Optional[dict[str, str]] = None) -> Relabel:
    """The shards among `records` (a DoneIndex) whose record does not check, with the first reason;
    plus the `unreadable` records the index found. Work: one pass over the records."""
    out = Relabel()
    for name, why in (unreadable or {}).items():
        out.add(name, "unreadable_record", why)
    for record in records.values():
        name = str(record.get("shard"))
        spec = specs.get(name)
        change = input_change(record, inputs.get(spec.url)) if spec is not None else None
        if change is not None:
            out.add(name, "input_changed", change)
            continue
        problem = record_problem(name, record, listing)
        if problem is not None:
            out.add(name, *problem)
    return out


def deep_check(storage: Any, names: Iterable[str], listing: OutputListing, workers: int = 8) -> Relabel:
    """`run --repair`: verify's checks of each shard that need its files read (its record, manifest
    and mask tar with every PNG decoded, as `verify` does; never the input). `storage` is an
    OutputDir. As costly as `verify` itself: an explicit request, never part of a plain run."""
    from pipeline.run.verify_shard import _check_shard, _read_dataset_json

    info, _ = _read_dataset_json(storage)
    out = Relabel()

    def check(name: str) -> tuple[str, Any]:
        has = (name in listing.manifests, name in listing.masks, True)
        return name, _check_shard(storage, name, None, False, info, has=has, storage_options=storage.storage_options,
                                  decode=True, deep=False)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, result in pool.map(check, sorted(names)):
            if result.problems:
                first = result.problems[0]
                out.add(name, first.kind, first.detail)
    return out


def describe(relabel: Relabel) -> str:
    """"3 changed inputs, 2 damaged (missing_masks=1, manifest_size=1)" or ""."""
    return describe_counts(relabel.counts())


def describe_counts(counts: dict[str, int]) -> str:
    counts = dict(counts)
    changed = counts.pop("input_changed", 0)
    parts = [f"{changed} changed input{'s' if changed != 1 else ''}"] if changed else []
    if counts:
        parts.append(f"{sum(counts.values())} damaged ({', '.join(f'{k}={v}' for k, v in counts.items())})")
    return ", ".join(parts)


def plan_relabel(storage: Any, shards: list[ShardSpec], records: Any, storage_options: Optional[dict[str, Any]],
                 repair: bool = False) -> tuple[Relabel, dict[str, Identity]]:
    """The planned shards whose completion record does not check (the cheap check, and with
    `repair` the deep one too), and the input identities it compared against. `records`: the
    DoneIndex of the planned shards. No request at all when nothing is recorded yet."""
    if not records and not records.unreadable:
        return Relabel(), {}
    specs = {s.name: s for s in shards}
    listing = list_output(storage)
    inputs = input_identities((specs[n] for n in records.names if n in specs), storage_options)
    relabel = cheap_check(records, listing, specs, inputs, records.unreadable)
    if repair:
        for name, (kind, detail) in deep_check(storage, records.names - relabel.names, listing).shards.items():
            relabel.add(name, kind, detail)
    for name in relabel.listed()[:5]:
        kind, detail = relabel.shards[name]
        log.warning("shard %s is not complete (%s: %s): relabeling it", name, kind, detail)
    return relabel, inputs


def forget_records(storage: Any, names: Iterable[str]) -> None:
    """Remove the completion records of shards about to be relabeled: from here on they are not
    complete, whatever happens to the run (their old files are replaced when they are labeled)."""
    paths = [storage.path(layout.done_path(n)) for n in sorted(names)]
    if not paths:
        return
    try:
        storage.fs.rm(paths)  # one batched delete on object stores
    except FileNotFoundError:
        for path in paths:
            try:
                storage.fs.rm(path)
            except FileNotFoundError:
                pass
    storage.fs.invalidate_cache(storage.path(layout.DONE_DIR))


def end_check(storage: Any, shards: list[ShardSpec], records: Any,
              inputs: dict[str, Identity]) -> tuple[Relabel, OutputListing]:
    """The cheap check at the end of a run, against the input identities listed at its start
    (no second listing of INPUT): what the summary then counts as complete."""
    listing = list_output(storage)
    specs = {s.name: s for s in shards}
    return cheap_check(records, listing, specs, inputs, records.unreadable), listing
