"""Progress of a (remote) run, read from its OUTPUT alone: a thin wrapper kept for old job scripts.

    python jobs/progress.py OUTPUT [INPUT] [--watch SECONDS] [--json] [--set io.storage_options=...]

The logic lives in the package (`pipeline.run.status`); the command is `pseudolabel progress`,
which is shipped in the wheel. `--json` here keeps its old meaning (JSON lines on stdout).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.run.status import format_snapshot, snapshot  # noqa: E402,F401 (re-exported for old callers)


def main(argv: Optional[list[str]] = None) -> int:
    from pipeline.cli import main as cli_main

    console = argv is None  # run as the script: it may end the process as `pseudolabel progress` does
    argv = sys.argv[1:] if argv is None else list(argv)
    # The old flag `--json` took no value; `pseudolabel progress --json PATH` does ('-' = stdout).
    # As the script, the process ends without the interpreter's teardown that aborted with rc 134
    # now and then (pipeline.cli.FAST_EXIT).
    return cli_main(["progress", *("--json=-" if a == "--json" else a for a in argv)], console=console)


if __name__ == "__main__":
    sys.exit(main())
