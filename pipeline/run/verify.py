"""Cross-check an OUTPUT against its INPUT (layout: docs_contract.md).

`verify_output` holds when:
- every input sample has exactly one manifest row, in input order (with INPUT);
- every ok row has its label and confidence PNGs in the shard's mask tar, and they decode to the
  recorded width x height (label mode and values per dataset.json);
- the mask tar has no member that no ok row references;
- every shard with outputs has a completion record, and the record agrees with the files
  (sample/ok/error counts, file names, config and content fingerprints, member accounting).

Two depths. `deep=True` re-reads every input shard for its keys (~3 ms a sample: days at 10^8).
`deep=False` (the command line's default) never opens an input tar: the manifest's keys in order
are checked against the `keys_sha256` digest the completion record took of the input when it was
labeled, and the input's size/ETag (from one listing of INPUT) against the recorded ones; the
outputs themselves (manifest, mask tar, PNGs) are read as in deep mode, so a tampered or missing
mask member is still caught. `incremental=True` skips shards an earlier verify passed whose files
are unchanged since (their size/ETag in the listings; markers in `_index/verified.parquet`).

The function never raises for a broken output: every finding is a `Problem` of one of `KINDS`.
Shards are checked in a thread pool, each streaming its mask tar once.
"""
from __future__ import annotations

import io
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from pipeline.io import layout
from pipeline.io.output_dir import OutputDir
from pipeline.io.shards import ShardSpec, expand_input
from pipeline.run.shard_check import input_identities
from pipeline.run.shard_identity import identity_of
from pipeline.run.verify_report import KINDS, MAX_STORED_PROBLEMS, Problem, ShardCheck, VerifyReport  # noqa: F401
from pipeline.run.verify_shard import _check_shard, _read_dataset_json, input_keys  # noqa: F401

log = logging.getLogger(__name__)

VERIFIED_PATH = "_index/verified.parquet"
_FOLDERS = ((layout.MANIFEST_DIR, layout.MANIFEST_SUFFIX), (layout.MASKS_DIR, layout.MASK_SUFFIX),
            (layout.DONE_DIR, layout.DONE_SUFFIX))


def verify_output(
    output_url: str,
    input_spec: Optional[str] = None,
    storage_options: Optional[dict[str, Any]] = None,
    *,
    decode: bool = True,
    workers: int = 8,
    deep: bool = True,
    incremental: bool = False,
    record_verified: bool = False,
    allow_pipe: bool = False,
) -> VerifyReport:
    """Check OUTPUT (against INPUT when given). `decode=False` reads PNG headers only (faster);
    `deep`, `incremental`: see the module doc; `record_verified` writes the markers of the shards
    that passed (what `incremental` skips next time). A `pipe:` INPUT is only run by `deep`, and
    then only with `allow_pipe` (--allow-pipe); without `deep` its commands are only named."""
    out = OutputDir(output_url, storage_options)
    out.fs.invalidate_cache()  # fsspec reuses filesystem instances: drop listings cached earlier
    report = VerifyReport(output_url, input_spec, deep=deep)
    inputs: dict[str, ShardSpec] = {}
    if input_spec is not None:
        shards = expand_input(input_spec, storage_options, allow_pipe=allow_pipe or not deep)
        inputs = {s.name: s for s in shards}
    info, problems = _read_dataset_json(out)
    listed = [_listing(out, folder, suffix) for folder, suffix in _FOLDERS]
    manifests, masks, records = (set(d) for d in listed)
    produced = manifests | masks | records
    if not produced and not inputs:
        report.add([Problem("empty_output", None, None, f"no manifest/, masks/ or _done/ files under {output_url}")])
        return report
    if produced:
        report.add(problems)
    names = sorted(produced | set(inputs))
    stamps = {n: "|".join(d.get(n, "-") for d in listed) for n in records}
    if incremental:
        done_before = _read_verified(out)
        skip = {n for n in names if n in inputs or input_spec is None
                if stamps.get(n) is not None and done_before.get(n) == stamps[n]}
        report.skipped_verified = len(skip)
        report.shards += len(skip)
        report.complete_shards += len(skip)
        names = [n for n in names if n not in skip]
    input_ids = _input_identities(list(inputs.values()), storage_options) if inputs and not deep else {}

    def check(name: str) -> ShardCheck:
        spec = inputs.get(name)
        result = _check_shard(out, name, spec, input_spec is not None, info,
                              has=(name in manifests, name in masks, name in records),
                              storage_options=storage_options, decode=decode, deep=deep,
                              input_id=input_ids.get(spec.url) if spec is not None else None)
        result.stamp = stamps.get(name)
        return result

    passed: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for result in pool.map(check, names):
            _fold(report, result)
            if not result.problems and result.complete and result.stamp:
                passed[result.name] = result.stamp
    except BaseException:
        # Ctrl-C: the queued shards are dropped, not checked one by one before the process may end.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if record_verified and passed:
        _write_verified(out, passed, keep=set(records))
    return report


def _fold(report: VerifyReport, result: ShardCheck) -> None:
    report.shards += 1
    report.complete_shards += result.complete
    report.input_samples += result.input_samples
    report.rows += result.rows
    report.ok_rows += result.ok_rows
    report.error_rows += result.error_rows
    report.members += result.members
    report.without_keys_hash += result.without_keys_hash
    report.add(result.problems)


def _listing(out: OutputDir, folder: str, suffix: str) -> dict[str, str]:
    """Shard name -> "size:etag" of the files in one folder, from one (paginated) listing."""
    try:
        entries = out.fs.ls(out.path(folder), detail=True)
    except FileNotFoundError:
        return {}
    found = {}
    for e in entries:
        base = posixpath.basename(str(e["name"]).rstrip("/"))
        if base.endswith(suffix) and e.get("type", "file") != "directory":
            size, tag = identity_of(e)
            found[layout.shard_name(base, suffix)] = f"{size}:{tag}"
    return found


def _input_identities(specs: list[ShardSpec], storage_options: Optional[dict[str, Any]]) -> dict[str, tuple]:
    """Input URL -> (size, etag) from one listing per input folder (no per-shard request); the
    same listing `run` compares its records against (pipeline.run.shard_check)."""
    return input_identities(specs, storage_options)


def _read_verified(out: OutputDir) -> dict[str, str]:
    try:
        table = pq.read_table(io.BytesIO(out.read_bytes(VERIFIED_PATH)))
        return dict(zip(table.column("shard").to_pylist(), table.column("stamp").to_pylist()))
    except FileNotFoundError:
        return {}
    except (OSError, pa.ArrowException, KeyError) as exc:  # a broken marker file: verify everything
        log.warning("%s is unreadable (%s); verifying every shard", VERIFIED_PATH, exc)
        return {}


def _write_verified(out: OutputDir, passed: dict[str, str], keep: set[str]) -> None:
    merged = {n: s for n, s in _read_verified(out).items() if n in keep}
    merged.update(passed)
    names = sorted(merged)
    buf = io.BytesIO()
    pq.write_table(pa.table({"shard": names, "stamp": [merged[n] for n in names]}), buf, compression="zstd")
    try:
        out.write_bytes(VERIFIED_PATH, buf.getvalue())
    except OSError as exc:  # a read-only OUTPUT can still be verified, just not incrementally
        log.warning("cannot record verified shards in %s: %s", out.url(VERIFIED_PATH), exc)


def verify_or_raise(output_url: str, input_spec: Optional[str] = None,
                    storage_options: Optional[dict[str, Any]] = None) -> VerifyReport:
    """`verify_output`, raising a UserError with the summary when it fails (for jobs and tests)."""
    report = verify_output(output_url, input_spec, storage_options)
    if not report.passed:
        raise UserError(report.summary())
    return report
