"""The fault proxy itself: rules act on the requests they pick, the rest pass, and it is bounded."""
from __future__ import annotations

import time

import pytest

from tests.faultproxy import FaultProxy, Rule

pytestmark = [pytest.mark.timeout(120)]


def _client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))


def _status(call) -> int:
    from botocore.exceptions import ClientError

    try:
        return call()["ResponseMetadata"]["HTTPStatusCode"]
    except ClientError as exc:
        return exc.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture
def bucket(s3_server):
    _client(s3_server).create_bucket(Bucket="proxy-test")
    return "proxy-test"


def test_rules_pick_their_requests_and_the_rest_pass(s3_server, bucket):
    from botocore.exceptions import ConnectionClosedError

    direct = _client(s3_server)
    with FaultProxy(s3_server, lifetime_s=60) as proxy:
        s3 = _client(proxy.url)
        status = proxy.add(Rule("GET", r"/k$", "status", status=503, times=2))
        cut = proxy.add(Rule("PUT", r"/cut$", "reset"))
        lost = proxy.add(Rule("PUT", r"/lost$", "drop_response"))
        assert _status(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"v")) == 200
        get = lambda: s3.get_object(Bucket=bucket, Key="k")  # noqa: E731
        assert [_status(get) for _ in range(3)] == [503, 503, 200]
        for key in ("cut", "lost"):
            with pytest.raises(ConnectionClosedError):
                s3.put_object(Bucket=bucket, Key=key, Body=b"v")
        assert (status.acted, cut.acted, lost.acted) == (2, 1, 1)
        # the lost answer's PUT took effect upstream; the cut one never reached it
        assert direct.get_object(Bucket=bucket, Key="lost")["Body"].read() == b"v"
        assert _status(lambda: direct.head_object(Bucket=bucket, Key="cut")) == 404
        assert proxy.count("GET", r"/k", "status") == 2


def test_it_is_bounded_by_requests_and_lifetime(s3_server, bucket):
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    with FaultProxy(s3_server, max_requests=2, lifetime_s=1.0) as proxy:
        s3 = _client(proxy.url)
        assert _status(lambda: s3.head_bucket(Bucket=bucket)) == 200
        assert _status(lambda: s3.head_bucket(Bucket=bucket)) == 200
        with pytest.raises(ConnectionClosedError):
            s3.head_bucket(Bucket=bucket)  # past max_requests: cut
        time.sleep(1.5)
        with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
            _client(proxy.url).head_bucket(Bucket=bucket)  # stopped by itself
