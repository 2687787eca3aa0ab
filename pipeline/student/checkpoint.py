"""`student.pt`: the student's weights plus its card, and the crash-safe training checkpoint.

student.pt holds `{"format": "pseudolabel-student-v1", "state_dict", "card"}`. The card says what
the network is (recipe, classes, palette), what it learned from (output dir, dataset fingerprint,
samples), how (the full recipe), when, how long and on what machine, so a file found later explains
itself; `pseudolabel train` also writes it next to the weights as `card.json`.
"""
from __future__ import annotations

import json
import os
import pickle
import platform
import re
from pathlib import Path
from typing import Any

import torch
from torch.torch_version import TorchVersion

from pipeline.errors import UserError
from pipeline.io.atomic import atomic_local_path

FORMAT = "pseudolabel-student-v1"
STUDENT_FILE = "student.pt"
CARD_FILE = "card.json"
CHECKPOINT_FILE = "checkpoint.pt"


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "torch": str(torch.__version__), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
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


def load_data(path: Path, what: str) -> Any:
    """A `torch.save`d file read as data only (`weights_only`: tensors, dicts, lists, numbers,
    strings). A checkpoint whose pickle would call anything else (`os.system`, a class of some
    module) is refused in one line, and nothing of it runs: checkpoints are written by other
    teams and sit on shared storage (docs/security.md)."""
    try:
        # TorchVersion (a str) is in the cards of student files written before it was saved as str.
        with torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{what} {path} is not plain tensor data ({_refused_global(exc)}); refusing to load it, "
                        "since unpickling it could run code. Re-save it as a state dict of tensors") from None


def _refused_global(exc: Exception) -> str:
    """The name of the global torch's safe unpickler refused, from its (multi-line) message."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"it refers to {found.group(1)}" if found else "it holds objects other than tensors and plain values"


def load_student_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / STUDENT_FILE
    try:
        blob = load_data(path, "student file")
    except FileNotFoundError as exc:
        raise UserError(f"student file {path} does not exist; `pseudolabel train OUTPUT --out DIR` writes DIR/{STUDENT_FILE}") from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise UserError(f"cannot read student file {path}: {_first_line(exc)}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a student file of `pseudolabel train` (format {FORMAT})")
    blob["path"] = str(path)
    return blob


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
