"""The driver of `pseudolabel run`: plan the shards, skip complete ones, label the rest on Ray actors,
write dataset.json and _stats.json.

Exactly once: a shard is complete when `_done/NAME.json` exists (written after its mask shard and
manifest). A run skips complete shards, relabels every other shard from scratch (its outputs are
replaced in one step each), and refuses an OUTPUT labeled under another config fingerprint
unless `overwrite` (which first removes the old completion records, so no old shard counts as
complete under the new config).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from pipeline.run.actor import EngineFactory, FaultFactory, LabelWorker
from pipeline.run.tally import RunTally
from pipeline.run.done_index import INDEX_PATH, DoneIndex, load_done_index
from pipeline.config import Config
from pipeline.identity import Identity, IdentityMismatch, mismatch_message
from pipeline.run.preflight import Preflight, preflight
from pipeline.run.startup import setup_workers
from pipeline.run.termination import GracefulStop, Terminated
from pipeline.run.summary import DEFAULT_MAX_SAMPLE_FAILURE, RunSummary, stats_doc, summarize  # noqa: F401 (re-exported)
from pipeline.run.summary import FAILED_SHARDS_LISTED
from pipeline.run.shard_check import describe as describe_relabel, forget_records, plan_relabel
from pipeline.run.shard_check import end_check as cheap_relabel_check
from pipeline.errors import UserError
from pipeline.run.placement import cpus_per_gpu_actor
from pipeline.run.lock import LockHeldError
from pipeline.io import layout
from pipeline.io.output_dir import OutputDir
from pipeline.io.records import DatasetMeta, VocabEntry
from pipeline.io.masks import LabelFormat
from pipeline.run.progress import ProgressBoard
from pipeline.io.shards import ShardSpec, pipe_command
from pipeline.run.stage import CRASHED, DONE, FAILED, UNREADABLE, ShardResult
from pipeline.io.storage import Storage

log = logging.getLogger(__name__)

DATASET_JSON = layout.DATASET_JSON
STATS_JSON = layout.STATS_JSON
ACTOR_START_TIMEOUT_S = 900.0  # loading a large model from a cold object store can take minutes
VERSIONED_PACKAGES = ("pseudolabel", "torch", "open_clip_torch", "ray", "pyarrow", "numpy", "pillow", "webdataset")
OUTPUT_DIRS = ("_done", "masks", "manifest")


class Progress:
    """Receives live progress; the command line shows it, the library default ignores it."""

    def start(self, total_shards: int, skipped: int) -> None: ...

    def update(self, samples: int, ok: int, errors: int) -> None: ...  # cumulative, this run

    def shard_finished(self, result: ShardResult) -> None: ...


def run_pipeline(input_spec: str, output: str, cfg: Config, *, overwrite: bool = False,
                 ray_address: Optional[str] = None, progress: Optional[Progress] = None,
                 engine_factory: Optional[EngineFactory] = None, log_level: int = logging.INFO,
                 break_lock: bool = False, lock_stale_after_s: Optional[float] = None,
                 fault_factory: Optional[FaultFactory] = None, allow_pipe: bool = False,
                 repair: bool = False, graceful: Optional[GracefulStop] = None) -> RunSummary:
    """Label every incomplete shard of `input_spec` into `output`; see the module doc for semantics.
    `fault_factory` (tests) builds a hook in each worker that sees its progress (pipeline.run.actor).
    `repair` (--repair): also relabel shards whose files fail the checks that need them read
    (pipeline.run.shard_check); every run relabels those whose record fails the cheap check.

    The whole run holds OUTPUT/_lock.json (`break_lock`, `lock_stale_after_s`: see
    `pipeline.run.lock.RunLock`); when another run takes it over, no more shards are handed out
    and the run ends with `LockHeldError`. `graceful` (the command line's SIGTERM handling,
    pipeline.run.termination): once requested, no more shards are handed out, those in flight
    finish, and the run ends with `Terminated`."""
    # Before the lock and Ray: a typo fails in a second. `allow_pipe`: --allow-pipe (docs/security.md).
    pre = preflight(input_spec, output, cfg, allow_pipe=allow_pipe)
    out = OutputDir(output, cfg.io.storage_options)
    with out.locked(break_lock=break_lock, stale_after_s=lock_stale_after_s) as lock:
        return _run_locked(input_spec, pre, out, cfg, overwrite=overwrite, ray_address=ray_address,
                           progress=progress or Progress(), engine_factory=engine_factory,
                           log_level=log_level, lock_lost=lock.lost, fault_factory=fault_factory,
                           repair=repair, graceful=graceful)


def _run_locked(input_spec: str, pre: Preflight, storage: OutputDir, cfg: Config, *, overwrite: bool, ray_address: Optional[str],
                progress: Progress, engine_factory: Optional[EngineFactory], log_level: int,
                lock_lost: threading.Event, fault_factory: Optional[FaultFactory] = None,
                repair: bool = False, graceful: Optional[GracefulStop] = None) -> RunSummary:
    t0 = time.monotonic()
    output = storage.root
    shards = pre.shards
    dataset = _read_dataset(storage)
    records = _done_records(storage, shards)
    _check_compatible(dataset, records, pre.identity, output, overwrite)
    if overwrite and (dataset is not None or records):
        _clear_outputs(storage)
        dataset, records = None, DoneIndex()
    # A record that does not check (changed input, damaged files) is not complete: removed first,
    # then its shard is labeled like any other (pipeline.run.shard_check).
    relabel, inputs = plan_relabel(storage, shards, records, cfg.io.storage_options, repair)
    if relabel:
        forget_records(storage, relabel.names)
        records = records.without(relabel.names)
    storage.clean_tmp()
    pending = [s for s in shards if s.name not in records]
    log.info("%d shards in %s: %d complete, %d to label%s", len(shards), input_spec, len(records), len(pending),
             f" ({describe_relabel(relabel)} relabeled)" if relabel else "")
    progress.start(len(pending), len(records))
    results = RunTally()
    label_seconds = 0.0
    if pending or dataset is None:
        def on_ready(described: dict[str, Any]) -> None:
            # Written before the first shard is handed out: every record then has a dataset.json
            # that says what it was labeled under.
            nonlocal dataset
            dataset = _ensure_dataset_json(storage, dataset, cfg, described, pre.identity, output, overwrite)

        try:
            results, label_seconds = _label_on_ray(pending, cfg, output, ray_address, progress, engine_factory,
                                                   log_level, lock_lost, pre.identity, on_ready,
                                                   fault_factory=fault_factory, graceful=graceful)
        except Terminated as exc:  # SIGTERM: no _stats.json (like Ctrl-C); the lock is released above
            exc.complete = len(records) + exc.labeled
            raise
        if lock_lost.is_set():
            # Another run owns OUTPUT now: leave _stats.json to it.
            raise LockHeldError(f"lost the lock on {output} to another run; stopped handing out shards")
    complete = _complete_at_end(storage, shards, inputs)
    summary = summarize(input_spec, output, len(shards), complete, results, dataset,
                        pending={s.name for s in pending}, skipped=len(records))
    summary.shards_pending = len(pending)
    summary.relabeled = relabel.counts()
    summary.relabeled_shards = [{"shard": n, "reason": k, "detail": d}
                                for n, (k, d) in sorted(relabel.shards.items())[:FAILED_SHARDS_LISTED]]
    summary.seconds = round(time.monotonic() - t0, 3)
    summary.labeling_seconds = round(label_seconds, 3)
    if label_seconds > 0:
        summary.images_per_s = round((summary.images_ok + summary.images_failed) / label_seconds, 2)
    storage.write_bytes(layout.STATS_JSON, json.dumps(stats_doc(summary), indent=1).encode())
    storage.clean_tmp()
    return summary


# -- planning ---------------------------------------------------------------------------------

@dataclass
class RunPlan:
    """What `run` would do (`--dry-run`): nothing is written, Ray is not started."""
    input: str
    output: str
    shards_total: int
    to_label: list[str]  # shard names, first PLAN_NAMES_LISTED
    to_label_count: int
    to_skip_count: int
    fingerprint: str
    weights: str
    model: str
    overwrite: bool
    pipe_commands: list[str] = field(default_factory=list)  # shell commands of the shards to label (--allow-pipe)
    # Recorded shards relabeled because their record does not check (pipeline.run.shard_check):
    relabel: dict[str, int] = field(default_factory=dict)  # reason kind -> shards
    changed: list[str] = field(default_factory=list)  # input changed since labeled, first PLAN_NAMES_LISTED
    damaged: list[str] = field(default_factory=list)  # record or files damaged, first PLAN_NAMES_LISTED
    repair: bool = False


PLAN_NAMES_LISTED = 20


def plan_run(input_spec: str, output: str, cfg: Config, *, overwrite: bool = False,
             allow_pipe: bool = False, repair: bool = False) -> RunPlan:
    """The same checks as `run_pipeline` up to the point where it would start Ray, read-only."""
    pre = preflight(input_spec, output, cfg, allow_pipe=allow_pipe)
    storage = OutputDir(output, cfg.io.storage_options)
    dataset = _read_dataset(storage)
    records = load_done_index(storage).restrict(s.name for s in pre.shards)  # not saved: read-only
    _check_compatible(dataset, records, pre.identity, output, overwrite)
    relabel = plan_relabel(storage, pre.shards, records, cfg.io.storage_options, repair)[0] if not overwrite else None
    skip = set() if relabel is None else records.names - relabel.names
    pending = [s.name for s in pre.shards if s.name not in skip]
    model = cfg.model.student or f"{cfg.model.name} / {pre.identity.sources.get('model.pretrained')}"
    return RunPlan(input_spec, output, len(pre.shards), pending[:PLAN_NAMES_LISTED], len(pending),
                   len(pre.shards) - len(pending), pre.identity.fingerprint, pre.identity.weights, str(model),
                   overwrite, _pipe_commands(pre.shards, set(pending)), **_relabel_fields(relabel, repair))


def _relabel_fields(relabel: Any, repair: bool) -> dict[str, Any]:
    if relabel is None:
        return {"repair": repair}
    damaged = sorted(n for n, (k, _) in relabel.shards.items() if k != "input_changed")[:PLAN_NAMES_LISTED]
    return {"relabel": relabel.counts(), "changed": relabel.listed("input_changed")[:PLAN_NAMES_LISTED],
            "damaged": damaged, "repair": repair}


def _pipe_commands(shards: list[ShardSpec], pending: set[str]) -> list[str]:
    """Every shell command the run would start (`pipe:` shards still to label), for --dry-run."""
    return [cmd for s in shards if s.name in pending and (cmd := pipe_command(s.url)) is not None]


def _done_records(storage: Storage, shards: list[ShardSpec]) -> DoneIndex:
    """Completion records of the planned shards: the `_done/` listing plus the compacted index;
    only records the index lacks are read, in one batched call (pipeline.run.done_index)."""
    index = load_done_index(storage)
    if index.changed:
        index.save(storage)  # the next resume reads none of them again
    return index.restrict(s.name for s in shards)


def _complete_at_end(storage: OutputDir, shards: list[ShardSpec], inputs: dict[str, Any]) -> DoneIndex:
    """The planned shards complete on disk now: their record exists and passes the cheap check
    (one listing of OUTPUT; the index is refreshed with the records this run wrote)."""
    records = _done_records(storage, shards)
    bad, _ = cheap_relabel_check(storage, shards, records, inputs)
    for name, (kind, detail) in sorted(bad.shards.items())[:5]:
        log.warning("shard %s: its completion record does not check after the run (%s: %s); not complete",
                    name, kind, detail)
    return records.without(bad.names) if bad else records


def _refresh_done_index(storage: Storage) -> None:
    """Fold this run's new records into the index (reads only those, in one batched call)."""
    index = load_done_index(storage)
    if index.changed:
        index.save(storage)


def _check_compatible(dataset: Optional[DatasetMeta], records: Any, mine: Identity, output: str,
                      overwrite: bool) -> None:
    """Refuse an OUTPUT labeled under another content fingerprint, naming every differing key."""
    if overwrite:
        return
    advice = "Use the same settings and files, a new OUTPUT, or --overwrite to relabel everything"
    if dataset is not None:
        if not dataset.fingerprint:
            raise UserError(f"OUTPUT {output} was made by an older pseudolabel whose fingerprint hashed file paths, "
                            f"not their contents (config fingerprint {dataset.config_fingerprint}), so it cannot be "
                            "checked against this run; use a new OUTPUT, or --overwrite to relabel everything")
        theirs = Identity.from_dict(dataset.identity)
        if dataset.fingerprint != mine.fingerprint:
            diffs = mine.differences(theirs) or []
            raise IdentityMismatch(mismatch_message(diffs, f"OUTPUT {output} was labeled with fingerprint "
                                                    f"{dataset.fingerprint}, this run has {mine.fingerprint}",
                                                    "OUTPUT has", "this run has", advice))
    for r in records.values():  # once per run, at planning; a record must agree with dataset.json
        fp = r.get("fingerprint")
        if fp != mine.fingerprint:
            kind = ("an older pseudolabel's fingerprint (paths, not contents)" if not fp else f"fingerprint {fp}")
            raise IdentityMismatch(f"OUTPUT {output}: shard {r.get('shard')} was labeled under {kind}, this run has "
                                   f"{mine.fingerprint}; mixing them would give a dataset with two labelings. {advice}")


def _clear_outputs(storage: OutputDir) -> None:
    # Completion records go first: if this is interrupted, no stale shard still counts as complete.
    # Only our own files, never through a symlinked folder (OutputDir.clear, docs/security.md).
    storage.clear(extra_files=(INDEX_PATH,))
    log.warning("--overwrite: removed previous outputs under %s", storage.url)


# -- Ray --------------------------------------------------------------------------------------

def _label_on_ray(pending: list[ShardSpec], cfg: Config, output: str, ray_address: Optional[str],
                  progress: Progress, engine_factory: Optional[EngineFactory], log_level: int,
                  stop: Optional[threading.Event] = None, identity: Optional[Identity] = None,
                  on_ready: Optional[Any] = None, fault_factory: Optional[FaultFactory] = None,
                  graceful: Optional[GracefulStop] = None) -> tuple[RunTally, float]:
    """Start the workers, check what they loaded against `identity`, call `on_ready(described)`,
    then hand out `pending`; returns this run's tally and its labeling seconds. Raises
    `Terminated` when `graceful` was requested (SIGTERM), once the shards in flight are done."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.run.dispatch import Dispatcher

    with ray_session(cfg, ray_address):
        if graceful is not None:
            graceful.install()  # ray.init replaced our SIGTERM handler with its own (which aborts)
            graceful.check()
        count, options = _actor_plan(cfg, len(pending))
        board_name = f"pseudolabel-progress-{uuid.uuid4().hex[:12]}"
        # Pinned to the driver's node: losing a worker node must not take the progress board along.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        board = ray.remote(ProgressBoard).options(name=board_name, num_cpus=0, scheduling_strategy=here).remote()
        worker_cls = ray.remote(LabelWorker).options(**options)
        expected = identity.to_dict() if identity is not None else None
        actors = [worker_cls.remote(cfg, output, board_name, engine_factory, log_level, fault_factory, expected)
                  for _ in range(count)]
        dispatcher = None
        try:
            workers = (setup_workers(actors, identity, ACTOR_START_TIMEOUT_S,
                                     should_stop=graceful.check if graceful is not None else None)
                       if identity is not None else None)
            ready = workers.ready if workers is not None else actors
            if on_ready is not None:
                on_ready(workers.described if workers is not None else ray.get(ready[0].describe.remote()))
            dispatcher = Dispatcher(ready, board, cfg.ray.max_shard_retries,
                                    on_progress=progress.update, on_result=progress.shard_finished,
                                    stall_timeout_s=cfg.ray.stall_timeout_s, stop=stop,
                                    max_actor_restarts=cfg.ray.max_actor_restarts,
                                    shard_stall_timeout_s=cfg.ray.shard_stall_timeout_s, drain=graceful,
                                    reviving=workers.restarting if workers is not None else ())
            t0 = time.monotonic()
            results = dispatcher.run(pending)
            if graceful is not None and graceful.requested.is_set():
                raise Terminated("stopped by SIGTERM")  # counted just below
            return results, time.monotonic() - t0
        except Terminated as exc:
            exc.labeled = dispatcher.tally.shards_complete if dispatcher is not None else 0
            raise
        finally:
            for actor in [*actors, board]:
                ray.kill(actor)


@contextlib.contextmanager
def ray_session(cfg: Config, address: Optional[str]) -> Iterator[None]:
    """Join the Ray already initialised in this process, the cluster at --ray-address / RAY_ADDRESS /
    ray.address, or start a local one (shut down again at the end)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if address:
        ray.init(address=address)
    else:
        # "local": always a fresh local instance, never a stray cluster found through /tmp/ray.
        ray.init(address="local", include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": _package_root()}})
    try:
        yield
    finally:
        ray.shutdown()


def _package_root() -> str:
    # A local Ray's workers start in another directory; let them import this checkout of `pipeline`.
    import pipeline

    root = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
    extra = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{extra}" if extra else root


def _actor_plan(cfg: Config, pending: int) -> tuple[int, dict[str, Any]]:
    import ray

    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    options: dict[str, Any] = {"max_restarts": cfg.ray.max_actor_restarts, "max_task_retries": 0,
                               "num_cpus": cfg.ray.cpus_per_actor}
    # An explicit cuda device asks for GPU actors even before GPU nodes have joined (autoscaling,
    # KubeRay): Ray queues them until a GPU is free, and wait_ready waits for that.
    use_gpus = cfg.device != "cpu" and (gpus > 0 or cfg.device.startswith("cuda"))
    if use_gpus:
        per_actor = cfg.ray.gpus_per_actor
        options["num_gpus"] = per_actor
        # The actor's decode pool is sized from this reservation (stage.decode_threads).
        options["num_cpus"] = cfg.ray.cpus_per_gpu_actor or cpus_per_gpu_actor(ray.nodes(), per_actor)
        count = cfg.ray.num_actors or max(1, int(gpus / per_actor + 1e-9))
    else:
        count = cfg.ray.num_actors or cfg.ray.cpu_actors
        fit = int(resources.get("CPU", 0) // max(cfg.ray.cpus_per_actor, 1e-9))
        if fit < 1:
            raise UserError(f"the Ray cluster has {resources.get('CPU', 0)} CPUs, fewer than ray.cpus_per_actor "
                            f"({cfg.ray.cpus_per_actor}); lower it or add CPUs")
        if count > fit:
            log.warning("%d CPU actors requested but only %d fit in %s CPUs", count, fit, resources.get("CPU"))
            count = fit
    count = max(1, min(count, pending))
    log.info("starting %d label workers (%s)", count,
             f"{options['num_gpus']} GPU and {options['num_cpus']} CPUs each" if use_gpus
             else f"{cfg.ray.cpus_per_actor} CPU each")
    return count, options


# -- dataset.json, stats ------------------------------------------------------------------------

def _ensure_dataset_json(storage: OutputDir, dataset: Optional[DatasetMeta], cfg: Config,
                         described: dict[str, Any], identity: Identity, output: str,
                         overwrite: bool) -> DatasetMeta:
    if dataset is not None:
        return dataset  # its identity was compared with this run's in _check_compatible
    fmt = LabelFormat(described["num_classes"], cfg.labels.min_confidence, cfg.io.png_compression)
    meta = DatasetMeta(
        vocabulary=[VocabEntry(i, n, list(s), tuple(c)) for i, (n, s, c) in  # type: ignore[arg-type]
                    enumerate(zip(described["names"], described["synonyms"], described["colors"]))],
        num_classes=described["num_classes"],
        ignore_index=fmt.ignore_index,
        label_dtype=fmt.dtype_name,
        config=cfg.to_dict(),
        config_fingerprint=identity.fingerprint,
        model=described["model"],
        fingerprint=identity.fingerprint,
        identity=identity.to_dict(),
        versions=_versions(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    storage.write_dataset_meta(meta)
    return meta


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    if "pseudolabel" not in out:
        from pipeline import __version__

        out["pseudolabel"] = __version__
    return out


def _read_dataset(storage: OutputDir) -> Optional[DatasetMeta]:
    try:
        return storage.dataset_meta_or_none()
    except UserError as exc:
        raise UserError(f"{exc}; delete it to relabel that part") from exc
