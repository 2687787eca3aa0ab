"""Makes the repository (`pipeline`) and `tests/output_fixture.py` importable from this folder's tests."""
import sys
from pathlib import Path

for _path in (Path(__file__).resolve().parents[2], Path(__file__).resolve().parents[1]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
