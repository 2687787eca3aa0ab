"""`pseudolabel` console entry point: a thin dispatcher over `pipeline.commands.*`.

Subcommand modules are imported lazily so that `pseudolabel verify` does not pay for importing
torch and open_clip. Every way a command can end badly is handled here, once: a `UserError`, a
usage error, a file system error and Ctrl-C each print one line on stderr (no traceback; `-v`
adds the traceback to the log) and exit 2, 2, 2 and 130.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn, Optional

log = logging.getLogger("pipeline.cli")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
# Read-only commands that end the process at once when they are done (console entry only): Arrow's
# thread pools, started by any Parquet read or compute call, sometimes abort the interpreter's
# normal teardown ("terminate called without an active exception", rc 134: 2 of 10 `progress` runs
# here). These commands hold nothing that needs a teardown: output is flushed, files are closed.
FAST_EXIT = frozenset({"progress", "verify", "eval", "report", "env"})

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
    "progress": ("progress", "progress of a run, read from its OUTPUT alone (any machine that can read it)"),
    "env": ("env", "versions, devices, Ray and config paths, to paste into a bug report"),
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (what is wrong, where to look), like every other error of ours."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE|PRESET` / `--set KEY=VALUE` pair shared by every command that builds a Config."""
    parser.add_argument("--config", metavar="FILE|PRESET",
                        help="YAML config merged over conf/default.yaml, or a preset name (ade20k, voc21, ...)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key (value in YAML syntax); repeatable",
    )


def add_json_argument(parser: argparse.ArgumentParser, what: str = "the results") -> None:
    """`--json PATH`, the one spelling of JSON output in every command ('-' for stdout)."""
    parser.add_argument("--json", metavar="PATH", help=f"also write {what} as JSON to PATH ('-' for stdout)")


def deprecated(command: str, old: str, new: str) -> None:
    """One line on stderr for an old spelling that still works: a WARNING log line, so that scripts
    (and tests) that read our one error line by its `pseudolabel CMD: error:` prefix are unaffected."""
    log.warning("pseudolabel %s: %s is deprecated, use %s", command, old, new)


def resolve_out(args: argparse.Namespace, positional: str, command: str, required: bool = True) -> Optional[str]:
    """The destination, `--out DIR`, also accepted as the old positional (with a deprecation line)."""
    from pipeline.errors import UserError

    old, new = getattr(args, positional, None), getattr(args, "out", None)
    if old is not None and new is not None and old != new:
        raise UserError(f"two destinations: {old} and --out {new}; give only --out")
    if old is not None and new is None:
        deprecated(command, f"the positional destination ({old})", f"--out {old}")
    dest = new if new is not None else old
    if dest is None and required:
        raise UserError("no destination: give --out DIR")
    return dest


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config PRESET` for a student recipe (`--preset`, the old spelling, still parsed)."""
    parser.add_argument("--config", dest="preset", metavar="PRESET", default=None,
                        help="recipe preset: cpu (small net, minutes on 2 cores, the default) or gpu")
    parser.add_argument("--preset", dest="old_preset", default=None, help=argparse.SUPPRESS)


def resolve_recipe(args: argparse.Namespace, command: str, default: str = "cpu") -> str:
    """The recipe preset of `add_recipe_arguments`, with a deprecation line for `--preset`."""
    from pipeline.errors import UserError

    if args.old_preset is not None:
        deprecated(command, f"--preset {args.old_preset}", f"--config {args.old_preset}")
        if args.preset is not None and args.preset != args.old_preset:
            raise UserError(f"two presets: --config {args.preset} and --preset {args.old_preset}; give only --config")
        return args.old_preset
    return args.preset or default


def _add_global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # In subcommands the default is SUPPRESS so that `pseudolabel -v run ...` is not reset to False
    # by the subcommand's own default: `-v` works before and after the subcommand.
    parser.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="log at DEBUG level, show Ray's own messages and tracebacks")


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The whole parser, or (`only`) one subcommand's: importing every command module would import
    torch for `verify` too."""
    parser = OneLineParser(
        prog="pseudolabel", description="Open-vocabulary dense pseudo-labels with ResCLIP, at corpus scale on Ray.")
    _add_global_flags(parser, top=True)
    parser.add_argument("--version", action="version", version=f"pseudolabel {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, (module, help_text) in COMMANDS.items():
        if only is not None and name != only:
            continue
        sp = sub.add_parser(name, help=help_text, description=help_text)
        _add_global_flags(sp, top=False)
        _command_module(module).add_arguments(sp)
        sp.set_defaults(_module=module)
    return parser


def package_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("pseudolabel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _command_module(module: str):
    return importlib.import_module(f"pipeline.commands.{module}")


def main(argv: Optional[list[str]] = None, *, console: Optional[bool] = None) -> int:
    """`console`: this call is the whole process (default: when argv comes from sys.argv), so it
    may end the process itself (FAST_EXIT, Ctrl-C); a caller in the same process gets a return."""
    console = argv is None if console is None else console
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), None)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    try:
        rc = _main(argv, command)
        if console and command in FAST_EXIT:
            _exit_now(rc)
        return rc
    except KeyboardInterrupt:
        # Anywhere, even while torch imports: one line, and what to do next when there is something.
        # sys.modules, not an import: the interrupt may have come while that very module imported.
        module = sys.modules.get(f"pipeline.commands.{COMMANDS[command][0]}") if command else None
        hint = getattr(module, "INTERRUPTED_HINT", "")
        print(f"pseudolabel{f' {command}' if command else ''}: interrupted{f'; {hint}' if hint else ''}",
              file=sys.stderr)
        if verbose:
            log.debug("interrupted here", exc_info=True)
        if console:  # a thread blocked in a read (a stalled mount, a pipe) must not hold the exit
            _exit_now(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `pseudolabel verify OUT | head`: the reader left, nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not fail again
        return 0


def _exit_now(rc: int) -> None:
    """End the process without the interpreter's teardown (see FAST_EXIT), output flushed first."""
    import os

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    logging.shutdown()
    os._exit(rc)


def _main(argv: list[str], command: Optional[str]) -> int:
    from pipeline.errors import UserError

    # Build only the chosen subcommand's parser when it is named before any other positional.
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pipeline.redact import install_log_redaction

    install_log_redaction()  # no log line of this process shows a credential (docs/security.md, threat 3)
    try:
        return int(_command_module(args._module).main(args) or 0)
    except UserError as exc:
        return _one_line(args, str(exc), exc)
    except UnicodeError as exc:  # a text file we were given is not UTF-8 and no reader caught it
        return _one_line(args, f"a file is not valid UTF-8 text ({exc})", exc)
    except OSError as exc:  # a file system refusing: missing file, permission, full disk
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        return _one_line(args, f"file system error{where}: {exc.strerror or exc}", exc)


def _one_line(args: argparse.Namespace, message: str, exc: BaseException) -> int:
    first = " ".join(message.split("\n"))  # a message must never spill over lines
    from pipeline.redact import redact_text

    first = redact_text(first)  # e.g. a lock holder's command line, a URL with user:password
    print(f"pseudolabel {args.command}: error: {first}", file=sys.stderr)
    log.debug("traceback of the error above", exc_info=exc)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
