"""`pseudolabel run INPUT OUTPUT`: label WebDataset shards on Ray into mask shards + Parquet manifests."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Optional

from pipeline.cli import add_config_arguments
from pipeline.errors import UserError
from pipeline.run.lock_record import DEFAULT_STALE_AFTER_S, STALE_ENV

log = logging.getLogger(__name__)

EXIT_TOO_MANY_FAILURES = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
JSON_FLAG = "\0flag"  # `--json` with no PATH: the old flag, JSON on stdout
INTERRUPTED_HINT = "re-run the same command to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT",
                        help="shards: data/train-{000000..000127}.tar, a directory, a .txt list, or an "
                             "s3:// gs:// http(s):// file:// URL, or pipe:CMD with --allow-pipe")
    parser.add_argument("output", metavar="OUTPUT", nargs="?", help=argparse.SUPPRESS)  # old spelling of --out
    parser.add_argument("--out", metavar="OUTPUT", help="output directory or object-store prefix")
    add_config_arguments(parser)
    parser.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, ray.address, "
                                              "else a local Ray)")
    parser.add_argument("--overwrite", action="store_true",
                        help="relabel everything when OUTPUT was made with another config")
    parser.add_argument("--max-failure-rate", type=_rate, default=None, metavar="R",
                        help="exit 1 when the share of this run's shards or samples that failed exceeds R "
                             "(0..1); default: any failed shard, or more than 1%% of samples (this run's only)")
    parser.add_argument(
        "--break-lock", action="store_true",
        help="take the OUTPUT lock even if another run holds it (only when you know it is dead)",
    )
    parser.add_argument(
        "--lock-stale-after", type=float, default=None, metavar="SECONDS",
        help=f"a lock whose heartbeat is older than this is broken (default: ${STALE_ENV} "
             f"or {DEFAULT_STALE_AFTER_S:.0f})",
    )
    parser.add_argument("--allow-pipe", action="store_true",
                        help="accept a pipe:CMD INPUT: CMD runs in a shell on every worker (never accepted from "
                             "list files or configs; --dry-run prints the commands)")
    parser.add_argument("--repair", action="store_true",
                        help="also read every complete shard's record, manifest and mask tar (not its input) and "
                             "relabel those that do not check (what `verify` finds); every run already relabels "
                             "shards whose input changed or whose files a listing shows missing or resized")
    parser.add_argument("--dry-run", action="store_true",
                        help="check config, INPUT, vocabulary and checkpoint, print the plan (shards to label "
                             "and to skip, fingerprint, model) and exit 0 without starting Ray or writing anything")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    parser.add_argument("--json", dest="json_summary", nargs="?", const=JSON_FLAG, metavar="PATH",
                        help="also write the run summary (or with --dry-run the plan) as JSON to PATH "
                             "('-' for stdout instead of the table)")


def main(args: argparse.Namespace) -> int:
    """Exit codes: 0 done, 1 this run's failures above the limit, 2 a user or file system error
    (one line, nothing half-written), 130 interrupted (Ctrl-C; re-running resumes), 143 stopped by
    SIGTERM (shards in flight finished within ray.term_grace_s; re-running resumes)."""
    from pipeline.config import load_config

    _old_spellings(args)
    cfg = load_config(args.config, args.overrides)
    try:
        packed = _packed_input(args, cfg)
        if packed is None:  # --dry-run on a folder never packed: the plan is "pack, then label all"
            return 0
        args.input = packed
        if args.dry_run:
            return _dry_run(args, cfg)
        return _run(args, cfg)
    except KeyboardInterrupt:
        print("pseudolabel run: interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file system refusing a write (read-only, full, permission): one line
        where = f" {exc.filename}" if exc.filename else ""
        raise UserError(f"file system error{where}: {exc.strerror or exc} (nothing of it was committed; "
                        "fix it and re-run the same command to resume)") from exc


def _old_spellings(args: argparse.Namespace) -> None:
    """`run INPUT OUTPUT` and `run ... --json` (a flag) keep working, each with a deprecation line."""
    from pipeline.cli import deprecated, resolve_out

    if args.json_summary not in (None, JSON_FLAG) and args.output is None and args.out is None:
        # `run --json INPUT OUTPUT` (the old flag first): argparse took INPUT as the JSON path.
        args.input, args.output, args.json_summary = args.json_summary, args.input, JSON_FLAG
    args.output = resolve_out(args, "output", "run")
    if args.json_summary == JSON_FLAG:
        deprecated("run", "--json without a PATH", "--json -")
        args.json_summary = "-"


def _write_json(target: str, doc: Any) -> None:
    text = json.dumps(doc, indent=1)
    if target == "-":
        print(text)
    else:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def _packed_input(args: argparse.Namespace, cfg: Any) -> Optional[str]:
    """INPUT as shards: a local folder of photos (no shard in it) is packed first, its new photos
    only, into OUTPUT/_input (pipeline.io.pack), so `run photos/ out/` works and a re-run on a
    grown folder labels only what is new."""
    from pipeline.io.pack import is_photo_folder, pack_for_run

    if not is_photo_folder(args.input):
        return args.input
    from pipeline.commands.pack import detail_lines, summary_line
    from pipeline.run.preflight import check_model, check_output

    # What preflight checks besides INPUT, before a large folder is packed: a missing weight file
    # or a bad vocabulary must not cost the user the packing time first.
    check_output(args.output)
    check_model(cfg)
    shards, result = pack_for_run(args.input, args.output, cfg.io.image_extensions, dry_run=args.dry_run)
    if args.dry_run:
        line = f"would pack {result.samples} new images into {shards}" + (
            f"; {result.unchanged} already packed" if result.unchanged else "")
    else:
        line = summary_line(result, shards)
    print(f"pseudolabel run: INPUT {args.input} is a folder of photos; {line}", file=sys.stderr)
    for detail in detail_lines(result):
        print(f"  {detail}", file=sys.stderr)
    if args.dry_run and not result.existing_shards:
        print("  nothing packed yet: the run would label every one of them; nothing written, Ray not started")
        return None
    return shards


def _run(args: argparse.Namespace, cfg: Any) -> int:
    from pipeline.run.runner import run_pipeline
    from pipeline.run.termination import EXIT_TERMINATED, GracefulStop, Terminated

    level = logging.getLogger().getEffectiveLevel()
    if level > logging.DEBUG:
        quiet_ray()
    bar = None if args.no_progress else RichProgress()
    if bar is not None:
        bar.per_shard_guess = samples_in_first_local_shard(args.input)
    try:
        # SIGTERM (Kubernetes, Ray Jobs): shards in flight finish, the lock is released (run/termination.py)
        with GracefulStop(cfg.ray.term_grace_s) as graceful:
            summary = run_pipeline(args.input, args.output, cfg, overwrite=args.overwrite,
                                   ray_address=args.ray_address, progress=bar, log_level=level,
                                   break_lock=args.break_lock, lock_stale_after_s=args.lock_stale_after,
                                   allow_pipe=args.allow_pipe, repair=args.repair, graceful=graceful)
    except Terminated as exc:
        complete = f"; {exc.complete} shards complete" if exc.complete is not None else ""
        print(f"pseudolabel run: {exc.why}{complete}, re-run the same command to resume", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if bar is not None:
            bar.close()
    if args.json_summary:
        from dataclasses import asdict

        _write_json(args.json_summary, asdict(summary))
    if args.json_summary != "-":
        print_summary(summary)
    if summary.exceeds(args.max_failure_rate):
        print(f"pseudolabel run: {failure_line(summary, args.max_failure_rate)}; see {args.output}/_stats.json",
              file=sys.stderr)
        return EXIT_TOO_MANY_FAILURES
    if summary.dataset_images_failed and not summary.images_ok + summary.images_failed:
        # Nothing labeled now, so nothing failed now (exit 0); say why an earlier run may have exited 1.
        print(f"pseudolabel run: note: {summary.dataset_images_failed} of "
              f"{summary.dataset_images_ok + summary.dataset_images_failed} images of OUTPUT failed in earlier runs "
              f"(judged when they were labeled; listed in the manifests, `pseudolabel report` shows them)",
              file=sys.stderr)
    return 0


def _dry_run(args: argparse.Namespace, cfg: Any) -> int:
    from dataclasses import asdict

    from pipeline.redact import redact_strings, redact_text
    from pipeline.run.runner import plan_run

    plan = plan_run(args.input, args.output, cfg, overwrite=args.overwrite, allow_pipe=args.allow_pipe,
                    repair=args.repair)
    if args.json_summary:
        # Plans end up in job logs: credentials and signed queries of INPUT/OUTPUT are left out.
        # The pipe commands stay exact: the user checks what --allow-pipe will run.
        doc = {**redact_strings({k: v for k, v in asdict(plan).items() if k != "pipe_commands"}),
               "pipe_commands": plan.pipe_commands}
        _write_json(args.json_summary, doc)
        if args.json_summary == "-":
            return 0
    more = plan.to_label_count - len(plan.to_label)
    print(f"pseudolabel run --dry-run: {redact_text(plan.input)} -> {redact_text(plan.output)}")
    print(f"  shards: {plan.shards_total} in INPUT, {plan.to_label_count} to label, {plan.to_skip_count} to skip "
          f"(complete){' (--overwrite: everything is relabeled)' if plan.overwrite else ''}")
    if plan.to_label:
        print(f"  to label: {', '.join(plan.to_label)}{f' and {more} more' if more else ''}")
    _print_relabel_plan(plan)
    print(f"  fingerprint: {plan.fingerprint}")
    print(f"  model: {plan.model} ({plan.weights})")
    print(f"  {classes_line(cfg)}")
    if plan.pipe_commands:  # every one, exactly: the user checks what will run on the workers
        print(f"  pipe commands ({len(plan.pipe_commands)}, each run with /bin/sh -c on a worker):")
        for cmd in plan.pipe_commands:
            print(f"    {cmd}")
    print("  nothing written, Ray not started")
    return 0


def _print_relabel_plan(plan: Any) -> None:
    """The recorded shards that will be relabeled because their record does not check."""
    changed = plan.relabel.get("input_changed", 0)
    if changed:
        more = f" and {changed - len(plan.changed)} more" if changed > len(plan.changed) else ""
        print(f"  changed inputs (relabeled): {changed}: {', '.join(plan.changed)}{more}")
    damaged = {k: n for k, n in plan.relabel.items() if k != "input_changed"}
    if damaged:
        total = sum(damaged.values())
        more = f" and {total - len(plan.damaged)} more" if total > len(plan.damaged) else ""
        kinds = ", ".join(f"{k}={n}" for k, n in damaged.items())
        print(f"  damaged (relabeled): {total} ({kinds}): {', '.join(plan.damaged)}{more}")


def quiet_ray() -> None:
    """Ray's notices that every run would print and no user acts on (shown again with -v): the
    token-auth warning of a local cluster, and the log-deduplication hint on the first repeated
    worker line (the dedup itself stays on)."""
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    try:
        from ray.util.debug import log_once

        log_once("log_dedup_warning")  # spent here: Ray prints its hint only on the first call
    except ImportError:  # another Ray layout: its notices come back, nothing breaks
        pass


def samples_in_first_local_shard(input_spec: str) -> Optional[int]:
    """Samples (distinct keys) of one local shard of INPUT, read from its tar headers: the images
    bar has a total and an ETA from the start. None for remote inputs (no extra requests)."""
    import os
    import tarfile
    from pathlib import Path

    from braceexpand import braceexpand

    spec = next(iter(braceexpand(input_spec)), input_spec) if "{" in input_spec else input_spec
    if "://" in spec or spec.startswith("pipe:") or any(c in spec for c in "*?["):
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        with os.scandir(path) as entries:  # any shard will do: stop at the first
            path = next((Path(e.path) for e in entries if e.name.lower().endswith(".tar")), None)
    if path is None or not path.is_file() or not path.name.lower().endswith(".tar"):
        return None
    try:
        with tarfile.open(path) as tar:
            # WebDataset's key: the member's path up to the first dot of its file name
            keys = {m.name.rpartition("/")[0] + "/" + m.name.rpartition("/")[2].split(".")[0]
                    for m in tar if m.isfile()}
    except (OSError, tarfile.TarError):
        return None
    return len(keys) or None


def failure_line(summary: Any, limit: Optional[float]) -> str:
    """Why exit 1: how many failed, against which limit, and the flag that moves it."""
    from pipeline.run.summary import DEFAULT_MAX_SAMPLE_FAILURE

    images = summary.images_ok + summary.images_failed
    what = (f"{summary.shards_failed} of {summary.shards_pending} shards and {summary.images_failed} of {images} "
            f"images failed in this run ({summary.sample_failure_rate:.1%} of images)")
    if limit is None:
        allowed = f"the default limit is no failed shard and {DEFAULT_MAX_SAMPLE_FAILURE:.0%} of images"
    else:
        allowed = f"above --max-failure-rate {limit:g}"
    return f"{what}: {allowed}; pass --max-failure-rate R (0..1) to accept more"


def classes_line(cfg: Any, limit: int = 60) -> str:
    """The classes as parsed (synonyms in brackets), the first `limit` of them."""
    if cfg.model.student:
        return "classes: those stored in the student file"
    from pipeline.vocabulary import load_vocabulary

    vocab = load_vocabulary(cfg.vocabulary)
    shown = [group[0] + (f" ({', '.join(group[1:])})" if len(group) > 1 else "") for group in vocab.synonyms[:limit]]
    more = f" and {len(vocab) - limit} more" if len(vocab) > limit else ""
    return f"classes ({len(vocab)}): {', '.join(shown)}{more}"


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


class RichProgress:
    """Two live bars driven by per-batch reports from the workers: shards and images."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=self.console, transient=False)
        self.shards: Optional[Any] = None
        self.images: Optional[Any] = None
        self.done_shards = 0
        self.done_samples = 0  # samples in finished shards, to estimate the images total
        self.per_shard_guess: Optional[float] = None  # samples in one shard, read before the run (a local tar)
        self.total_shards = 0

    def start(self, total_shards: int, skipped: int) -> None:
        self.bar.start()
        self.total_shards = total_shards
        self.shards = self.bar.add_task(f"shards ({skipped} skipped)", total=total_shards, rate="")
        self.images = self.bar.add_task("images", total=self._images_total(0), rate="")

    def _images_total(self, samples: int) -> Optional[int]:
        """Images of this run: shards x samples per shard, from finished shards once there are some,
        else from the guess; None (an open bar) only for remote inputs before the first shard."""
        if self.done_shards:
            per_shard = self.done_samples / self.done_shards
        elif self.per_shard_guess:
            per_shard = self.per_shard_guess
        else:
            return None
        left = max(0, self.total_shards - self.done_shards)
        return max(samples, int(round(self.done_samples + per_shard * left)))

    def update(self, samples: int, ok: int, errors: int) -> None:
        if self.images is None:
            return
        task = self.bar.tasks[self.images]
        speed = f"{task.speed:.1f} img/s" if task.speed else ""
        self.bar.update(self.images, completed=samples, total=self._images_total(samples),
                        rate=f"{speed} {errors} failed")

    def shard_finished(self, result: Any) -> None:
        self.done_shards += 1
        self.done_samples += result.samples
        if self.shards is not None:
            self.bar.advance(self.shards)

    def close(self) -> None:
        self.bar.stop()


MIN_SHOWN_SHARE = 0.001  # classes under 0.1% of labeled pixels are counted in one row, not listed


def print_summary(summary: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"pseudolabel run -> {summary.output}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("this run: shards labeled / skipped / failed",
                  f"{summary.shards_labeled} / {summary.shards_skipped} / {summary.shards_failed}")
    if summary.relabeled:
        damaged = {k: n for k, n in summary.relabeled.items() if k != "input_changed"}
        table.add_row("this run: changed inputs relabeled", str(summary.relabeled.get("input_changed", 0)))
        if damaged:
            table.add_row("this run: damaged shards relabeled",
                          f"{sum(damaged.values())} ({', '.join(f'{k}={n}' for k, n in damaged.items())})")
    table.add_row("this run: images ok / failed",
                  f"{summary.images_ok} / {summary.images_failed} ({summary.sample_failure_rate:.2%} failed)")
    table.add_row("dataset: shards complete / in INPUT",
                  f"{summary.dataset_shards_complete} / {summary.shards_total}"
                  + (f" ({summary.dataset_shards_failed} failed part way)" if summary.dataset_shards_failed else ""))
    table.add_row("dataset: images ok / failed",
                  f"{summary.dataset_images_ok} / {summary.dataset_images_failed} "
                  f"({summary.dataset_sample_failure_rate:.2%} failed)")
    table.add_row("throughput", f"{summary.images_per_s:.1f} images/s ({summary.labeling_seconds:.1f}s labeling, "
                                f"{summary.seconds:.1f}s in all)")
    for kind, n in sorted(summary.error_kinds.items()):
        table.add_row(f"  this run, errors: {kind}", str(n))
    for mode, n in sorted(summary.conversions.items()):
        table.add_row(f"  this run, converted from {mode}", str(n))
    for failed in summary.failed_shards:
        table.add_row(f"  this run, failed shard {failed['shard']}", f"{failed['status']}: {failed['reason']}")
    if summary.shards_failed > len(summary.failed_shards):
        table.add_row("  this run, more failed shards", f"{summary.shards_failed - len(summary.failed_shards)} (counted, not listed)")
    shares = sorted(summary.class_pixel_share.items(), key=lambda kv: -kv[1])
    shown = [(name, share) for name, share in shares if share >= MIN_SHOWN_SHARE]
    for name, share in shown:
        table.add_row(f"  dataset, class {escape(str(name))}", f"{share:.1%}")
    if len(shown) < len(shares):
        absent = sum(1 for _, share in shares if share == 0)
        table.add_row(f"  dataset, {len(shares) - len(shown)} more classes",
                      f"{absent} never seen, {len(shares) - len(shown) - absent} under {MIN_SHOWN_SHARE:.1%}")
    Console().print(table)
    if summary.relabeled:  # one plain line a log reader can grep: "2 changed inputs relabeled"
        from pipeline.run.shard_check import describe_counts

        print(f"pseudolabel run: {describe_counts(summary.relabeled)} relabeled (their records did not check)")
