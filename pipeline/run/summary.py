"""What a run reports: this run's work and the dataset's totals, kept apart.

`RunSummary` is returned by `run_pipeline` and written as `_stats.json` with two sections:
`this_run` (the shards handed out by this run and the samples it labeled: what
`--max-failure-rate` judges, so a re-run with nothing to do exits 0) and `dataset` (every
complete shard of INPUT, earlier runs included). The file stays small whatever the corpus size:
per-shard lists are capped (`FAILED_SHARDS_LISTED`), the rest are counts.

The counts are taken from what is on disk at the end of the run, not from the results the
workers reported: a shard is complete exactly when its completion record exists and checks
(pipeline.run.shard_check). A shard whose result was lost but whose record was committed counts
as labeled; one reported done whose record is missing or does not check counts as failed.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional

from pipeline.io.layout import ShardStatus
from pipeline.io.records import DatasetMeta
from pipeline.redact import redact_text, redact_url
from pipeline.run.tally import RunTally

STATS_SCHEMA_VERSION = 2
DEFAULT_MAX_SAMPLE_FAILURE = 0.01  # exit code 1 above this share of failed samples (or any failed shard)
FAILED_SHARDS_LISTED = 100  # failed shards named in _stats.json and the summary; the rest are counted


@dataclass
class RunSummary:
    input: str
    output: str
    shards_total: int = 0  # in INPUT
    shards_pending: int = 0  # handed to this run (not complete before it)
    shards_labeled: int = 0  # made complete by this run
    shards_skipped: int = 0  # complete before this run
    shards_failed: int = 0  # this run: failed, unreadable or crashed
    failed_shards: list[dict[str, Any]] = field(default_factory=list)  # this run, first FAILED_SHARDS_LISTED
    images_ok: int = 0  # this run
    images_failed: int = 0
    dataset_images_ok: int = 0  # over every complete shard of INPUT, skipped ones included
    dataset_images_failed: int = 0
    dataset_shards_complete: int = 0
    dataset_shards_failed: int = 0  # complete but failed part way (truncated tar), earlier runs included
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
    # Shards whose completion record did not check at the start (input changed, files damaged):
    # relabeled by this run. Reason kind (pipeline.run.shard_check.REASONS) -> shards.
    relabeled: dict[str, int] = field(default_factory=dict)
    relabeled_shards: list[dict[str, str]] = field(default_factory=list)  # first FAILED_SHARDS_LISTED

    @property
    def changed_inputs(self) -> int:
        return self.relabeled.get("input_changed", 0)

    @property
    def damaged_shards(self) -> int:
        return sum(n for k, n in self.relabeled.items() if k != "input_changed")

    @property
    def sample_failure_rate(self) -> float:
        """Failed share of the samples this run labeled."""
        total = self.images_ok + self.images_failed
        return self.images_failed / total if total else 0.0

    @property
    def dataset_sample_failure_rate(self) -> float:
        total = self.dataset_images_ok + self.dataset_images_failed
        return self.dataset_images_failed / total if total else 0.0

    @property
    def shard_failure_rate(self) -> float:
        """Failed share of the shards this run was given."""
        return self.shards_failed / self.shards_pending if self.shards_pending else 0.0

    def exceeds(self, max_failure_rate: Optional[float] = None) -> bool:
        """This run's work only. Default: any failed shard, or more than 1% failed samples; else
        both rates vs the limit."""
        if max_failure_rate is None:
            return self.shards_failed > 0 or self.sample_failure_rate > DEFAULT_MAX_SAMPLE_FAILURE
        return self.shard_failure_rate > max_failure_rate or self.sample_failure_rate > max_failure_rate


def summarize(input_spec: str, output: str, shards_total: int, complete: Any, results: RunTally,
              dataset: Optional[DatasetMeta], *, pending: Iterable[str] = (), skipped: Optional[int] = None,
              made: Any = None) -> RunSummary:
    """Totals from the completion records on disk at the end of the run (`complete`: every planned
    shard whose record checks; `made`: those of them this run labeled, i.e. among `pending`), and
    from this run's tally only what no record holds (why a shard failed)."""
    made = made if made is not None else complete.restrict(pending)
    # Printed and written to _stats.json: no user:password or presigned query (pipeline.redact).
    s = RunSummary(input=redact_text(input_spec), output=redact_text(output), shards_total=shards_total,
                   shards_skipped=len(complete) - len(made) if skipped is None else skipped)
    class_pixels: list[int] = []
    for r in made.values():  # this run: the records it committed
        s.images_ok += int(r.get("ok") or 0)
        s.images_failed += int(r.get("errors") or 0)
        s.members += int(r.get("members") or 0)
        add_counts(s.skipped_members, r.get("skipped_members") or {})
        add_counts(s.error_kinds, r.get("error_kinds") or {})
        add_counts(s.conversions, r.get("conversions") or {})
    s.shards_labeled = len(made)
    for r in complete.values():  # the dataset: every complete shard of INPUT
        s.dataset_images_ok += int(r.get("ok") or 0)
        s.dataset_images_failed += int(r.get("errors") or 0)
        s.dataset_members += int(r.get("members") or 0)
        add_counts(s.dataset_skipped_members, r.get("skipped_members") or {})
        _add_pixels(class_pixels, r.get("class_pixels") or [])
        s.dataset_shards_failed += r.get("status") == ShardStatus.FAILED
    s.dataset_shards_complete = len(complete)
    _fold_failures(s, pending, made, results)
    s.class_pixel_share = _class_share(class_pixels, dataset)
    return s


def _fold_failures(s: RunSummary, pending: Iterable[str], made: Any, results: RunTally) -> None:
    """This run's failed shards: complete but failed part way (status failed on disk), or handed
    out and without a record that checks, with the reason the tally has (else: the record's absence)."""
    reasons = {f.shard: f for f in results.failed}
    for r in made.values():
        if r.get("status") == ShardStatus.FAILED:
            _add_failed(s, str(r.get("shard")), str(r.get("source") or ""), str(ShardStatus.FAILED), r.get("failure"))
    for name in pending:
        if name in made:
            continue
        f = reasons.get(name)
        if f is not None:
            _add_failed(s, name, f.source, str(f.status), f.failure)
        else:  # reported complete, yet its record is missing or does not check at the end
            _add_failed(s, name, "", str(ShardStatus.CRASHED), "no completion record that checks after the run")


def _add_failed(s: RunSummary, shard: str, source: str, status: str, reason: Any) -> None:
    s.shards_failed += 1
    if len(s.failed_shards) < FAILED_SHARDS_LISTED:
        s.failed_shards.append({"shard": shard, "source": redact_url(source) if source else source, "status": status,
                                "reason": redact_text(reason) if isinstance(reason, str) else reason})


def stats_doc(s: RunSummary) -> dict[str, Any]:
    """`_stats.json`: the two sections, each with its own rates."""
    d = asdict(s)
    this_run = {k: d[k] for k in ("shards_pending", "shards_labeled", "shards_skipped", "shards_failed",
                                  "failed_shards", "images_ok", "images_failed", "error_kinds", "conversions",
                                  "members", "skipped_members", "seconds", "labeling_seconds", "images_per_s",
                                  "relabeled", "relabeled_shards")}
    this_run.update(sample_failure_rate=round(s.sample_failure_rate, 6),
                    shard_failure_rate=round(s.shard_failure_rate, 6),
                    failed_shards_listed=len(s.failed_shards))
    dataset = {"shards_total": s.shards_total, "shards_complete": s.dataset_shards_complete,
               "shards_failed": s.dataset_shards_failed, "images_ok": s.dataset_images_ok,
               "images_failed": s.dataset_images_failed,
               "sample_failure_rate": round(s.dataset_sample_failure_rate, 6),
               "members": s.dataset_members, "skipped_members": s.dataset_skipped_members,
               "class_pixel_share": s.class_pixel_share}
    return {"schema_version": STATS_SCHEMA_VERSION, "input": s.input, "output": s.output,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "this_run": this_run, "dataset": dataset}


def add_counts(into: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


def _add_pixels(into: list[int], more: Iterable[int]) -> None:
    more = list(more)
    if len(more) > len(into):
        into.extend([0] * (len(more) - len(into)))
    for i, n in enumerate(more):
        into[i] += int(n)


def _class_share(totals: list[int], dataset: Optional[DatasetMeta]) -> dict[str, float]:
    names = dataset.names if dataset else []
    totals = (list(totals) + [0] * len(names))[:len(names)]
    all_pixels = sum(totals)
    return {n: round(t / all_pixels, 6) for n, t in zip(names, totals)} if all_pixels else {}
