"""The security tests import their hostile-input builders (hostile_tars.py) from this folder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
