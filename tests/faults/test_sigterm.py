"""SIGTERM (what Kubernetes and Ray Jobs send) stops `pseudolabel run` like Ctrl-C, gracefully: the
real CLI in a subprocess with its own local Ray, the signal sent to the driver's pid."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.demo_corpus import build_demo_corpus
from pipeline.run.runner import run_pipeline
from tests.cluster.cluster_support import subprocess_env
from tests.support import REPO, assert_same_output, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NAMES = [f"demo-{i:06d}" for i in range(3)]
CRASH_SIGNS = ("Aborted", "core dumped", "Fatal Python error", "*** SIG", "Stack trace", "Traceback")


@pytest.fixture(scope="module")
def slow_corpus(tmp_path_factory) -> Path:
    """3 shards of 12 images (96x72): a few seconds each, so one is surely in flight."""
    root = tmp_path_factory.mktemp("sigterm") / "in"
    build_demo_corpus(root, shards=3, per_shard=12, seed=5, size=(96, 72))
    return root


@pytest.fixture(scope="module")
def slow_reference(ray_local, slow_corpus, tiny_cfg, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sigterm-ref") / "out"
    run_pipeline(str(slow_corpus), str(out), tiny_cfg("ray.cpu_actors=1"))
    return snapshot(out, NAMES)


class Driver:
    """`pseudolabel run` in its own session; its stderr read line by line in a thread."""

    def __init__(self, inp: Path, out: Path, tiny_overrides: list[str], *extra: str):
        args = [sys.executable, "-m", "pipeline.cli", "run", str(inp), str(out), "--no-progress",
                "--max-failure-rate", "0.5", "--set", "ray.cpu_actors=1", "--set", "batch_size=4"]
        for item in [*tiny_overrides, *extra]:
            args += ["--set", item]
        self.proc = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if regex.search(line):
                return line
        raise AssertionError(f"no line matching {pattern!r}; stderr:\n{''.join(self.stderr)[-3000:]}")

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:  # a test that failed: leave no driver or Ray behind
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def text(self) -> str:
        time.sleep(0.2)  # the reader thread drains the last lines
        return "".join(self.stderr)


def _done(out: Path) -> set[str]:
    folder = out / "_done"
    return {p.name[: -len(".json")] for p in folder.glob("*.json")} if folder.exists() else set()


def test_sigterm_lets_the_shard_in_flight_finish_then_exits_143(slow_corpus, slow_reference, tiny_overrides,
                                                               tmp_path):
    out = tmp_path / "out"
    driver = Driver(slow_corpus, out, tiny_overrides)
    line = driver.wait_for_line(r"shard demo-\d+: start", timeout=200)
    in_flight = re.search(r"shard (demo-\d+): start", line).group(1)
    driver.proc.send_signal(signal.SIGTERM)
    rc = driver.finish(timeout=120)
    log = driver.text()
    assert rc == 143, log[-3000:]
    assert not any(sign in log for sign in CRASH_SIGNS), log[-3000:]
    done = _done(out)
    assert in_flight in done, f"the shard in flight ({in_flight}) did not finish: {sorted(done)}"
    assert len(done) < len(NAMES), "the run was not stopped"
    said = re.findall(r"pseudolabel run: stopped by SIGTERM; (\d+) shards complete, re-run the same command "
                      r"to resume", log)
    assert said == [str(len(done))], log[-2000:]
    assert not (out / "_lock.json").exists(), "the lock must be released"

    # The resume in this process (it joins the suite's Ray): only the stop needed a driver of its own.
    args = ["run", str(slow_corpus), str(out), "--no-progress", "--max-failure-rate", "0.5",
            "--set", "ray.cpu_actors=1", "--set", "batch_size=4"]
    for item in tiny_overrides:
        args += ["--set", item]
    assert main(args) == 0
    assert _done(out) == set(NAMES)
    assert_same_output(slow_reference, snapshot(out, NAMES))


def test_a_second_sigterm_stops_at_once_and_releases_the_lock(slow_corpus, tiny_overrides, tmp_path):
    out = tmp_path / "out"
    driver = Driver(slow_corpus, out, tiny_overrides, "ray.term_grace_s=600")
    driver.wait_for_line(r"shard demo-\d+: start", timeout=200)
    driver.proc.send_signal(signal.SIGTERM)
    driver.wait_for_line(r"SIGTERM: no more shards are handed out", timeout=30)
    driver.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = driver.finish(timeout=60)
    log = driver.text()
    assert rc == 143, log[-3000:]
    assert time.monotonic() - t0 < 45, "a second SIGTERM must not wait for the grace (600 s)"
    assert "pseudolabel run: stopped by a second SIGTERM;" in log and "re-run the same command to resume" in log
    assert not any(sign in log for sign in CRASH_SIGNS), log[-3000:]
    assert not (out / "_lock.json").exists(), "the lock must be released"
