"""Progress of a (remote) run, read from its OUTPUT alone: works from any machine that can read it.

Completed shards (`_done/*.json`) against planned shards (INPUT, when given), samples and
throughput from the completion records, who holds the lock and how fresh its heartbeat is, and
the totals of `_stats.json` when the run has written it. Reads one listing of `_done/`, the
compacted index `_index/done.parquet` and, in one batched call, only the records newer than it.
Used by `pseudolabel progress` (and the `jobs/progress.py` wrapper).
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any, Optional


def snapshot(output: str, input_spec: Optional[str], options: dict[str, Any]) -> dict[str, Any]:
    from pipeline.io.shards import expand_input
    from pipeline.io.storage import Storage
    from pipeline.run.done_index import load_done_index
    from pipeline.run.lock import read_lock

    out = Storage(output, options)
    out.fs.invalidate_cache()  # the filesystem instance is reused between snapshots: list afresh
    # One listing plus the compacted index; only records newer than the index are read (batched).
    index = load_done_index(out)
    samples, ok, errors = index.totals()
    table = index.table
    snap: dict[str, Any] = {
        "done_shards": len(index), "samples": samples, "ok": ok, "errors": errors,
        "workers": len(set(table.column("worker").to_pylist()) - {None}),
        "records_read": index.records_read,  # records the index did not have yet
    }
    if input_spec:
        planned = {s.name for s in expand_input(input_spec, options)}
        snap["planned_shards"] = len(planned)
        snap["remaining_shards"] = len(planned - index.names)
    started = [_ts(t) for t in table.column("started_at").to_pylist() if t]
    finished = [_ts(t) for t in table.column("finished_at").to_pylist() if t]
    if started and finished:
        span = max(max(finished) - min(started), 1.0)
        snap["shards_per_hour"] = round(3600 * len(finished) / span, 1)  # over the records' time span
        snap["last_shard_finished"] = dt.datetime.fromtimestamp(max(finished), dt.timezone.utc).isoformat(
            timespec="seconds")
    lock = read_lock(output, options)
    if lock is not None:
        snap["lock"] = {"run": lock.run_id, "host": lock.host, "pid": lock.pid,
                        "started_at": lock.started_at,
                        "heartbeat_age_s": round(lock.heartbeat_age(), 1)}
    if out.exists("_stats.json"):
        stats = json.loads(out.read_bytes("_stats.json"))
        snap["stats"] = {k: v for k, v in stats.items() if not isinstance(v, (dict, list))}
    return snap


def format_snapshot(snap: dict[str, Any]) -> str:
    planned = snap.get("planned_shards")
    done = f"{snap['done_shards']}/{planned}" if planned is not None else str(snap["done_shards"])
    lines = [f"shards done: {done}"
             + (f" ({snap['remaining_shards']} to go)" if planned is not None else "")
             + f"; samples: {snap['samples']} ({snap['ok']} ok, {snap['errors']} errors); "
             f"workers seen: {snap['workers']}"]
    if "shards_per_hour" in snap:
        lines.append(f"rate: {snap['shards_per_hour']} shards/h; "
                     f"last shard finished {snap['last_shard_finished']}")
    lock = snap.get("lock")
    lines.append("lock: free (no run in progress)" if lock is None else
                 f"lock: run {lock['run']} on {lock['host']} pid {lock['pid']}, "
                 f"heartbeat {lock['heartbeat_age_s']}s ago")
    if "stats" in snap:
        lines.append("_stats.json: " + ", ".join(f"{k}={v}" for k, v in snap["stats"].items()))
    return "\n".join(lines)


def _ts(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()
