"""Access to the golden fixtures (tests/fixtures/golden)."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.config import load_config

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden"
IMAGES = ("astronaut", "chelsea", "coffee")


def golden_config(extra: list[str] | None = None, case: str = "naclip_resclip_slide"):
    """The settings of a golden case, with our paths, plus `extra` overrides."""
    cases = {c["name"]: c for c in json.loads((GOLDEN / "cases.json").read_text())["cases"]}
    sets = dict(cases[case]["set"])
    sets["model.pretrained"] = str(GOLDEN / sets["model.pretrained"])
    sets["vocabulary.file"] = str(GOLDEN / sets["vocabulary.file"])
    return load_config(overrides=[f"{k}={json.dumps(v)}" for k, v in sets.items()] + (extra or []))


def golden_image(name: str) -> np.ndarray:
    return np.array(Image.open(GOLDEN / f"{name}.png").convert("RGB"))
