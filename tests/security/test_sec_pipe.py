"""Threat 1 of docs/security.md: a `pipe:` line from a shard list (local or on S3) or a config must
never run; `pipe:` runs only with the command line's --allow-pipe, and --dry-run shows every command.
Each test plants a command that would create a marker file and checks that the marker is absent."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest

from pipeline.cli import main
from tests.support import NAMES, REPO, env_without

pytestmark = pytest.mark.timeout(120)
_INFO_LOG = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (INFO|DEBUG) ")


def _marker_command(tmp_path, name="x"):
    """A shell command that would create a marker (what an attacker's `curl evil | sh` stands for)."""
    marker = tmp_path / f"pwned-{name}"
    return marker, f"touch {marker} # {name}.tar"


def _one_error_line(err: str) -> str:
    """The one error line of a command (INFO log lines of libraries, e.g. botocore's, aside)."""
    lines = [line for line in err.strip().splitlines() if line.strip() and not _INFO_LOG.match(line)]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("allow", [False, True])
def test_pipe_line_in_a_local_list_is_refused_before_ray(tmp_path, tiny_overrides, capsys, allow):
    marker, command = _marker_command(tmp_path)
    listing = tmp_path / "shards.txt"
    listing.write_text(f"# written by another team\npipe:{command}\n")
    out = tmp_path / "out"
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    rc = main(["run", str(listing), "--out", str(out), *sets, "--no-progress", *(["--allow-pipe"] if allow else [])])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "shards.txt" in line and "line 2" in line and "not accepted from list files" in line
    assert not marker.exists()
    assert not out.exists(), "nothing may be written (refused before the lock and Ray)"


def test_pipe_hidden_in_braces_of_a_list_line_is_not_run(tmp_path, tiny_overrides, capsys):
    marker, _ = _marker_command(tmp_path)
    listing = tmp_path / "shards.lst"
    # brace expansion after the prefix must not turn a list line into a pipe: either
    listing.write_text(f"{{pipe:touch {marker} x.tar,b.tar}}://\n")
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    assert main(["run", str(listing), "--out", str(tmp_path / "out"), *sets, "--allow-pipe", "--dry-run"]) == 2
    assert "not accepted from list files" in _one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_pipe_input_needs_allow_pipe_and_dry_run_prints_the_commands(tmp_path, tiny_overrides, capsys):
    marker = tmp_path / "ran"
    spec = f"pipe:touch {marker}; cat /dev/null # part-{{0..2}}.tar"
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    out = tmp_path / "out"
    assert main(["run", spec, "--out", str(out), *sets, "--dry-run"]) == 2
    assert "pass --allow-pipe" in _one_error_line(capsys.readouterr().err)

    assert main(["run", spec, "--out", str(out), *sets, "--dry-run", "--allow-pipe"]) == 0
    text = capsys.readouterr().out
    for i in range(3):  # each command exactly as the workers would run it
        assert f"    touch {marker}; cat /dev/null # part-{i}.tar\n" in text
    assert "pipe commands (3," in text
    assert not marker.exists() and not out.exists()


def test_no_config_key_enables_pipe(tmp_path, tiny_overrides, capsys):
    from pipeline.config import Config

    # the only switch is the command line's: no config section holds a key about pipes
    flat = json.dumps(dataclasses.asdict(Config()), default=str)
    assert "pipe" not in flat.lower()
    marker = tmp_path / "ran"
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    rc = main(["run", f"pipe:touch {marker} # a.tar", "--out", str(tmp_path / "out"), *sets, "--set", "io.allow_pipe=true",
               "--dry-run"])
    assert rc == 2 and not marker.exists()
    capsys.readouterr()


def test_verify_deep_runs_no_pipe_without_allow_pipe(tmp_path, capsys):
    marker = tmp_path / "ran"
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["verify", str(out), f"pipe:touch {marker} # a.tar", "--deep"])
    assert rc == 2
    assert "pass --allow-pipe" in _one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_pipe_line_in_a_list_on_s3_is_refused(tmp_path, tiny_overrides):
    """Black box: a subprocess `pseudolabel run s3://.../shards.txt` against moto on loopback."""
    pytest.importorskip("moto")
    from tests.cluster.cluster_support import S3_ENV, free_port

    from moto.server import ThreadedMotoServer

    import boto3

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        env = {**env_without("RAY_ADDRESS", "AWS_ENDPOINT_URL"), **S3_ENV, "AWS_ENDPOINT_URL_S3": endpoint}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="lists")
        marker, command = _marker_command(tmp_path, "s3")
        s3.put_object(Bucket="lists", Key="nightly/shards.txt", Body=f"a.tar\npipe:{command}\n".encode())
        sets = [a for s in tiny_overrides for a in ("--set", s)]
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "s3://lists/nightly/shards.txt",
                               "--out", str(tmp_path / "out"), *sets, "--no-progress", "--allow-pipe"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
    finally:
        server.stop()
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_error_line(proc.stderr)
    assert "s3://lists/nightly/shards.txt" in line and "line 2" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.timeout(300)
def test_failing_pipe_stderr_is_not_copied_into_records(ray_local, corpus, tiny_overrides, tmp_path, capsys):
    """A failing command's stderr (here with a presigned URL and a token) reaches no record,
    summary or message verbatim: only a short redacted tail."""
    secret = "S3CR3T-" + "q" * 12
    script = tmp_path / "fetch.sh"
    script.write_text(f"""#!/bin/sh
echo "fatal: GET https://user:{secret}@host/b/$1?X-Amz-Signature={secret} token={secret}" >&2
exit 3
""")
    script.chmod(0o755)
    out = tmp_path / "out"
    sets = [a for s in [*tiny_overrides, "ray.cpu_actors=1", "ray.max_shard_retries=0"] for a in ("--set", s)]
    rc = main(["run", f"pipe:{script} {corpus}/{NAMES[0]}.tar", "--out", str(out), *sets, "--allow-pipe",
               "--no-progress", "--json", "-"])
    captured = capsys.readouterr()
    assert rc == 1  # the shard failed
    summary = json.loads(captured.out)
    reason = summary["failed_shards"][0]["reason"]
    assert "status 3" in reason and "(fetch.sh)" in reason and "fatal: GET https://***@" in reason
    assert str(tmp_path) not in reason  # neither the command line nor its arguments are recorded
    assert secret not in captured.out + captured.err
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
