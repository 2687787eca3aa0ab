"""Packaging proof: the wheel, installed non-editable, works from a folder outside the checkout.

What is built and run: `pip wheel --no-deps` of a copy of the working tree (tracked and
not-ignored files, so a stale `build/` cannot leak into the wheel), installed with
`pip install --no-deps` into a new virtual environment; from an empty folder elsewhere, its
`pseudolabel` script runs `predict` with a named vocabulary (`vocabulary.file=voc21`, found in the
wheel's package data) and `run` with a preset (`--config voc21`) on a local Ray, using the tiny
golden model through `--set`.

The "clean environment", and why this one: a fresh `python -m venv` plus `pip install` of the wheel
with its dependencies from this workplace's local registry was measured at ~40 s + ~9 min on 2
shared cores (torch, ray, ... unpacked again), too slow for every CI run. So the new venv is made
`--without-pip` (a second) and gets one `.pth` line naming the dependency site-packages of the
interpreter running the tests (`.venv`). A path line in a `.pth` only appends that folder to
`sys.path`: the `.pth` files *inside* it are not executed, so the editable install's finder
(`__editable__.pseudolabel-*.pth`, which maps `pipeline` to the checkout) never runs; the wheel's
copy in the new site-packages comes first on the path anyway. The test asserts that `pipeline` and
its `conf/`/`schemas/` resolve inside the new environment and nowhere under the checkout, and runs
with no PYTHONPATH, in a folder outside the checkout. It is not a clean *dependency* install (the
pinned versions are those of `.venv`); what it proves is the package itself: its files, package
data and entry point, installed as a cluster image would install it.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pipeline.io.tarfiles import write_tar
from tests.support import REPO, encode, rgb_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TINY_MODEL = REPO / "tests" / "fixtures" / "golden" / "tiny_clip_openai.pt"
FAST = ["--set", f"model.pretrained={TINY_MODEL}", "--set", "inference.short_side=0",
        "--set", "inference.slide_crop=0", "--set", "device=cpu", "--set", "batch_size=2"]


def _sh(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def _copy_tree(dst: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not os.path.lexists(src):
            continue  # deleted in the working tree, not yet committed
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), target)  # pipeline/conf -> ../conf stays a link
        elif src.is_file():
            shutil.copy2(src, target)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "RAY_"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv = root / "src", root / "dist", root / "env"
    _copy_tree(src)
    env = _clean_env()
    _sh([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist)], root, env)
    wheel = next(dist.glob("pseudolabel-*.whl"))
    _sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True, env=env).stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (purelib / "_pseudolabel_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    _sh([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "--no-index", "-q", "--disable-pip-version-check", str(wheel)], root, env)
    work = root / "elsewhere"
    work.mkdir()
    return venv, purelib, work, env


def test_wheel_carries_the_package_data(installed):
    venv, purelib, work, env = installed
    probe = ("import json, pipeline, importlib.metadata as md; from pipeline.resources import conf_dir, schemas_dir;"
             "print(json.dumps({'pipeline': pipeline.__file__, 'conf': str(conf_dir().resolve()),"
             " 'schemas': str(schemas_dir().resolve()), 'version': md.version('pseudolabel'),"
             " 'files': [str(f) for f in md.distribution('pseudolabel').files if 'schemas/' in str(f)]}))")
    where = json.loads(_sh([str(venv / "bin" / "python"), "-c", probe], work, env).stdout)
    for key in ("pipeline", "conf", "schemas"):
        assert Path(where[key]).is_relative_to(purelib), (key, where[key])
        assert not Path(where[key]).is_relative_to(REPO), f"{key} resolves into the checkout: {where[key]}"
    assert (Path(where["conf"]) / "presets" / "voc21.yaml").is_file()
    assert (Path(where["conf"]) / "vocabularies" / "voc21.txt").is_file()
    assert sorted(Path(f).name for f in where["files"]) == ["dataset-v1.json", "done-v1.json", "manifest-v1.json"]


def test_predict_with_a_named_vocabulary_outside_the_checkout(installed):
    venv, _purelib, work, env = installed
    image = work / "cat.png"
    image.write_bytes(encode(rgb_image(48, 40, seed=3)))
    _sh([str(venv / "bin" / "pseudolabel"), "predict", str(image), "--out", "pred",
         "--set", "vocabulary.file=voc21", *FAST], work, env)
    import numpy as np

    with np.load(work / "pred" / "cat.npz") as arrays:
        pred = arrays["pred"]
    assert pred.shape == (40, 48) and int(pred.max()) < 21  # voc21: 21 classes
    assert (work / "pred" / "cat.overlay.png").is_file()


def test_run_with_a_preset_outside_the_checkout(installed):
    venv, _purelib, work, env = installed
    shard = work / "in" / "part-000000.tar"
    write_tar(shard, [(f"k{i}.png", encode(rgb_image(40 + 8 * i, 32, seed=i))) for i in range(3)])
    _sh([str(venv / "bin" / "pseudolabel"), "run", str(shard.parent), "out", "--config", "voc21", *FAST,
         "--set", "ray.cpu_actors=1", "--no-progress"], work, env, timeout=600)
    dataset = json.loads((work / "out" / "dataset.json").read_text())
    assert dataset["num_classes"] == 21 and dataset["vocabulary"][0]["index"] == 0
    assert dataset["config"]["vocabulary"]["file"] == "voc21"
    done = json.loads((work / "out" / "_done" / "part-000000.json").read_text())
    assert done["status"] == "done" and done["ok"] == 3
    _sh([str(venv / "bin" / "pseudolabel"), "verify", "out", str(shard.parent)], work, env)
    # `progress` ships in the wheel (it was a script in jobs/ only)
    progress = _sh([str(venv / "bin" / "pseudolabel"), "progress", "out", str(shard.parent)], work, env)
    assert progress.stdout.startswith("shards done: 1/1")
