"""Files shipped with the package: configs, presets, vocabularies (`conf/`) and output schemas
(`schemas/`).

In the repository they live top-level, where users look for them; `pipeline/conf` and
`pipeline/schemas` are links to them, so a wheel carries them as package data and an installed
copy finds them through `importlib.resources` wherever it is installed.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def _package_dir(name: str) -> Path:
    # `files()` of a regular (unzipped) package is a real directory; the package is never zipped.
    return Path(str(importlib.resources.files("pipeline").joinpath(name)))


def conf_dir() -> Path:
    return _package_dir("conf")


def schemas_dir() -> Path:
    return _package_dir("schemas")
