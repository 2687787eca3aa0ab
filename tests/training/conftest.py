"""Makes the repository (`pipeline`) and `tests/output_fixture.py` importable from this folder's tests,
and provides one local Ray for the Ray tests of this folder (starting Ray costs ~15 s on 2 cores)."""
import sys
from pathlib import Path

import pytest

for _path in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parents[1]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture
def ray_session():
    """The local Ray shared by the suite (see tests/conftest.py), started here if none is running."""
    import ray

    if not ray.is_initialized():
        # address="local": a fresh instance, never a stray cluster found through /tmp/ray
        ray.init(
            address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}},
        )
    return ray
