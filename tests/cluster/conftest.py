"""Fixtures of the cluster and object-storage tests live in cluster_support.py (importable by tests)."""
from cluster_support import s3_bucket, s3_server  # noqa: F401  (pytest fixtures)
