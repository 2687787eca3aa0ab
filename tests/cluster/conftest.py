"""Fixtures of the cluster and object-storage tests live in cluster_support.py (importable by tests)."""
from cluster_support import s3_bucket, s3_server  # noqa: F401  (pytest fixtures)


def pytest_collection_modifyitems(config, items):
    """Every cluster and object-store test is `slow` (`make test-fast` skips them, `make test` runs them)."""
    import pytest

    here = __file__.rsplit("/", 1)[0] + "/"
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.slow)
