"""The storage layer's retries, without a network: which errors are transient, how many attempts,
and the read-back of a write whose answer was lost (the S3 versions: test_s3_faults.py)."""
from __future__ import annotations

import errno

import pytest

from pipeline.errors import TransientReadError, TransientWriteError
from pipeline.io import storage
from pipeline.io.storage import is_transient_error, read_with_retries, upload_with_retries


class FlakyStore:
    """`put_file` raises the given errors in turn, then stores; `commit_anyway`: a failing put
    still stores the bytes (the answer was lost, not the write)."""

    def __init__(self, errors, commit_anyway=False):
        self.errors, self.commit_anyway = list(errors), commit_anyway
        self.objects: dict[str, bytes] = {}
        self.puts = 0

    def put_file(self, local, final):
        self.puts += 1
        if self.commit_anyway or not self.errors:
            with open(local, "rb") as f:
                self.objects[final] = f.read()
        if self.errors:
            raise self.errors.pop(0)

    def invalidate_cache(self, path):
        pass

    def cat_file(self, path):
        return self.objects[path]


@pytest.fixture(autouse=True)
def _no_waiting(monkeypatch):
    monkeypatch.setattr(storage, "RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def blob(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"{\"shard\": \"a\"}")
    return str(path)


def test_transient_and_permanent_errors():
    import aiohttp
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, NoCredentialsError

    for exc in (OSError(errno.EREMOTEIO, "Internal Error"), OSError(errno.EBUSY, "Service Unavailable"),
                TimeoutError(), ConnectionResetError(), aiohttp.ServerDisconnectedError(),
                ConnectionClosedError(endpoint_url="http://x"), EndpointConnectionError(endpoint_url="http://x")):
        assert is_transient_error(exc), exc
    for exc in (FileNotFoundError(), PermissionError(), FileExistsError(), NoCredentialsError(), ValueError()):
        assert not is_transient_error(exc), exc


def test_an_upload_failing_with_5xx_is_retried_until_it_passes(blob):
    store = FlakyStore([OSError(errno.EREMOTEIO, "Internal Error")] * (storage.RETRY_ATTEMPTS - 1))
    upload_with_retries(store, blob, "out/masks/a.tar")
    assert store.puts == storage.RETRY_ATTEMPTS and store.objects["out/masks/a.tar"]


def test_an_upload_failing_every_time_raises_a_typed_one_line_error(blob):
    store = FlakyStore([OSError(errno.EREMOTEIO, "Internal Error")] * storage.RETRY_ATTEMPTS)
    with pytest.raises(TransientWriteError, match=r"failed 5 times, last: OSError: .*Internal Error"):
        upload_with_retries(store, blob, "out/masks/a.tar")


def test_a_permanent_error_is_not_retried(blob):
    store = FlakyStore([PermissionError("Access Denied")])
    with pytest.raises(PermissionError):
        upload_with_retries(store, blob, "out/_done/a.json")
    assert store.puts == 1


def test_a_write_whose_answer_was_lost_is_read_back_not_repeated(blob):
    from botocore.exceptions import ConnectionClosedError

    store = FlakyStore([ConnectionClosedError(endpoint_url="http://x")] * 10, commit_anyway=True)
    with open(blob, "rb") as f:
        upload_with_retries(store, blob, "out/_done/a.json", expect=f.read())
    assert store.puts == 1


def test_reads_are_retried_then_raise_transient_read_error():
    answers = [OSError(errno.EBUSY, "Service Unavailable")] * 2 + ["ok"]

    def call():
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert read_with_retries(call, "opening s3://b/in/a.tar") == "ok"
    with pytest.raises(TransientReadError, match="opening s3://b/in/a.tar failed 5 times"):
        read_with_retries(lambda: (_ for _ in ()).throw(OSError(errno.EBUSY, "busy")), "opening s3://b/in/a.tar")
