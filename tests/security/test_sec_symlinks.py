"""Threat 4 of docs/security.md: no write follows a symlink or leaves OUTPUT/DEST.

A colleague (or an attacker) who can write into a shared OUTPUT plants symlinks: a per-run folder
pointing elsewhere (`OUTPUT/masks -> victim`), or a link at a temporary name a run will write
(`_lock.json.<run_id>.hb.tmp`, whose run id is public in `_lock.json`). Each test checks that the
victim's files are untouched, byte for byte."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.cli import main
from pipeline.errors import UserError
from pipeline.io.atomic import atomic_local_path, create_temp, write_atomic
from pipeline.io.output_dir import OutputDir
from pipeline.run.lock import LOCK_NAME, RunLock, read_lock
from tests.support import REPO

pytestmark = pytest.mark.timeout(180)


def _victim(tmp_path):
    """A folder of someone else's files that no run may list, change or delete."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_bytes(b"do not touch")
    (victim / "demo-000000.tar").write_bytes(b"not ours either")  # named like our files on purpose
    return victim


def _state(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _sets(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.mark.parametrize("folder", ["masks", "_done", "manifest", "_tmp"])
def test_overwrite_refuses_a_symlinked_output_folder(tmp_path, capsys, corpus, tiny_overrides, folder):
    victim = _victim(tmp_path)
    before = _state(victim)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset.json").write_text("{}")  # a previous run's output, as far as --overwrite cares
    (out / folder).symlink_to(victim, target_is_directory=True)
    code = main(["run", str(corpus), "--out", str(out), "--overwrite", "--no-progress", *_sets(tiny_overrides)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and "symbolic link" in lines[0] and f"{out / folder}" in lines[0], err
    assert _state(victim) == before
    assert (out / folder).is_symlink() and not (out / LOCK_NAME).exists()


def test_clear_refuses_symlinked_folder_and_keeps_foreign_files(tmp_path):
    """The library call behind --overwrite: a symlinked folder is refused before anything is listed
    or deleted; in real folders only files named like ours go, a colleague's notes stay."""
    victim = _victim(tmp_path)
    before = _state(victim)
    out = tmp_path / "out"
    (out / "_done").mkdir(parents=True)
    (out / "manifest").mkdir()
    (out / "masks").symlink_to(victim, target_is_directory=True)
    (out / "_done" / "demo-000000.json").write_text("{}")
    with pytest.raises(UserError, match="symbolic link"):
        OutputDir(str(out)).clear()
    assert _state(victim) == before and (out / "_done" / "demo-000000.json").exists()

    (out / "masks").unlink()
    (out / "masks").mkdir()
    (out / "masks" / "demo-000000.tar").write_bytes(b"ours")
    (out / "masks" / "README.txt").write_text("a colleague's notes")
    (out / "manifest" / "link.parquet").symlink_to(victim / "precious.txt")  # a link named like ours
    (out / "_stats.json").write_text("{}")
    OutputDir(str(out)).clear()
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["README.txt"]
    assert not (out / "_done" / "demo-000000.json").exists() and not (out / "_stats.json").exists()
    assert not (out / "manifest" / "link.parquet").is_symlink()  # the link itself went, not its target
    assert _state(victim) == before


def test_writes_refuse_a_folder_replaced_by_a_symlink_mid_run(tmp_path):
    """A folder swapped for a symlink after the run's start check: the write itself refuses."""
    victim = _victim(tmp_path)
    before = _state(victim)
    out = OutputDir(str(tmp_path / "out"))
    out.write_bytes("masks/a.tar", b"first")
    (tmp_path / "out" / "masks" / "a.tar").unlink()
    (tmp_path / "out" / "masks").rmdir()
    (tmp_path / "out" / "masks").symlink_to(victim, target_is_directory=True)
    with pytest.raises(UserError, match="symbolic link"):
        out.write_bytes("masks/demo-000000.tar", b"overwritten")
    with pytest.raises(UserError, match="symbolic link"):
        out.remove("masks/demo-000000.tar")
    with pytest.raises(UserError, match="symbolic link"):
        out.listdir("masks")
    assert _state(victim) == before


def test_heartbeat_does_not_write_through_a_planted_temp_symlink(tmp_path):
    """The old heartbeat temp name `_lock.json.<run_id>.hb.tmp` (run id public) as a planted
    symlink to a victim file: heartbeats keep coming, the victim keeps its bytes."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"victim bytes")
    run_id = "0123456789ab"
    (out / f"{LOCK_NAME}.{run_id}.hb.tmp").symlink_to(victim)
    with RunLock(str(out), stale_after_s=10, heartbeat_s=0.1, run_id=run_id):
        first = read_lock(str(out)).heartbeat_at
        time.sleep(0.5)
        assert read_lock(str(out)).heartbeat_at > first
    assert victim.read_bytes() == b"victim bytes"


@pytest.mark.slow
def test_cli_run_heartbeat_ignores_a_symlink_planted_at_the_old_temp_name(tmp_path, corpus, tiny_overrides):
    """Black box: a real `pseudolabel run` (heartbeat every 0.5 s); the attacker reads its run id
    from _lock.json, plants `_lock.json.<run_id>.hb.tmp -> victim`, waits for two heartbeats."""
    out = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"victim bytes")
    env = dict(os.environ, PSEUDOLABEL_LOCK_STALE_S="2", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(corpus), "--out", str(out), "--no-progress",
                             *_sets(tiny_overrides)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while read_lock(str(out)) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the run never took its lock"
            time.sleep(0.05)
        record = read_lock(str(out))
        (out / f"{LOCK_NAME}.{record.run_id}.hb.tmp").symlink_to(victim)
        beats = {record.heartbeat_at}
        while len(beats) < 3 and proc.poll() is None:
            time.sleep(0.1)
            current = read_lock(str(out))
            if current is not None:
                beats.add(current.heartbeat_at)
        assert victim.read_bytes() == b"victim bytes"
        assert len(beats) >= 3 or proc.returncode == 0, "the run neither heartbeat twice nor finished"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    assert victim.read_bytes() == b"victim bytes"


def test_atomic_helpers_use_fresh_exclusive_names(tmp_path):
    """Temporaries are random and created exclusively, readable like a plain open(); a symlink
    at the final name is replaced, never written through."""
    fd, first = create_temp(tmp_path, "x.json")
    os.close(fd)
    fd, second = create_temp(tmp_path, "x.json")
    os.close(fd)
    assert first != second and first.name.startswith(".x.json.") and first.name.endswith(".tmp")
    assert (first.stat().st_mode & 0o777) == 0o666 & ~_umask()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"victim bytes")
    final = tmp_path / "final.json"
    final.symlink_to(victim)
    write_atomic(final, b"new")
    assert victim.read_bytes() == b"victim bytes" and not final.is_symlink() and final.read_bytes() == b"new"
    with atomic_local_path(tmp_path / "y.bin", fsync=False) as tmp:
        tmp.write_bytes(b"y")
    assert (tmp_path / "y.bin").read_bytes() == b"y"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p not in (first, second)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
