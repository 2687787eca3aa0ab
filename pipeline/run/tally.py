"""Running totals of a run, folded per event: nothing is re-summed and no result is kept but failures.

`ProgressTotals` is the live count the progress bar shows (finished shards plus the current attempt
of each shard in flight); `RunTally` is what the run summary needs from this run's results.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.io.layout import ShardStatus
from pipeline.io.records import ShardResult

DONE, FAILED, UNREADABLE, CRASHED = (ShardStatus.DONE, ShardStatus.FAILED, ShardStatus.UNREADABLE,
                                     ShardStatus.CRASHED)


@dataclass
class ProgressTotals:
    """Samples of this run, live: finished shards' final counts plus the current attempt of each
    shard in flight. Updated per event by difference, never re-summed."""
    samples: int = 0
    ok: int = 0
    errors: int = 0

    def add(self, samples: int, ok: int, errors: int, sign: int = 1) -> None:
        self.samples += sign * samples
        self.ok += sign * ok
        self.errors += sign * errors

    def totals(self) -> tuple[int, int, int]:
        return self.samples, self.ok, self.errors


@dataclass
class RunTally:
    """What the run summary needs from this run's results, folded as they arrive."""
    shards_complete: int = 0  # DONE or FAILED: completion record written
    samples: int = 0
    ok: int = 0
    errors: int = 0
    class_pixels: list[int] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    conversions: dict[str, int] = field(default_factory=dict)
    members: int = 0  # tar members read by complete shards
    skipped_members: dict[str, int] = field(default_factory=dict)  # reason -> members in no sample
    failed: list[ShardResult] = field(default_factory=list)  # FAILED, UNREADABLE, CRASHED results
    results: int = 0  # results seen (complete or not)

    def add(self, r: ShardResult) -> None:
        self.results += 1
        self.samples += r.samples
        self.ok += r.ok
        self.errors += r.errors
        self.shards_complete += r.status in (DONE, FAILED)
        if len(r.class_pixels) > len(self.class_pixels):
            self.class_pixels.extend([0] * (len(r.class_pixels) - len(self.class_pixels)))
        for i, n in enumerate(r.class_pixels):
            self.class_pixels[i] += int(n)
        if r.status in (DONE, FAILED):  # an incomplete shard's members are read again by its retry
            self.members += r.members
            _add_counts(self.skipped_members, r.skipped_members)
        for into, more in ((self.error_kinds, r.error_kinds), (self.conversions, r.conversions)):
            for k, v in more.items():
                into[k] = into.get(k, 0) + v
        if r.status in (FAILED, UNREADABLE, CRASHED):
            self.failed.append(r)


def _add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)
