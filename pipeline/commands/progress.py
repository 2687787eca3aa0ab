"""`pseudolabel progress OUTPUT [INPUT]`: progress of a run read from its OUTPUT alone, from any
machine that can read it (pipeline.run.status)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline.cli import add_config_arguments, add_json_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output of `pseudolabel run` (path or URL)")
    parser.add_argument("input", metavar="INPUT", nargs="?", help="the run's INPUT: also count the shards to go")
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS until Ctrl-C")
    add_json_argument(parser, "each snapshot (one JSON object a line)")
    add_config_arguments(parser)  # io.storage_options for object stores


def main(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.run.status import format_snapshot, snapshot

    options = load_config(args.config, args.overrides).io.storage_options
    sink = _sink(args.json)
    try:
        while True:
            snap = snapshot(args.output, args.input, options)
            if sink is not None:
                sink.write(json.dumps(snap) + "\n")
                sink.flush()
            if sink is not sys.stdout:
                print(format_snapshot(snap), flush=True)
            if not args.watch:
                return 0
            try:
                time.sleep(args.watch)
            except KeyboardInterrupt:  # the way out of --watch: not an error
                return 0
            if sink is not sys.stdout:
                print("--", flush=True)
    finally:
        if sink is not None and sink is not sys.stdout:
            sink.close()


def _sink(path):
    if path is None:
        return None
    return sys.stdout if path == "-" else open(path, "a", encoding="utf-8")
