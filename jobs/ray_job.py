"""Ray Job entrypoint: `pseudolabel run` as the driver of a Ray Job, optionally verified afterwards.

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/ray_job.py INPUT OUTPUT --config conf/my.yaml --verify-after

Takes exactly the arguments of `pseudolabel run` (same parser), plus `--verify-after`. Inside a
Ray Job, RAY_ADDRESS is set by the job supervisor, so the run attaches to the job's cluster; the
working directory travels to every worker through the job's runtime environment.

Exit status: 0 done (and verified when asked), 1 run or verification failed, 2 usage error (bad
arguments, OUTPUT locked by another run). The last line of the log is a JSON summary, so that
`ray job logs JOB_ID | tail -1` answers "how did it go".
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python jobs/ray_job.py` puts jobs/ first, not the repo

log = logging.getLogger("pseudolabel.job")


def build_parser() -> argparse.ArgumentParser:
    from pipeline.commands import run as run_command

    parser = argparse.ArgumentParser(
        prog="jobs/ray_job.py",
        description="Run `pseudolabel run` as a Ray Job driver (same arguments), then optionally verify.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    run_command.add_arguments(parser)
    parser.add_argument(
        "--verify-after", action="store_true",
        help="run `pseudolabel verify OUTPUT INPUT` after the run; its failure fails the job",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pipeline.commands import run as run_command
    from pipeline.errors import UserError

    t0 = time.monotonic()
    summary: dict = {"event": "job_finished", "driver_host": socket.gethostname(),
                     "input": args.input, "output": args.output}
    try:
        rc = int(run_command.main(args) or 0)
        summary["run_exit"] = rc
        if args.verify_after:
            # Also after a run that exceeded its failure rate (exit 1): failed samples are rows too,
            # so the output must still be consistent.
            rc = max(rc, _verify(args, summary))
    except UserError as exc:
        print(f"ray_job: error: {exc}", file=sys.stderr)
        summary.update(error=str(exc).splitlines()[0])
        rc = 2
    summary.update(exit=rc, seconds=round(time.monotonic() - t0, 1))
    print(json.dumps(summary), flush=True)
    return rc


def _verify(args: argparse.Namespace, summary: dict) -> int:
    from pipeline.config import load_config
    from pipeline.run.verify import verify_output

    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))
    report = verify_output(args.output, args.input, cfg.io.storage_options)
    print(report.summary(), flush=True)
    summary["verify"] = {"passed": report.passed, "problems": report.counts,
                         "rows": report.rows, "shards": report.shards}
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
