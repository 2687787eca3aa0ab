"""The checks of one shard for `verify` (pipeline.run.verify), and the reads they need."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.io import layout
from pipeline.io.layout import RowStatus, done_path, manifest_path, mask_shard_path
from pipeline.io.output_dir import OutputDir
from pipeline.io.reader import ReadReport, iter_samples
from pipeline.io.records import DatasetMeta
from pipeline.io.schema import manifest_schema
from pipeline.io.shards import ShardSpec
from pipeline.io.tarfiles import iter_members
from pipeline.run.shard_identity import keys_digest
from pipeline.io.masks import is_stored_size
from pipeline.run.verify_report import Problem, ShardCheck, _DatasetInfo


# -- per shard ------------------------------------------------------------------------------------
def _check_shard(
    out: OutputDir, name: str, spec: Optional[ShardSpec], with_input: bool, info: _DatasetInfo,
    has: tuple[bool, bool, bool], storage_options: Optional[dict[str, Any]], decode: bool,
    deep: bool = True, input_id: Optional[tuple[Optional[int], Optional[str]]] = None,
) -> ShardCheck:
    """One shard's checks. `deep=False` never opens the input: the manifest is checked against the
    keys digest and input size/ETag its completion record holds (`input_id`: from a listing)."""
    has_manifest, has_mask, has_record = has
    check = ShardCheck(name)
    if with_input and spec is None:
        check.add("unexpected_shard", "outputs exist but INPUT has no shard of this name")
    if spec is not None and not any(has):
        keys = _input_keys_or_none(spec, storage_options, check) if deep else None
        check.input_samples = len(keys or [])
        check.add("missing_shard", f"no outputs for input shard {spec.url}"
                  + (f" ({len(keys)} samples)" if keys is not None else ""))
        return check
    record = _read_record(out, name, check) if has_record else None
    rows = _read_manifest(out, name, check) if has_manifest else None
    if not has_manifest and spec is not None:
        keys = _input_keys_or_none(spec, storage_options, check) if deep else None
        check.input_samples = len(keys) if keys is not None else int((record or {}).get("samples", 0))
        check.add("missing_row", f"{manifest_path(name)} does not exist: none of the "
                                 f"{check.input_samples} input samples has a row")
    if rows is not None:
        check.rows = len(rows)
        check.ok_rows = sum(1 for r in rows if r["status"] == RowStatus.OK)
        check.error_rows = check.rows - check.ok_rows
        _check_rows(name, rows, check)
        if spec is not None and deep:
            keys = _input_keys_or_none(spec, storage_options, check)
            if keys is not None:
                check.input_samples = len(keys)
                _check_coverage(rows, keys, check)
        else:
            check.input_samples = check.rows if spec is not None else 0
            _check_indices(rows, check)
            _check_keys_digest(rows, record, check)
        _check_masks(out, name, rows, has_mask, info, check, decode)
    if record is not None and input_id is not None:
        _check_input_identity(record, input_id, check)
    _check_record(name, record, rows, has, info, check)
    return check


def _check_keys_digest(rows: list[dict[str, Any]], record: Optional[dict[str, Any]], check: ShardCheck) -> None:
    if record is None:
        return
    recorded = record.get("keys_sha256") or ""
    if not recorded:
        check.without_keys_hash = True
        return
    if keys_digest(r["key"] for r in rows) != recorded:
        check.add("keys_mismatch", "the manifest's keys in order differ from the input keys recorded at labeling "
                                   "(a row lost, added or moved); --deep names them")


def _check_input_identity(record: dict[str, Any], now: tuple[Optional[int], Optional[str]], check: ShardCheck) -> None:
    from pipeline.run.shard_check import input_change  # the very test `run` relabels by

    change = input_change(record, now)
    if change is not None:
        check.add("input_changed", change)


def _check_rows(name: str, rows: list[dict[str, Any]], check: ShardCheck) -> None:
    mask_rel = mask_shard_path(name)
    for r in rows:
        key = r["key"]
        if r["status"] == RowStatus.OK:
            missing = [f for f in ("width", "height", "label_member", "conf_member", "mask_shard")
                       if r[f] is None]
            if missing:
                check.add("bad_row", f"ok row without {', '.join(missing)}", key)
            elif r["mask_shard"] != mask_rel:
                check.add("bad_row", f"ok row points at mask shard {r['mask_shard']!r}, not {mask_rel!r}", key)
        elif r["status"] == RowStatus.ERROR:
            if r["label_member"] is not None or r["conf_member"] is not None:
                check.add("bad_row", "error row names mask members", key)
            if not r["error"]:
                check.add("bad_row", "error row without an error message", key)
        else:
            check.add("bad_row", f"status {r['status']!r} is neither ok nor error", key)


def _check_coverage(rows: list[dict[str, Any]], keys: list[str], check: ShardCheck) -> None:
    """Rows against the input's samples, matched by sample_index (a shard may repeat a key)."""
    keyset = set(keys)
    per_index: Counter[int] = Counter()
    for r in rows:
        key, index = r["key"], r["sample_index"]
        if 0 <= index < len(keys) and keys[index] == key:
            per_index[index] += 1
        elif key in keyset:
            check.add("order", f"sample_index {index}, but the input has this key at "
                               f"#{keys.index(key)}", key)
        else:
            check.add("unexpected_row", "not a sample of the input shard", key)
    for index, key in enumerate(keys):
        n = per_index.get(index, 0)
        if n == 0:
            check.add("missing_row", f"input sample #{index} has no manifest row", key)
        elif n > 1:
            check.add("duplicate_row", f"input sample #{index} has {n} manifest rows", key)
    _check_increasing(rows, check)


def _check_indices(rows: list[dict[str, Any]], check: ShardCheck) -> None:
    """Without INPUT: rows must still be numbered 0..n-1 (a gap is a lost row, a repeat a duplicate)."""
    counts = Counter(r["sample_index"] for r in rows)
    for r in rows:
        if counts[r["sample_index"]] > 1:
            check.add("duplicate_row", f"{counts[r['sample_index']]} rows with sample_index "
                                       f"{r['sample_index']}", r["key"])
            counts[r["sample_index"]] = 0  # report each index once
    top = max(counts, default=-1)
    gaps = [i for i in range(top + 1) if i not in counts]
    if gaps:
        check.add("order", f"sample_index skips {gaps[:5]} (rows lost, or not numbered from 0)")
    _check_increasing(rows, check)


def _check_increasing(rows: list[dict[str, Any]], check: ShardCheck) -> None:
    indices = [r["sample_index"] for r in rows]
    for pos in range(1, len(indices)):
        if indices[pos] < indices[pos - 1]:
            check.add("order", f"manifest rows are not in input order (row {pos} has sample_index "
                               f"{indices[pos]} after {indices[pos - 1]})", rows[pos]["key"])
            return


def _check_masks(
    out: OutputDir, name: str, rows: list[dict[str, Any]], has_mask: bool, info: _DatasetInfo,
    check: ShardCheck, decode: bool,
) -> None:
    expected: dict[str, tuple[str, dict[str, Any]]] = {}  # member -> (which, row)
    order: list[str] = []
    for r in rows:
        if r["status"] == RowStatus.OK and r["label_member"] and r["conf_member"]:
            for which in ("label", "conf"):
                member = r[f"{which}_member"]
                expected[member] = (which, r)
                order.append(member)
    mask_rel = mask_shard_path(name)
    if not has_mask:
        if expected:
            check.add("missing_member", f"{mask_rel} does not exist but {len(expected)} members "
                                        "are referenced by ok rows")
        return
    found: list[str] = []
    present: set[str] = set()
    try:
        with out.open(mask_rel) as f:
            for member, data in iter_members(f):
                check.members += 1
                if member in present:
                    check.add("orphan_member", f"{member} appears more than once in the mask shard")
                    continue
                found.append(member)
                present.add(member)
                if member not in expected:
                    check.add("orphan_member", f"{member} is not referenced by any ok row")
                    continue
                which, row = expected[member]
                _check_png(member, data, which, row, info, check, decode)
    except (OSError, tarfile.TarError) as exc:
        check.add("missing_member", f"{mask_rel} cannot be read past member {len(found)}: {exc}")
    for member in order:
        if member not in present:
            check.add("missing_member", f"{member} is not in {mask_rel}", expected[member][1]["key"])
    in_both = [m for m in found if m in expected]
    if in_both != [m for m in order if m in present]:
        check.add("order", f"members of {mask_rel} are not in manifest order")


def _check_png(
    member: str, data: bytes, which: str, row: dict[str, Any], info: _DatasetInfo,
    check: ShardCheck, decode: bool,
) -> None:
    key = row["key"]
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:  # the PNG decoder only (docs/security.md)
            if im.format != "PNG":
                check.add("bad_mask", f"{member} is {im.format}, not PNG", key)
                return
            # maps may be stored smaller than the image (labels.max_side), aspect kept
            if not is_stored_size((im.size[1], im.size[0]), row["height"], row["width"]):
                check.add("wrong_size", f"{member} is {im.size[0]}x{im.size[1]}, row says "
                                        f"{row['width']}x{row['height']}", key)
            wanted = "L" if which == "conf" else info.label_mode
            # uint8 labels may be grayscale or palette (labels.png_mode): the same index values
            if wanted is not None and im.mode != wanted and not (which == "label" and wanted == "L" and im.mode == "P"):
                check.add("bad_mask", f"{member} has mode {im.mode}, expected {wanted}", key)
                return
            if decode:
                im.load()
                if which == "label" and info.num_classes is not None:
                    _check_label_values(member, np.asarray(im), info, key, check)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for a corrupt PNG
        check.add("bad_mask", f"{member} does not decode: {exc}", key)


def _check_label_values(member: str, label: np.ndarray, info: _DatasetInfo, key: str, check: ShardCheck) -> None:
    values = np.unique(label)
    bad = values[(values >= info.num_classes) & (values != info.ignore_index)]
    if bad.size:
        check.add("bad_mask", f"{member} holds class values {bad[:5].tolist()} outside "
                              f"0..{info.num_classes - 1} and not the ignore value {info.ignore_index}", key)


def _read_record(out: OutputDir, name: str, check: ShardCheck) -> Optional[dict[str, Any]]:
    try:
        record = json.loads(out.read_bytes(done_path(name)))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (OSError, ValueError) as exc:
        check.add("record_mismatch", f"{done_path(name)} is unreadable: {exc}")
        return None


def _check_record(
    name: str, record: Optional[dict[str, Any]], rows: Optional[list[dict[str, Any]]],
    has: tuple[bool, bool, bool], info: _DatasetInfo, check: ShardCheck,
) -> None:
    has_manifest, has_mask, has_record = has
    if not has_record:
        if has_manifest or has_mask:
            check.add("missing_record", "outputs exist but _done/NAME.json does not (incomplete shard)")
        return
    if record is None:
        return  # unreadable: reported by _read_record
    check.complete = True
    expect: dict[str, Any] = {"shard": name}
    if rows is not None:
        expect.update(samples=check.rows, ok=check.ok_rows, errors=check.error_rows)
    if info.fingerprint is not None:
        expect["config_fingerprint"] = info.fingerprint
    if info.content_fingerprint and record.get("fingerprint"):  # both written since content fingerprints
        expect["fingerprint"] = info.content_fingerprint
    for field_name, value in expect.items():
        if record.get(field_name) != value:
            check.add("record_mismatch", f"{done_path(name)} says {field_name}={record.get(field_name)!r}, "
                                         f"the files say {value!r}")
    for field_name, rel, present in (("manifest", manifest_path(name), has_manifest),
                                     ("mask_shard", mask_shard_path(name), has_mask)):
        recorded = record.get(field_name)
        if recorded is not None and not str(recorded).endswith(rel):
            check.add("record_mismatch", f"{done_path(name)} names {field_name} {recorded!r}, expected {rel!r}")
        if not present and (field_name == "manifest" or check.ok_rows):
            check.add("record_mismatch", f"{done_path(name)} exists but {rel} does not")
    _check_accounting(record, check)


def _check_accounting(record: dict[str, Any], check: ShardCheck) -> None:
    """Every member read belongs to a sample or is counted skipped, and a sample has >= 1 member."""
    members = int(record.get("members") or 0)
    skipped = record.get("skipped_members") or {}
    if members == 0:
        return  # a record from before member accounting
    if not isinstance(skipped, dict) or any(not isinstance(v, int) or v < 0 for v in skipped.values()):
        check.add("accounting", f"skipped_members is not a map of counts: {skipped!r}")
        return
    if members - sum(skipped.values()) < int(record.get("samples") or 0):
        check.add("accounting", f"{members} members, {sum(skipped.values())} skipped, but "
                                f"{record.get('samples')} samples: members are unaccounted for")


def _read_dataset_json(out: OutputDir) -> tuple[_DatasetInfo, list[Problem]]:
    try:
        meta = DatasetMeta.from_json(out.read_bytes(layout.DATASET_JSON), strict=True)
        info = _DatasetInfo(
            label_mode=meta.label_mode,
            num_classes=meta.num_classes,
            ignore_index=meta.ignore_index,
            fingerprint=meta.config_fingerprint,
            content_fingerprint=getattr(meta, "fingerprint", None) or None,
        )
        return info, []
    except FileNotFoundError:
        detail = "dataset.json does not exist"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = f"dataset.json is unreadable or incomplete: {exc!r}"
    return _DatasetInfo(None, None, None, None), [Problem("bad_dataset_json", None, None, detail)]


def _read_manifest(out: OutputDir, name: str, check: ShardCheck) -> Optional[list[dict[str, Any]]]:
    rel = manifest_path(name)
    try:
        with out.open(rel) as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowException) as exc:
        check.add("bad_manifest", f"{rel} cannot be read: {exc}")
        return None
    want = manifest_schema()
    if not table.schema.equals(want, check_metadata=False):
        diff = _schema_diff(table.schema, want)
        check.add("bad_manifest", f"{rel} does not have schema manifest-v1: {diff}")
        return None
    columns = ["key", "sample_index", "status", "error", "width", "height", "mask_shard",
               "label_member", "conf_member"]
    return table.select(columns).to_pylist()


def _schema_diff(got: pa.Schema, want: pa.Schema) -> str:
    for f in want:
        if f.name not in got.names:
            return f"column {f.name!r} is missing"
        g = got.field(f.name)
        if g.type != f.type or g.nullable != f.nullable:
            return f"column {f.name!r} is {g.type}{'' if g.nullable else ' not null'}, expected {f.type}"
    extra = [n for n in got.names if n not in want.names]
    return f"extra columns {extra}" if extra else "column order differs"


def _input_keys_or_none(spec: ShardSpec, storage_options: Optional[dict[str, Any]],
                        check: ShardCheck) -> Optional[list[str]]:
    try:
        return input_keys(spec.url, storage_options)
    except (OSError, tarfile.TarError, ValueError) as exc:
        check.add("unreadable_input", f"cannot read input shard {spec.url}: {exc}")
        return None


def input_keys(url: str, storage_options: Optional[dict[str, Any]] = None) -> list[str]:
    """Sample keys of one input shard in order, grouped exactly as `pseudolabel run` groups them."""
    report = ReadReport()
    keys = [s.key for s in iter_samples(url, [], report, storage_options)]
    if report.unreadable:
        raise OSError(report.failure)
    return keys
