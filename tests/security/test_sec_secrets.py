"""Threat 3 of docs/security.md: secrets never leave the process.

`io.storage_options` credentials, user:password in URLs and presigned query strings must reach no
file of OUTPUT (JSON, Parquet, tar: every byte is searched), no `_lock.json`, no line printed to
stdout/stderr (log lines included), and no lock-held error shown to a second user. The end-to-end
cases run `pseudolabel run` against moto's S3 server on 127.0.0.1."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.io.records import DatasetMeta, DoneRecord, SampleResult, SampleError
from pipeline.io.layout import ShardStatus
from pipeline.redact import REDACTED, redact_config, redact_options, redact_text, redact_url, register_secrets
from pipeline.run.lock import LOCK_NAME, LockHeldError, LockRecord, RunLock
from tests.cluster.cluster_support import S3_ENV, s3_bucket, s3_server, write_shards  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(300)

SIG = "4fe8df6527df99445a36879e1ef20d0ca8661de3b4da76d418af59df76cb5c71"
PRESIGNED = ("http://alice:PASSW0RD-url@store.example:9000/bucket/in/shard-000001.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             f"&X-Amz-Credential=AKIAEXAMPLE%2F20261203%2Fus-east-1&X-Amz-Expires=3600&X-Amz-Signature={SIG}")


# -- the redaction itself ----------------------------------------------------------------------
def test_redact_url_keeps_scheme_host_path_only():
    assert redact_url(PRESIGNED) == "http://store.example:9000/bucket/in/shard-000001.tar"
    assert redact_url("s3://bucket/in/a.tar") == "s3://bucket/in/a.tar"
    assert redact_url("/data/in/a.tar") == "/data/in/a.tar"
    assert "PASSW0RD" not in redact_url("pipe:curl -s https://bob:PASSW0RD-pipe@h/a.tar")


def test_redact_text_marks_where_credentials_were_and_learns_them():
    text = redact_text(f"GET {PRESIGNED} failed")
    assert text == "GET http://***@store.example:9000/bucket/in/shard-000001.tar?*** failed"
    # The signature seen once is replaced wherever it shows up later, without its URL.
    assert SIG not in redact_text(f"server said: signature {SIG} does not match")


def test_storage_options_are_redacted_at_any_depth_keeping_only_known_plain_settings():
    options = {"key": "AKIAEXAMPLE", "secret": "SEKRET-opt-1", "endpoint_url": "http://u:PASSW0RD-ep@minio:9000",
               "client_kwargs": {"aws_session_token": "TOKEN-opt-2", "region_name": "eu-west-1"},
               "headers": {"Authorization": "Bearer abc", "Accept": "x"}, "anon": False,
               "foo": "S3CR3T-under-an-innocent-name", "timeout": 30}
    clean = redact_options(options)
    assert clean == {"key": REDACTED, "secret": REDACTED, "endpoint_url": "http://***@minio:9000",
                     "client_kwargs": {"aws_session_token": REDACTED, "region_name": "eu-west-1"},
                     "headers": {"Authorization": REDACTED, "Accept": REDACTED}, "anon": False,
                     "foo": REDACTED, "timeout": 30}
    assert options["secret"] == "SEKRET-opt-1", "the caller's options are not changed"
    config = redact_config({"io": {"storage_options": options}, "model": {"pretrained": "https://u:PASSW0RD-m@h/w.pt?sig=x"}})
    assert "SEKRET" not in json.dumps(config) and "PASSW0RD" not in json.dumps(config)


def test_command_line_settings_are_redacted():
    argv = ("pseudolabel run in out --set io.storage_options.secret=SEKRET-cl-1 "
            "--set io.storage_options={key: AKIAEXAMPLE, secret: SEKRET-cl-2, client_kwargs: {a: b}} "
            "--set io.storage_options.endpoint_url=http://minio:9000 --set io.storage_options.client_kwargs.aws_secret_access_key=SEKRET-cl-3 "
            "--no-progress")
    clean = redact_text(argv)
    assert "SEKRET" not in clean and "AKIAEXAMPLE" not in clean
    assert "io.storage_options.secret=*** " in clean and "io.storage_options.endpoint_url=http://minio:9000 " in clean
    assert clean.endswith("--no-progress")


def test_records_written_carry_no_secret():
    register_secrets({"secret": "SEKRET-rec-1"})
    sample = SampleResult(key="k", sample_index=0, source_shard=PRESIGNED)
    sample.fail(SampleError("corrupt", f"cannot read {PRESIGNED}: SEKRET-rec-1 refused"))
    row = sample.to_row("masks/shard-000001.tar")
    assert row.source_shard == "http://store.example:9000/bucket/in/shard-000001.tar"
    assert row.error.startswith("corrupt: cannot read http://***@store.example") and "SEKRET" not in row.error
    done = DoneRecord(shard="shard-000001", source=PRESIGNED, status=ShardStatus.FAILED,
                      failure=f"tar broke: {PRESIGNED}").to_json()
    assert b"PASSW0RD" not in done and SIG.encode() not in done
    meta = DatasetMeta(vocabulary=[], num_classes=0, ignore_index=255, label_dtype="uint8",
                       config={"io": {"storage_options": {"secret": "SEKRET-rec-1"}}})
    assert b"SEKRET" not in meta.to_json()


# -- the lock -----------------------------------------------------------------------------------
def test_lock_record_and_lock_held_error_hide_the_holders_secrets(tmp_path, capsys, monkeypatch, corpus,
                                                                 tiny_overrides):
    """The holder's whole argv goes into _lock.json: its credentials must not; a second user's
    `pseudolabel run` prints the holder's command line redacted."""
    out = tmp_path / "out"
    argv = ["pseudolabel", "run", PRESIGNED, str(out), "--set", "io.storage_options.secret=SEKRET-lock-1",
            "--set", "io.storage_options={key: AKIAEXAMPLE, secret: SEKRET-lock-2}"]
    monkeypatch.setattr(sys, "argv", argv)
    with RunLock(str(out), stale_after_s=60, heartbeat_s=5) as holder:
        blob = (out / LOCK_NAME).read_bytes()
        for secret in (b"SEKRET-lock", b"AKIAEXAMPLE", b"PASSW0RD", SIG.encode()):
            assert secret not in blob
        assert "store.example:9000/bucket/in/shard-000001.tar" in json.loads(blob)["command"]
        code = main(["run", str(corpus), "--out", str(out), "--no-progress",
                     *[a for s in tiny_overrides for a in ("--set", s)]])
        err = capsys.readouterr().err
        assert code == 2 and f"locked by run {holder.run_id}" in err, err
        for secret in ("SEKRET-lock", "AKIAEXAMPLE", "PASSW0RD", SIG):
            assert secret not in err


def test_lock_held_error_redacts_a_record_written_before_redaction(tmp_path):
    """An older pseudolabel wrote the command verbatim: the error still shows no credential."""
    out = tmp_path / "out"
    out.mkdir()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    command = f"pseudolabel run {PRESIGNED} out --set io.storage_options.secret=SEKRET-old-1"
    (out / LOCK_NAME).write_bytes(LockRecord(run_id="old1", host="other-host", pid=1, started_at=stamp,
                                             heartbeat_at=stamp, heartbeat_s=10, stale_after_s=300,
                                             output=str(out), command=command).to_json())
    with pytest.raises(LockHeldError) as err:
        RunLock(str(out), stale_after_s=60).acquire()
    message = str(err.value)
    assert "old1" in message and "SEKRET-old-1" not in message and "PASSW0RD" not in message and SIG not in message


def test_dry_run_plan_shows_input_without_its_credentials(tmp_path, capsys):
    """A scheduled job's log keeps the plan: INPUT's password and signature are not in it, as text
    or as JSON (the URL is never fetched by a dry run of a single shard)."""
    url = PRESIGNED.replace("store.example:9000", "127.0.0.1:9")
    base = ["run", url, "--out", str(tmp_path / "out"), "--dry-run", "--set", "model.pretrained=random",
            "--set", "vocabulary.templates=single", "--set", "vocabulary.file=voc21"]
    assert main(base) == 0
    text = capsys.readouterr().out
    assert main([*base, "--json", "-"]) == 0
    doc = capsys.readouterr().out
    assert "http://***@127.0.0.1:9/bucket/in/shard-000001.tar?***" in text and json.loads(doc)["shards_total"] == 1
    for secret in ("PASSW0RD", SIG, "AKIAEXAMPLE"):
        assert secret not in text and secret not in doc


# -- end to end, through the CLI, against moto S3 -----------------------------------------------
def _run(args: list[str], capfd) -> tuple[int, str, str]:
    """`pseudolabel run` in this process, on the suite's Ray (whose workers log to files: see
    `_ray_worker_logs`; the driver's log lines are in `caplog`); returns (exit status, stdout, stderr)."""
    capfd.readouterr()
    code = main(["run", *args, "--no-progress", "--max-failure-rate", "0.9", "--set", "ray.cpu_actors=1",
                 "--set", "ray.num_actors=1", "--set", "ray.max_shard_retries=0"])
    time.sleep(1.0)  # the workers' last lines reach their log files asynchronously
    out, err = capfd.readouterr()
    return code, out, err


def _every_byte(folder: Path) -> list[tuple[Path, bytes]]:
    files = [(p, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]
    assert files, f"nothing written under {folder}"
    return files


def _assert_nowhere(secrets: list[str], folder: Path, *texts: str) -> None:
    for secret in secrets:
        for path, data in _every_byte(folder):
            assert secret.encode() not in data, f"{secret!r} in {path}"
        for text in texts:
            assert secret not in text, f"{secret!r} printed:\n{text[-3000:]}"


def test_run_with_storage_option_secret_writes_it_nowhere(ray_local, s3_server, s3_bucket, tmp_path, tiny_overrides,
                                                          capfd, caplog):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    for path in write_shards(tmp_path / "in", n_shards=1, per_shard=4):
        fs.put_file(str(path), f"{s3_bucket}/in/{path.name}")
    fs.pipe_file(f"{s3_bucket}/in/shard-000009.tar", b"not a tar at all" * 64)  # a failed shard, with a message
    secret = "SEKRET-e2e-" + "s" * 16
    out = tmp_path / "out"
    options = f"{{endpoint_url: '{s3_server}', key: {S3_ENV['AWS_ACCESS_KEY_ID']}, secret: {secret}}}"
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    caplog.set_level(logging.INFO)  # as the command line logs (pytest's handlers replace basicConfig's)
    code, stdout, stderr = _run([f"s3://{s3_bucket}/in/", "--out", str(out), "--set", f"io.storage_options={options}", *sets],
                                capfd)
    assert code in (0, 1), stderr[-3000:]
    assert len(list((out / "_done").glob("*.json"))) == 1, stderr[-3000:]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["config"]["io"]["storage_options"] == {"endpoint_url": s3_server, "key": REDACTED, "secret": REDACTED}
    assert "shard-000009" in stdout + caplog.text  # the failed shard was reported, its message searched too
    _assert_nowhere([secret], out, stdout, stderr, caplog.text, _ray_worker_logs(ray_local))


def test_run_from_presigned_url_with_password_records_only_scheme_host_path(ray_local, s3_server, s3_bucket, tmp_path,
                                                                            tiny_overrides, capfd, caplog):
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=s3_server, config=Config(signature_version="s3v4"))
    (path,) = write_shards(tmp_path / "in", n_shards=1, per_shard=4)
    client.upload_file(str(path), s3_bucket, f"in/{path.name}")
    url = client.generate_presigned_url("get_object", Params={"Bucket": s3_bucket, "Key": f"in/{path.name}"},
                                        ExpiresIn=3600)
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    password = "PASSW0RD-e2e-" + "p" * 8
    token = "SEKRET-header-" + "t" * 12
    url = url.replace("http://", f"http://alice:{password}@", 1)
    out = tmp_path / "out"
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    headers = f"io.storage_options={{client_kwargs: {{headers: {{X-Session-Token: {token}}}}}}}"
    caplog.set_level(logging.INFO)
    code, stdout, stderr = _run([url, "--out", str(out), "--set", headers, *sets], capfd)
    assert code in (0, 1), stderr[-3000:]
    (manifest,) = (out / "manifest").glob("*.parquet")
    sources = set(pq.read_table(manifest).column("source_shard").to_pylist())
    assert sources == {f"{s3_server}/{s3_bucket}/in/{path.name}"}
    record = json.loads((out / "_done" / f"{path.stem}.json").read_text())
    assert record["source"] == f"{s3_server}/{s3_bucket}/in/{path.name}" and record["ok"] > 0
    # The driver logged INPUT, the worker the shard's URL: both reduced, never verbatim.
    host = s3_server.split("://", 1)[1]
    assert f"http://***@{host}/{s3_bucket}/in/{path.name}?***" in caplog.text
    worker_logs = _ray_worker_logs(ray_local)
    assert f"start (http://***@{host}/{s3_bucket}/in/{path.name}?***)" in worker_logs
    _assert_nowhere([password, signature, token], out, stdout, stderr, caplog.text, worker_logs)


def _ray_worker_logs(ray) -> str:
    """Everything the suite's Ray workers have logged so far (their files under the session's logs)."""
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("worker-*")) if p.is_file())
