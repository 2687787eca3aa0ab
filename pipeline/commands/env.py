"""`pseudolabel env`: what a bug report needs: versions, devices, Ray, config and cache paths.

Starts nothing: Ray is described from RAY_ADDRESS and the local session file, never joined.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from pipeline.cli import add_json_argument

# distribution name -> how users call it
PACKAGES = (("pseudolabel", "pseudolabel"), ("torch", "torch"), ("torchvision", "torchvision"),
            ("open_clip_torch", "open_clip"), ("ray", "ray"), ("pyarrow", "pyarrow"), ("numpy", "numpy"),
            ("pillow", "pillow"), ("fsspec", "fsspec"), ("s3fs", "s3fs"), ("webdataset", "webdataset"))
RAY_SESSION_FILE = Path("/tmp/ray/ray_current_cluster")  # written by a local `ray start` / ray.init


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_argument(parser, "the same facts")


def main(args: argparse.Namespace) -> int:
    facts = collect()
    if args.json == "-":
        print(json.dumps(facts, indent=1))
        return 0
    print(format_facts(facts))
    if args.json:
        Path(args.json).write_text(json.dumps(facts, indent=1) + "\n")
    return 0


def collect() -> dict[str, Any]:
    return {"python": f"{platform.python_version()} ({sys.executable})",
            "platform": f"{platform.platform()}, {os.cpu_count()} CPUs",
            "packages": {label: _version(dist) for dist, label in PACKAGES},
            "devices": _devices(), "ray": _ray(), "paths": _paths()}


def format_facts(facts: dict[str, Any]) -> str:
    lines = [f"python      {facts['python']}", f"platform    {facts['platform']}"]
    lines += [f"{name:<11} {version}" for name, version in facts["packages"].items()]
    lines += [f"device      {d}" for d in facts["devices"]]
    lines += [f"ray         {facts['ray']}"]
    lines += [f"{key:<11} {value}" for key, value in facts["paths"].items()]
    return "\n".join(lines)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["torch not importable"]
    out = [f"cpu ({torch.get_num_threads()} torch threads)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append(f"cuda:{i} {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    else:
        out.append(f"cuda: not available (torch built with CUDA {torch.version.cuda or 'none'})")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps: available")
    return out


def _ray() -> str:
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return f"RAY_ADDRESS={address} (`run` joins it)"
    if RAY_SESSION_FILE.is_file():
        return f"a local Ray session is recorded at {RAY_SESSION_FILE.read_text().strip()} (`run` starts its own unless told)"
    return "no RAY_ADDRESS, no local cluster: `run` starts a local Ray"


def _paths() -> dict[str, str]:
    from pipeline.resources import conf_dir

    conf = conf_dir()
    cache = os.environ.get("PSEUDOLABEL_CACHE") or str(Path.home() / ".cache" / "pseudolabel")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return {"config": f"{conf} (presets: {', '.join(sorted(p.stem for p in (conf / 'presets').glob('*.yaml')))})",
            "vocab": f"{conf / 'vocabularies'}",
            "text cache": cache, "hf cache": f"{hub} (open_clip weights; offline runs read only this)"}
