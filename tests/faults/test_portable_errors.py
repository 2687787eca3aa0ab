"""Errors of a shard reach the driver in a form Ray can always serialise: type name and message."""
from __future__ import annotations

import pickle

import pytest

from pipeline.errors import ShardError, TransientReadError, TransientWriteError
from pipeline.run.actor import portable_error
from pipeline.run.runner import run_pipeline
from tests.faults.hooks import RaiseTransportError, transport_error
from tests.support import NAMES, assert_same_output, snapshot


def test_an_unpicklable_transport_error_becomes_a_shard_error_with_its_type_and_message():
    exc = transport_error()
    with pytest.raises(TypeError):
        pickle.dumps(exc)  # why it matters: Ray would fail to send it and report a bare RayError
    carried = pickle.loads(pickle.dumps(portable_error(exc)))
    assert type(carried) is ShardError
    assert str(carried).startswith("ClientResponseError: 400, message='Bad Request'")


def test_typed_errors_keep_their_type_for_the_dispatcher():
    for cls in (TransientReadError, TransientWriteError):
        carried = pickle.loads(pickle.dumps(portable_error(cls("the store said 503\nsecond\nthird\nfourth"))))
        assert type(carried) is cls and str(carried) == "the store said 503\nsecond\nthird"


@pytest.mark.slow  # a Ray run
@pytest.mark.timeout(240)
def test_a_shard_raising_an_unpicklable_error_is_crashed_with_its_cause(reference, corpus, tiny_cfg, tmp_path):
    out = tmp_path / "out"
    summary = run_pipeline(str(corpus), str(out), tiny_cfg("ray.cpu_actors=1"),
                           fault_factory=RaiseTransportError(NAMES[1]))
    [failed] = summary.failed_shards
    assert failed["shard"] == NAMES[1] and failed["status"] == "crashed"
    assert "ClientResponseError" in failed["reason"] and "RayError" not in failed["reason"], failed
    assert summary.shards_labeled == 2  # the others go on
    others = [n for n in NAMES if n != NAMES[1]]
    assert_same_output(snapshot(reference[0], others), snapshot(out, others))
