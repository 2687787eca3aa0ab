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
    from tests.support import start_suite_ray

    return start_suite_ray(min_cpus=0)  # joins a Ray already running in this process
