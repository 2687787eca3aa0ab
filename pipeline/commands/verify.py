"""`pseudolabel verify OUTPUT [INPUT]`: cross-check an output against its input.

Exit status 0 only when every check holds, 1 when problems were found (the summary lists the
first ones), 2 for a usage error (unreadable OUTPUT, bad INPUT spec).
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.cli import add_config_arguments

    parser.add_argument("output", metavar="OUTPUT", nargs="?", help="output of `pseudolabel run` (path or URL)")
    parser.add_argument(
        "input", metavar="INPUT", nargs="?",
        help="the INPUT spec the run was given; without it, coverage of the input is not checked",
    )
    add_config_arguments(parser)  # io.storage_options for object stores
    parser.add_argument("--first", type=int, default=20, metavar="N", help="problems to print (default 20)")
    parser.add_argument("--json", metavar="PATH", help="also write the full report as JSON to PATH ('-' for stdout)")
    parser.add_argument(
        "--no-decode", action="store_true",
        help="check PNG headers (size, mode) without decoding the pixels: faster, catches less",
    )
    parser.add_argument("--workers", type=int, default=8, help="shards checked in parallel (default 8)")
    parser.add_argument(
        "--deep", action="store_true",
        help="re-read every input shard for its keys (default: check the manifests against the keys digest "
             "and input size/ETag each completion record holds; inputs are never opened)",
    )
    parser.add_argument(
        "--incremental", action="store_true",
        help="skip shards an earlier verify passed whose files have not changed since (nightly use)",
    )
    parser.add_argument("--explain", action="store_true", help="list the problem kinds and exit")
    parser.add_argument("--allow-pipe", action="store_true",
                        help="with --deep, run a pipe:CMD INPUT's commands to re-read it (as `run --allow-pipe`)")


def main(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.run.verify import KINDS, verify_output

    if args.explain:
        for kind, meaning in KINDS.items():
            print(f"{kind:18} {meaning}")
        return 0
    if args.output is None:
        from pipeline.errors import UserError

        raise UserError("no OUTPUT: give the output folder of `pseudolabel run` (only --explain goes without)")
    cfg = load_config(args.config, args.overrides)
    report = verify_output(
        args.output, args.input, cfg.io.storage_options, decode=not args.no_decode, workers=args.workers,
        deep=args.deep, incremental=args.incremental, record_verified=True, allow_pipe=args.allow_pipe,
    )
    if args.json == "-":  # the JSON instead of the summary, as every command's `--json -`
        print(json.dumps(report.to_dict(), indent=1))
        return 0 if report.passed else 1
    print(report.summary(first=args.first))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
        log.info("wrote %s", args.json)
    return 0 if report.passed else 1
