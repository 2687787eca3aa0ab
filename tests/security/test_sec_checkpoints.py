"""Threat 2 of docs/security.md: a checkpoint is data. A student file, a `train --resume` checkpoint,
a `model.student` named in a config and a CLIP checkpoint whose pickle would run code are refused in
one line (exit 2) and the code never runs; TorchScript archives only with model.allow_torchscript.

Each hostile file, when unpickled the old way (weights_only=False), creates a marker file: the
tests assert that the marker does not exist afterwards."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from output_fixture import synthetic_sample, write_output_dir  # noqa: E402

from pipeline.cli import main  # noqa: E402
from tests.support import REPO  # noqa: E402

pytestmark = pytest.mark.timeout(120)
_INFO_LOG = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (INFO|DEBUG|WARNING) ")


class _RunsCode:
    """Unpickled without weights_only, this runs a shell command (an attacker's payload)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoint(path: Path, marker: Path, blob: dict) -> Path:
    """`blob` with a code-running object inside, saved as torch.save saves any checkpoint."""
    torch.save({**blob, "extra": _RunsCode(marker)}, path)
    return path


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip() and not _INFO_LOG.match(line)]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_the_hostile_file_does_run_code_when_loaded_unsafely(tmp_path):
    """The fixture is real: the old load (weights_only=False) runs the payload."""
    marker = tmp_path / "ran"
    path = hostile_checkpoint(tmp_path / "x.pt", marker, {"format": "pseudolabel-student-v1"})
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_predict_student_refuses_a_hostile_student_file(tmp_path, capsys):
    marker = tmp_path / "pwned"
    student = hostile_checkpoint(tmp_path / "student.pt", marker,
                                 {"format": "pseudolabel-student-v1", "state_dict": {}, "card": {}})
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    rc = main(["predict", str(image), "--out", str(tmp_path / "pred"), "--student", str(student)])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not plain tensor data" in line and "posix.system" in line
    assert not marker.exists()


def test_run_with_a_hostile_model_student_in_a_config_fails_before_ray(tmp_path, capsys):
    marker = tmp_path / "pwned"
    student = hostile_checkpoint(tmp_path / "student.pt", marker,
                                 {"format": "pseudolabel-student-v1", "state_dict": {}, "card": {}})
    config = tmp_path / "team.yaml"  # a config another team wrote
    config.write_text(f"model:\n  student: {student}\ndevice: cpu\n")
    shards = tmp_path / "in"
    shards.mkdir()
    (shards / "a.tar").write_bytes(b"\0" * 1024)
    out = tmp_path / "out"
    rc = main(["run", str(shards), "--out", str(out), "--config", str(config), "--no-progress"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "model.student" in line and "not plain tensor data" in line
    assert not marker.exists() and not out.exists()


def test_a_hostile_clip_checkpoint_is_refused_by_run_and_predict(tmp_path, capsys):
    marker = tmp_path / "pwned"
    golden = torch.load(REPO / "tests" / "fixtures" / "golden" / "tiny_clip_openai.pt", weights_only=True)
    clip = hostile_checkpoint(tmp_path / "clip.pt", marker, golden)
    vocab = REPO / "tests" / "fixtures" / "golden" / "vocab_b.txt"
    sets = ["--set", f"model.pretrained={clip}", "--set", f"vocabulary.file={vocab}", "--set", "device=cpu"]
    shards = tmp_path / "in"
    shards.mkdir()
    (shards / "a.tar").write_bytes(b"\0" * 1024)
    assert main(["run", str(shards), "--out", str(tmp_path / "out"), *sets, "--dry-run"]) == 2
    assert "model.pretrained" in _one_error_line(capsys.readouterr().err)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main(["predict", str(image), "--out", str(tmp_path / "pred"), *sets]) == 2
    assert "not plain tensor data" in _one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_torchscript_needs_the_opt_in(tmp_path, capsys):
    from pipeline.config import ModelConfig
    from pipeline.engine.loading import load_clip
    from pipeline.errors import ModelLoadError

    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "clip.pt"
    scripted.save(str(path))
    with pytest.raises(ModelLoadError, match="TorchScript archive, which holds code.*allow_torchscript=true"):
        load_clip(ModelConfig(pretrained=str(path)))
    # opted in, the archive is read (and then refused as not a CLIP: its weights are a Linear's)
    with pytest.raises(ModelLoadError, match="not an OpenAI-format ViT checkpoint"):
        load_clip(ModelConfig(pretrained=str(path), allow_torchscript=True))


def test_train_resume_refuses_a_hostile_checkpoint(tmp_path, capsys):
    rng = np.random.default_rng(5)
    names = ["background", "red", "green", "blue"]
    shards = {"p-000000": [synthetic_sample(rng, f"s{i}", (24, 32), len(names)) for i in range(6)]}
    out = write_output_dir(tmp_path / "labels", shards, names)
    student_dir = tmp_path / "student"
    student_dir.mkdir()
    marker = tmp_path / "pwned"
    hostile_checkpoint(student_dir / "checkpoint.pt", marker, {"model": {}, "optimizer": {}, "state": {}})
    sets = [a for o in ["optim.steps=2", "optim.batch_size=4", "data.short_side=24", "data.crop=16", "model.width=8",
                        "threads=1"] for a in ("--set", o)]
    rc = main(["train", str(out.root), "--out", str(student_dir), *sets, "--resume", "--no-progress"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "checkpoint" in line and "not plain tensor data" in line
    assert not marker.exists()


def test_a_student_file_of_an_older_version_still_passes_the_preflight(tmp_path):
    """Student cards written before this change hold torch.__version__ (a TorchVersion, a str):
    allowed by the loader and by run's preflight alike; nothing else is."""
    from pipeline.config import load_config
    from pipeline.run.preflight import check_checkpoints
    from pipeline.student.checkpoint import load_student_file

    path = tmp_path / "student.pt"
    torch.save({"format": "pseudolabel-student-v1", "state_dict": {"w": torch.ones(2)},
                "card": {"machine": {"torch": torch.__version__}}}, path)
    assert type(torch.load(path, weights_only=False)["card"]["machine"]["torch"]).__name__ == "TorchVersion"
    check_checkpoints(load_config(overrides=[f"model.student={path}"]))
    assert load_student_file(path)["card"]["machine"]["torch"] == torch.__version__
