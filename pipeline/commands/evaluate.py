"""`pseudolabel eval OUTPUT --gt GT`: mIoU and friends of the pseudo-labels against ground truth."""
from __future__ import annotations

import argparse
import logging

from pipeline.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output directory of `pseudolabel run` (path or URL)")
    parser.add_argument(
        "--gt", required=True, action="append", metavar="GT",
        help="ground truth: a folder of KEY.png label maps, or mask tar shard(s) with KEY.label.png / KEY.png "
        "(a .tar, a folder of *.tar, a brace pattern or a glob); repeatable",
    )
    parser.add_argument("--class-map", metavar="FILE", help="YAML mapping gt id -> our class index or name (null = ignore)")
    parser.add_argument(
        "--gt-ignore", type=_ignore_value, default=255, metavar="ID",
        help="gt value left out of the scores (default 255; 'none' to score every value)",
    )
    parser.add_argument(
        "--sweep-min-confidence", type=_thresholds, metavar="T1,T2,...",
        help="also score with pixels of stored confidence < T set to ignore, for each T (e.g. 0,0.2,0.4,0.6,0.8)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH ('-' for stdout)")
    parser.add_argument("--save", action="store_true", help="also write OUTPUT/eval.json (shown by `pseudolabel report`)")


def main(args: argparse.Namespace) -> int:
    from pipeline.evaluation import EVAL_FILE, evaluate_output, format_table

    result = evaluate_output(
        args.output, args.gt if len(args.gt) > 1 else args.gt[0],
        class_map=args.class_map, gt_ignore=args.gt_ignore, sweep_thresholds=args.sweep_min_confidence,
    )
    if args.json == "-":  # the JSON instead of the table, as every command's `--json -`
        import json

        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result))
    if args.json and args.json != "-":
        result.write_json(args.json)
        log.info("wrote %s", args.json)
    if args.save:
        if "://" in args.output:
            raise UserError("--save writes OUTPUT/eval.json and needs a local OUTPUT; use --json PATH for remote outputs")
        path = f"{args.output.rstrip('/')}/{EVAL_FILE}"
        result.write_json(path)
        log.info("wrote %s", path)
    return 0


def _ignore_value(text: str) -> int | None:
    if text.strip().lower() in ("none", "null", "-1"):
        return None
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer id or 'none'") from exc


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from exc
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: thresholds must be numbers in 0..1")
    return values
