"""`student.pt`: the student's weights plus its card, and the crash-safe training checkpoint.

student.pt holds `{"format": "pseudolabel-student-v1", "state_dict", "card"}`. The card says what
the network is (recipe, classes, palette), what it learned from (output dir, dataset fingerprint,
samples), how (the full recipe), when, how long and on what machine, so a file found later explains
itself; `pseudolabel train` also writes it next to the weights as `card.json`.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import UserError
from pipeline.io.atomic import atomic_local_path

FORMAT = "pseudolabel-student-v1"
STUDENT_FILE = "student.pt"
CARD_FILE = "card.json"
CHECKPOINT_FILE = "checkpoint.pt"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save under a temporary name, then rename: a crash never leaves half a checkpoint."""
    with atomic_local_path(path) as tmp:  # random name, created exclusively (never a planted symlink)
        torch.save(obj, tmp)


def save_student(directory: Path, state_dict: dict[str, Any], card: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STUDENT_FILE
    atomic_save({"format": FORMAT, "state_dict": state_dict, "card": card}, path)
    (directory / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return path


def load_student_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / STUDENT_FILE
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as exc:
        raise UserError(f"student file {path} does not exist; `pseudolabel train OUTPUT --out DIR` writes DIR/{STUDENT_FILE}") from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise UserError(f"cannot read student file {path}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a student file of `pseudolabel train` (format {FORMAT})")
    blob["path"] = str(path)
    return blob
