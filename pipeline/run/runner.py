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
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional

from pipeline.run.actor import EngineFactory, FaultFactory, LabelWorker
from pipeline.run.tally import RunTally
from pipeline.run.done_index import INDEX_PATH, DoneIndex, load_done_index
from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.run.lock import LockHeldError
from pipeline.io import layout
from pipeline.io.output_dir import OutputDir
from pipeline.io.records import DatasetMeta, VocabEntry
from pipeline.io.masks import LabelFormat
from pipeline.run.progress import ProgressBoard
from pipeline.io.shards import ShardSpec, expand_input
from pipeline.run.stage import CRASHED, DONE, FAILED, UNREADABLE, ShardResult
from pipeline.io.storage import Storage

log = logging.getLogger(__name__)

DATASET_JSON = layout.DATASET_JSON
STATS_JSON = layout.STATS_JSON
DEFAULT_MAX_SAMPLE_FAILURE = 0.01  # exit code 1 above this share of failed samples (or any failed shard)
ACTOR_START_TIMEOUT_S = 900.0  # loading a large model from a cold object store can take minutes
VERSIONED_PACKAGES = ("pseudolabel", "torch", "open_clip_torch", "ray", "pyarrow", "numpy", "pillow", "webdataset")
OUTPUT_DIRS = ("_done", "masks", "manifest")


class Progress:
    """Receives live progress; the command line shows it, the library default ignores it."""

    def start(self, total_shards: int, skipped: int) -> None: ...

    def update(self, samples: int, ok: int, errors: int) -> None: ...  # cumulative, this run

    def shard_finished(self, result: ShardResult) -> None: ...


@dataclass
class RunSummary:
    input: str
    output: str
    shards_total: int = 0
    shards_labeled: int = 0  # made complete by this run
    shards_skipped: int = 0  # complete before this run
    failed_shards: list[dict[str, Any]] = field(default_factory=list)  # shard, source, status, reason
    images_ok: int = 0  # this run
    images_failed: int = 0
    dataset_images_ok: int = 0  # over every complete shard of INPUT, skipped ones included
    dataset_images_failed: int = 0
    seconds: float = 0.0  # wall time of the whole run, Ray start-up included
    labeling_seconds: float = 0.0  # from the first shard handed out to the last result
    images_per_s: float = 0.0  # samples (ok + failed) per labeling second
    class_pixel_share: dict[str, float] = field(default_factory=dict)  # over dataset images
    error_kinds: dict[str, int] = field(default_factory=dict)  # this run
    conversions: dict[str, int] = field(default_factory=dict)  # this run
    # Member accounting (pipeline.io.reader): tar members read, and those in no sample by reason.
    members: int = 0  # this run's complete shards
    skipped_members: dict[str, int] = field(default_factory=dict)  # this run's complete shards
    dataset_members: int = 0  # every complete shard
    dataset_skipped_members: dict[str, int] = field(default_factory=dict)

    @property
    def sample_failure_rate(self) -> float:
        total = self.dataset_images_ok + self.dataset_images_failed
        return self.dataset_images_failed / total if total else 0.0

    @property
    def shard_failure_rate(self) -> float:
        return len(self.failed_shards) / self.shards_total if self.shards_total else 0.0

    def exceeds(self, max_failure_rate: Optional[float] = None) -> bool:
        """Default: any failed shard, or more than 1% failed samples; else both rates vs the limit."""
        if max_failure_rate is None:
            return bool(self.failed_shards) or self.sample_failure_rate > DEFAULT_MAX_SAMPLE_FAILURE
        return self.shard_failure_rate > max_failure_rate or self.sample_failure_rate > max_failure_rate


def run_pipeline(input_spec: str, output: str, cfg: Config, *, overwrite: bool = False,
                 ray_address: Optional[str] = None, progress: Optional[Progress] = None,
                 engine_factory: Optional[EngineFactory] = None, log_level: int = logging.INFO,
                 break_lock: bool = False, lock_stale_after_s: Optional[float] = None,
                 fault_factory: Optional[FaultFactory] = None) -> RunSummary:
    """Label every incomplete shard of `input_spec` into `output`; see the module doc for semantics.
    `fault_factory` (tests) builds a hook in each worker that sees its progress (pipeline.run.actor).

    The whole run holds OUTPUT/_lock.json (`break_lock`, `lock_stale_after_s`: see
    `pipeline.run.lock.RunLock`); when another run takes it over, no more shards are handed out
    and the run ends with `LockHeldError`."""
    out = OutputDir(output, cfg.io.storage_options)
    with out.locked(break_lock=break_lock, stale_after_s=lock_stale_after_s) as lock:
        return _run_locked(input_spec, out, cfg, overwrite=overwrite, ray_address=ray_address,
                           progress=progress or Progress(), engine_factory=engine_factory,
                           log_level=log_level, lock_lost=lock.lost, fault_factory=fault_factory)


def _run_locked(input_spec: str, storage: OutputDir, cfg: Config, *, overwrite: bool, ray_address: Optional[str],
                progress: Progress, engine_factory: Optional[EngineFactory], log_level: int,
                lock_lost: threading.Event, fault_factory: Optional[FaultFactory] = None) -> RunSummary:
    t0 = time.monotonic()
    output = storage.root
    shards = expand_input(input_spec, cfg.io.storage_options)
    dataset = _read_dataset(storage)
    records = _done_records(storage, shards)
    _check_compatible(dataset, records, cfg, output, overwrite)
    if overwrite and (dataset is not None or records):
        _clear_outputs(storage)
        dataset, records = None, {}
    storage.clean_tmp()
    pending = [s for s in shards if s.name not in records]
    log.info("%d shards in %s: %d complete, %d to label", len(shards), input_spec, len(records), len(pending))
    progress.start(len(pending), len(records))
    results = RunTally()
    label_seconds = 0.0
    if pending or dataset is None:
        results, described, label_seconds = _label_on_ray(pending, cfg, output, ray_address, progress,
                                                          engine_factory, log_level, lock_lost,
                                                          fault_factory=fault_factory)
        if lock_lost.is_set():
            # Another run owns OUTPUT now: leave dataset.json and _stats.json to it.
            raise LockHeldError(f"lost the lock on {output} to another run; stopped handing out shards")
        dataset = _ensure_dataset_json(storage, dataset, cfg, described, output, overwrite)
    _refresh_done_index(storage)
    summary = _summarize(input_spec, output, shards, records, results, dataset)
    summary.seconds = round(time.monotonic() - t0, 3)
    summary.labeling_seconds = round(label_seconds, 3)
    if label_seconds > 0:
        summary.images_per_s = round((summary.images_ok + summary.images_failed) / label_seconds, 2)
    storage.write_bytes(layout.STATS_JSON, json.dumps(_stats_doc(summary), indent=1).encode())
    storage.clean_tmp()
    return summary


# -- planning ---------------------------------------------------------------------------------

def _done_records(storage: Storage, shards: list[ShardSpec]) -> DoneIndex:
    """Completion records of the planned shards: the `_done/` listing plus the compacted index;
    only records the index lacks are read, in one batched call (pipeline.run.done_index)."""
    index = load_done_index(storage)
    if index.changed:
        index.save(storage)  # the next resume reads none of them again
    return index.restrict(s.name for s in shards)


def _refresh_done_index(storage: Storage) -> None:
    """Fold this run's new records into the index (reads only those, in one batched call)."""
    index = load_done_index(storage)
    if index.changed:
        index.save(storage)


def _check_compatible(dataset: Optional[DatasetMeta], records: dict[str, dict[str, Any]], cfg: Config,
                      output: str, overwrite: bool) -> None:
    if overwrite:
        return
    mine = cfg.fingerprint()
    theirs = {dataset.config_fingerprint} if dataset else set()
    theirs |= {r.get("config_fingerprint") for r in records.values()}
    theirs.discard(mine)
    if theirs:
        raise UserError(
            f"OUTPUT {output} was labeled with config fingerprint {sorted(map(str, theirs))[0]}, this config has "
            f"{mine}; mixing them would give a dataset with two labelings. Use the same config "
            "(see dataset.json 'config'), a new OUTPUT, or --overwrite to relabel everything")


def _clear_outputs(storage: Storage) -> None:
    # Completion records go first: if this is interrupted, no stale shard still counts as complete.
    for sub in OUTPUT_DIRS:
        for name in storage.listdir(sub):
            storage.remove(f"{sub}/{name}")
    for name in (DATASET_JSON, STATS_JSON, INDEX_PATH):
        storage.remove(name)
    log.warning("--overwrite: removed previous outputs under %s", storage.url)


# -- Ray --------------------------------------------------------------------------------------

def _label_on_ray(pending: list[ShardSpec], cfg: Config, output: str, ray_address: Optional[str],
                  progress: Progress, engine_factory: Optional[EngineFactory], log_level: int,
                  stop: Optional[threading.Event] = None,
                  fault_factory: Optional[FaultFactory] = None) -> tuple[RunTally, dict[str, Any], float]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline.run.dispatch import Dispatcher, wait_ready

    with ray_session(cfg, ray_address):
        count, options = _actor_plan(cfg, len(pending))
        board_name = f"pseudolabel-progress-{uuid.uuid4().hex[:12]}"
        # Pinned to the driver's node: losing a worker node must not take the progress board along.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        board = ray.remote(ProgressBoard).options(name=board_name, num_cpus=0, scheduling_strategy=here).remote()
        worker_cls = ray.remote(LabelWorker).options(**options)
        actors = [worker_cls.remote(cfg, output, board_name, engine_factory, log_level, fault_factory)
                  for _ in range(count)]
        try:
            ready, reasons = wait_ready(actors, ACTOR_START_TIMEOUT_S)
            if not ready:
                raise UserError(f"no Ray worker could load the engine: {reasons[0] if reasons else 'timeout'}")
            for reason in reasons:
                log.warning("a worker failed to start: %s", reason)
            described = ray.get(ready[0].describe.remote())
            dispatcher = Dispatcher(ready, board, cfg.ray.max_shard_retries,
                                    on_progress=progress.update, on_result=progress.shard_finished,
                                    stall_timeout_s=cfg.ray.stall_timeout_s, stop=stop,
                                    max_actor_restarts=cfg.ray.max_actor_restarts,
                                    shard_stall_timeout_s=cfg.ray.shard_stall_timeout_s)
            t0 = time.monotonic()
            results = dispatcher.run(pending)
            return results, described, time.monotonic() - t0
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
             f"{options['num_gpus']} GPU each" if use_gpus else f"{cfg.ray.cpus_per_actor} CPU each")
    return count, options


# -- dataset.json, stats ------------------------------------------------------------------------

def _ensure_dataset_json(storage: OutputDir, dataset: Optional[DatasetMeta], cfg: Config,
                         described: dict[str, Any], output: str, overwrite: bool) -> DatasetMeta:
    if dataset is not None:
        if dataset.model != described["model"] and not overwrite:
            raise UserError(f"OUTPUT {output} was labeled with model {dataset.model}, the workers loaded "
                            f"{described['model']}; use a new OUTPUT or --overwrite")
        return dataset
    fmt = LabelFormat(described["num_classes"], cfg.labels.min_confidence, cfg.io.png_compression)
    meta = DatasetMeta(
        vocabulary=[VocabEntry(i, n, list(s), tuple(c)) for i, (n, s, c) in  # type: ignore[arg-type]
                    enumerate(zip(described["names"], described["synonyms"], described["colors"]))],
        num_classes=described["num_classes"],
        ignore_index=fmt.ignore_index,
        label_dtype=fmt.dtype_name,
        config=cfg.to_dict(),
        config_fingerprint=cfg.fingerprint(),
        model=described["model"],
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


def _summarize(input_spec: str, output: str, shards: list[ShardSpec], records: DoneIndex | dict[str, dict[str, Any]],
               results: RunTally, dataset: Optional[DatasetMeta]) -> RunSummary:
    """Dataset totals from the records before this run plus this run's tally (no per-shard results)."""
    s = RunSummary(input=input_spec, output=output, shards_total=len(shards), shards_skipped=len(records))
    s.images_ok, s.images_failed = results.ok, results.errors
    s.error_kinds, s.conversions = dict(results.error_kinds), dict(results.conversions)
    s.shards_labeled = results.shards_complete
    class_pixels = list(results.class_pixels)
    s.dataset_images_ok, s.dataset_images_failed = results.ok, results.errors
    s.members, s.skipped_members = results.members, dict(results.skipped_members)
    s.dataset_members, s.dataset_skipped_members = results.members, dict(results.skipped_members)
    for r in records.values():
        s.dataset_images_ok += int(r.get("ok", 0))
        s.dataset_images_failed += int(r.get("errors", 0))
        s.dataset_members += int(r.get("members") or 0)
        _add_counts(s.dataset_skipped_members, r.get("skipped_members") or {})
        _add_pixels(class_pixels, r.get("class_pixels") or [])
        if r.get("status") in (FAILED, UNREADABLE, CRASHED):
            s.failed_shards.append({"shard": r["shard"], "source": r.get("source"), "status": r["status"],
                                    "reason": r.get("failure")})
    for f in results.failed:
        s.failed_shards.append({"shard": f.shard, "source": f.source, "status": f.status, "reason": f.failure})
    s.class_pixel_share = _class_share(class_pixels, dataset)
    return s


def _add_pixels(into: list[int], more: list[int]) -> None:
    if len(more) > len(into):
        into.extend([0] * (len(more) - len(into)))
    for i, n in enumerate(more):
        into[i] += int(n)


def _class_share(totals: list[int], dataset: Optional[DatasetMeta]) -> dict[str, float]:
    names = dataset.names if dataset else []
    totals = (list(totals) + [0] * len(names))[:len(names)]
    all_pixels = sum(totals)
    return {n: round(t / all_pixels, 6) for n, t in zip(names, totals)} if all_pixels else {}


def _add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _stats_doc(s: RunSummary) -> dict[str, Any]:
    doc = asdict(s)
    doc["schema_version"] = 1
    doc["sample_failure_rate"] = round(s.sample_failure_rate, 6)
    doc["shard_failure_rate"] = round(s.shard_failure_rate, 6)
    doc["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return doc


def _read_dataset(storage: OutputDir) -> Optional[DatasetMeta]:
    try:
        return storage.dataset_meta_or_none()
    except UserError as exc:
        raise UserError(f"{exc}; delete it to relabel that part") from exc
