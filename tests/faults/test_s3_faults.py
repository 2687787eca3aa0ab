"""Transient object-store faults end in a complete, exact OUTPUT in one run: moto's S3 behind the
fault proxy (tests/faultproxy.py), a real local Ray, the CLI in this process."""
from __future__ import annotations

import uuid

import pytest

from pipeline.io import storage as storage_module
from pipeline.run.lock import LOCK_NAME, RunLock, read_lock
from tests.faultproxy import Rule
from tests.faults.s3_support import run_cli, s3_exists, s3_output, s3_stats

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # S3 + Ray runs, 30-90 s each here


def _out(s3_input) -> str:
    return f"s3://{s3_input.bucket}/out-{uuid.uuid4().hex[:8]}"


def _assert_complete_and_exact(endpoint, out, s3_input, reference) -> None:
    stats = s3_stats(endpoint, out)
    assert stats["dataset"]["shards_complete"] == len(s3_input.names), stats
    assert stats["this_run"]["shards_failed"] == 0, stats
    assert not s3_exists(endpoint, f"{out}/{LOCK_NAME}"), "the lock must be released"
    got = s3_output(endpoint, out)
    assert sorted(got) == sorted(reference) == sorted(s3_input.names)
    for name in reference:
        assert got[name]["rows"] == reference[name]["rows"], f"manifest of {name} differs"
        assert got[name]["masks"] == reference[name]["masks"], f"masks of {name} differ"


# -- the lock --------------------------------------------------------------------------------
def test_a_lock_create_whose_answer_was_lost_is_ours(s3_server, s3_input, proxy):
    """The conditional PUT took effect but its answer was cut: the client retries and the store
    answers 412. The lock is ours all the same, and released at the end."""
    out = _out(s3_input)
    rule = proxy.add(Rule("PUT", r"/_lock\.json", "drop_response", header="If-None-Match"))
    opts = {"endpoint_url": proxy.url, "key": "testing", "secret": "testing"}
    with RunLock(out, opts, stale_after_s=30, heartbeat_s=5) as lock:
        assert rule.acted == 1
        assert read_lock(out, opts).run_id == lock.run_id
    assert not s3_exists(s3_server, f"{out}/{LOCK_NAME}")


def test_run_with_a_lost_lock_answer_completes_in_one_go(s3_server, s3_input, s3_reference, proxy):
    out = _out(s3_input)
    rule = proxy.add(Rule("PUT", r"/_lock\.json", "drop_response", header="If-None-Match"))
    assert run_cli(proxy.url, s3_input.url, out) == 0
    assert rule.acted == 1
    _assert_complete_and_exact(s3_server, out, s3_input, s3_reference)


# -- writes ----------------------------------------------------------------------------------
def test_mask_uploads_failing_with_500_are_retried_in_the_run(s3_server, s3_input, s3_reference, proxy):
    """botocore's own retries are capped at one attempt here, so the 500s reach the storage
    layer's backed-off retries (by default botocore absorbs a few quick ones first)."""
    out = _out(s3_input)
    rule = proxy.add(Rule("PUT", r"/masks/.*\.tar", "status", status=500,
                          times=storage_module.RETRY_ATTEMPTS - 2))
    assert run_cli(proxy.url, s3_input.url, out, client_attempts=1) == 0
    assert rule.acted == storage_module.RETRY_ATTEMPTS - 2
    _assert_complete_and_exact(s3_server, out, s3_input, s3_reference)


def test_a_done_record_whose_answer_was_lost_is_complete(s3_server, s3_input, s3_reference, proxy):
    """Every PUT of one shard's `_done` record takes effect but none is answered: the record is
    read back, found equal, and the shard counts as complete; exit 0."""
    out = _out(s3_input)
    first = s3_input.names[0]
    rule = proxy.add(Rule("PUT", rf"/_done/{first}\.json", "drop_response", times=1000))
    assert run_cli(proxy.url, s3_input.url, out, client_attempts=1) == 0
    assert rule.acted >= 1
    _assert_complete_and_exact(s3_server, out, s3_input, s3_reference)


# -- reads -----------------------------------------------------------------------------------
def test_input_answering_503_for_a_while_is_retried_with_backoff(s3_server, s3_input, s3_reference, proxy):
    """Every request for one input shard answers 503 for a while (more than one attempt of the
    shard absorbs): the shard is retried after a backoff, not recorded unreadable."""
    out = _out(s3_input)
    second = s3_input.names[1]
    rule = proxy.add(Rule("*", rf"/in/{second}\.tar", "status", status=503, times=12))
    assert run_cli(proxy.url, s3_input.url, out, client_attempts=1) == 0
    assert rule.acted == 12
    _assert_complete_and_exact(s3_server, out, s3_input, s3_reference)
