"""`pseudolabel` console entry point: a thin dispatcher over `pipeline.commands.*`.

Subcommand modules are imported lazily so that `pseudolabel verify` does not pay for importing
torch and open_clip.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module under pipeline.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("predict", "label single images and write .npz + overlay .png"),
    "run": ("run", "label WebDataset shards on Ray: mask shards + Parquet manifests"),
    "verify": ("verify", "cross-check an output directory against its input"),
    "eval": ("evaluate", "mIoU of pseudo-labels against ground-truth masks"),
    "report": ("report", "static HTML report of an output directory"),
    "bench": ("bench", "throughput benchmark: one-at-a-time vs engine vs end to end"),
    "train": ("train", "train a student segmentation network on an output's pseudo-labels"),
    "selftrain": ("selftrain", "rounds of self-training: teacher labels, student, student relabels, retrain"),
    "export": ("export", "export an output as mmsegmentation / VOC folders or a Hugging Face dataset"),
    "pack": ("pack", "write WebDataset shards from a folder of images"),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE` / `--set KEY=VALUE` pair shared by every command that builds a Config."""
    parser.add_argument("--config", help="YAML config merged over conf/default.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key (value in YAML syntax); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pseudolabel", description="Open-vocabulary dense pseudo-labels with ResCLIP, at corpus scale on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        _command_module(module).add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def _command_module(module: str):
    return importlib.import_module(f"pipeline.commands.{module}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the chosen subcommand's parser eagerly when possible: importing every command
    # module would import torch for `verify` too.
    parser = build_parser() if not argv or argv[0] not in COMMANDS else _single_parser(argv[0])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pipeline.errors import UserError

    try:
        return int(_command_module(args._module).main(args) or 0)
    except UserError as exc:
        print(f"pseudolabel {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _single_parser(name: str) -> argparse.ArgumentParser:
    module, help_text = COMMANDS[name]
    parser = argparse.ArgumentParser(prog="pseudolabel")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser(name, help=help_text, description=help_text)
    _command_module(module).add_arguments(sp)
    sp.set_defaults(_module=module)
    return parser


if __name__ == "__main__":
    sys.exit(main())
