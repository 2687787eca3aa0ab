"""What `verify` reports: the problem kinds, one shard's findings, the whole report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# Problem kind -> what it means (printed by `pseudolabel verify --explain`).
KINDS: dict[str, str] = {
    "missing_shard": "an input shard has no outputs at all",
    "unexpected_shard": "outputs exist for a shard that is not in INPUT",
    "missing_row": "an input sample has no manifest row",
    "duplicate_row": "a sample has more than one manifest row",
    "unexpected_row": "a manifest row names no sample of its input shard",
    "order": "rows or mask members are not in input order, or sample_index is wrong",
    "bad_row": "a row's fields contradict its status (e.g. an ok row without a size)",
    "missing_member": "an ok row's label or confidence PNG is not in the mask shard",
    "orphan_member": "a mask shard member that no ok row references (or a repeated member)",
    "wrong_size": "a mask PNG's size differs from the row's width x height",
    "bad_mask": "a mask PNG does not decode, or has the wrong mode or out-of-range classes",
    "missing_record": "a shard has output files but no completion record (_done/NAME.json)",
    "record_mismatch": "a completion record disagrees with the files",
    "bad_manifest": "a manifest cannot be read or does not have schema manifest-v1",
    "bad_dataset_json": "dataset.json is missing or unreadable",
    "unreadable_input": "an input shard cannot be read",
    "empty_output": "OUTPUT holds no shard outputs at all",
    "keys_mismatch": "the manifest's keys, in order, differ from the input keys recorded when the shard was labeled",
    "input_changed": "the input shard's size or ETag differs from the one recorded when it was labeled",
    "accounting": "a completion record's member counts do not add up (members - skipped < samples)",
}

# Problems about one shard's own files or input: `run --repair` relabels such a shard.
REPAIRABLE = frozenset(KINDS) - {"missing_shard", "unexpected_shard", "bad_dataset_json", "unreadable_input",
                                 "empty_output"}

MAX_STORED_PROBLEMS = 1000  # per run; counts stay exact beyond this


@dataclass(frozen=True)
class Problem:
    kind: str  # one of KINDS
    shard: Optional[str]  # shard NAME, None for output-wide problems
    key: Optional[str]  # sample key when the problem is about one sample
    detail: str

    def __str__(self) -> str:
        where = self.shard or "OUTPUT"
        if self.key is not None:
            where += f"/{self.key}"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass
class ShardCheck:
    """What one shard contributed to the report."""

    name: str
    problems: list[Problem] = field(default_factory=list)
    input_samples: int = 0
    rows: int = 0
    ok_rows: int = 0
    error_rows: int = 0
    members: int = 0
    complete: bool = False
    without_keys_hash: bool = False
    stamp: Optional[str] = None  # what the verified marker records when the shard passes

    def add(self, kind: str, detail: str, key: Optional[str] = None) -> None:
        self.problems.append(Problem(kind, self.name, key, detail))


@dataclass
class VerifyReport:
    output_url: str
    input_spec: Optional[str]
    shards: int = 0
    complete_shards: int = 0
    input_samples: int = 0
    rows: int = 0
    ok_rows: int = 0
    error_rows: int = 0
    members: int = 0
    deep: bool = True  # inputs re-read; False: checked against what the completion records hold
    skipped_verified: int = 0  # shards passed by an earlier verify and unchanged since (--incremental)
    without_keys_hash: int = 0  # cheap mode: records too old to hold keys_sha256 (coverage: --deep only)
    problems: list[Problem] = field(default_factory=list)  # the first MAX_STORED_PROBLEMS
    counts: dict[str, int] = field(default_factory=dict)  # problem kind -> number found

    @property
    def passed(self) -> bool:
        return not self.counts

    def add(self, problems: list[Problem]) -> None:
        for p in problems:
            self.counts[p.kind] = self.counts.get(p.kind, 0) + 1
            if len(self.problems) < MAX_STORED_PROBLEMS:
                self.problems.append(p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output_url, "input": self.input_spec, "passed": self.passed,
            "shards": self.shards, "complete_shards": self.complete_shards,
            "input_samples": self.input_samples if self.input_spec else None,
            "rows": self.rows, "ok_rows": self.ok_rows, "error_rows": self.error_rows,
            "members": self.members, "deep": self.deep, "skipped_verified": self.skipped_verified,
            "without_keys_hash": self.without_keys_hash, "problem_counts": dict(sorted(self.counts.items())),
            "problems": [p.__dict__ for p in self.problems],
        }

    def summary(self, first: int = 20) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"verify {self.output_url}" + (f" against {self.input_spec}" if self.input_spec else
                                           " (no INPUT given: input coverage not checked)"),
            f"  shards: {self.shards} ({self.complete_shards} with a completion record)",
        ]
        if self.input_spec:
            lines.append(f"  input samples: {self.input_samples}")
        lines.append(f"  manifest rows: {self.rows} ({self.ok_rows} ok, {self.error_rows} error); "
                     f"mask members checked: {self.members}")
        mode = "deep (inputs re-read)" if self.deep else "cheap (against the completion records; --deep re-reads inputs)"
        lines.append(f"  mode: {mode}" + (f"; {self.skipped_verified} shards verified before and unchanged"
                                           if self.skipped_verified else ""))
        if self.without_keys_hash:
            lines.append(f"  {self.without_keys_hash} shards have records without keys_sha256: input "
                         "coverage of those is checked by --deep only")
        if self.counts:
            total = sum(self.counts.values())
            by_kind = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
            lines.append(f"  problems: {total} ({by_kind})")
            lines.append(f"  first {min(first, len(self.problems))}:")
            lines.extend(f"    {p}" for p in self.problems[:first])
            if any(k in REPAIRABLE for k in self.counts):
                lines.append(f"  to relabel the shards with problems (no hand deletion): pseudolabel run "
                             f"{self.input_spec or 'INPUT'} {self.output_url} --repair (with the run's config)")
        lines.append(verdict)
        return "\n".join(lines)


@dataclass(frozen=True)
class _DatasetInfo:
    label_mode: Optional[str]  # "L" or "I;16"; None when dataset.json is unusable
    num_classes: Optional[int]
    ignore_index: Optional[int]
    fingerprint: Optional[str]  # config_fingerprint
    content_fingerprint: Optional[str] = None  # dataset.json `fingerprint` (pipeline.identity)
