"""Plain helpers shared by the tests: small images, the demo corpus's names, a progress recorder,
reading a `pseudolabel run` OUTPUT back for comparisons, and a faulty engine. Importable by Ray
workers as `tests.support` (test modules themselves are not)."""
from __future__ import annotations

import io
import logging
import os
import signal
import tarfile
from dataclasses import dataclass

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.io.tarfiles import iter_members
from pipeline.run.runner import Progress

REPO = Path(__file__).resolve().parents[1]
NAMES = ["demo-000000", "demo-000001", "demo-000002"]  # shards of the `corpus` fixture
PER_SHARD = 7


def start_suite_ray(min_cpus: int = 4):
    """The suite's local Ray (4 CPUs, the repository importable in workers), started unless one
    with at least `min_cpus` CPUs is running. A run that owned and stopped its own Ray leaves Ray's
    auto-start behind, with this machine's 2 cores: a test needing more would wait forever."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) >= min_cpus:
        return ray
    ray.shutdown()
    # address="local": a fresh instance, never a stray cluster found through /tmp/ray
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    return ray


def default_sigint() -> None:
    """`preexec_fn` for a CLI child a test will Ctrl-C: a shell that starts a job in the background
    makes it ignore SIGINT, the children inherit that, and Python then installs no handler at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    arr[: h // 2] = (40, 90, 200)  # a flat region so labels are not pure noise
    return Image.fromarray(arr, "RGB")


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


class Recorder(Progress):
    def __init__(self):
        self.updates, self.finished, self.started = [], [], None

    def start(self, total_shards, skipped):
        self.started = (total_shards, skipped)

    def update(self, samples, ok, errors):
        self.updates.append((samples, ok, errors))

    def shard_finished(self, result):
        self.finished.append(result.shard)


def snapshot(out: Path, names: list[str]) -> dict[str, Any]:
    """Per shard: manifest rows without `labeled_at`, and the mask tar's (member, bytes) list."""
    snap = {}
    for name in names:
        rows = pq.read_table(out / "manifest" / f"{name}.parquet").to_pylist()
        for r in rows:
            r.pop("labeled_at")
        snap[name] = {"rows": rows, "masks": list(iter_members(out / "masks" / f"{name}.tar"))}
    return snap


def assert_same_output(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["rows"] == b[name]["rows"], f"manifest of {name} differs"
        assert [m for m, _ in a[name]["masks"]] == [m for m, _ in b[name]["masks"]], f"members of {name} differ"
        for (member, x), (_, y) in zip(a[name]["masks"], b[name]["masks"]):
            assert x == y, f"{name}/{member} differs"


class _NoMasks:
    """An engine with a bug: predict returns objects without masks."""

    def __init__(self, cfg):
        from pipeline.engine import Segmenter

        self.real = Segmenter.from_config(cfg)
        self.vocabulary, self.num_classes = self.real.vocabulary, self.real.num_classes
        self.model_identity, self.patch_size = self.real.model_identity, self.real.patch_size

    def predict(self, images, return_probs=False):
        return [object() for _ in images]


def broken_engine(cfg):
    return _NoMasks(cfg)


class _Raising(_NoMasks):
    """An engine that broke: every predict call raises. (A CUDA error would make the worker exit
    instead: tests/run/test_device_errors.py.)"""

    def predict(self, images, return_probs=False):
        raise RuntimeError("engine broke: the kernel returned garbage")


def raising_engine(cfg):
    return _Raising(cfg)


ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered\nCompile with `TORCH_USE_CUDA_DSA`"


class DeviceLost:
    """Wraps the real engine; predict raises CUDA's sticky error until `marker` exists (it is created
    by the first failure, so the restarted worker labels normally)."""

    def __init__(self, cfg, marker=None, error=ILLEGAL_ACCESS):
        from pipeline.engine import Segmenter

        self.real = Segmenter.from_config(cfg)
        self.marker, self.error = marker, error
        self.vocabulary, self.num_classes = self.real.vocabulary, self.real.num_classes
        self.model_identity, self.patch_size = self.real.model_identity, self.real.patch_size
        self.calls = 0

    def predict(self, images, return_probs=False):
        self.calls += 1
        if self.marker is None or not Path(self.marker).exists():
            if self.marker is not None:
                Path(self.marker).write_text("failed once")
            raise RuntimeError(self.error)
        return self.real.predict(images, return_probs=return_probs)


def device_lost_engine(cfg, marker=None):
    return DeviceLost(cfg, marker)


@dataclass(frozen=True)
class CrashAt:
    """Fault factory for `run_pipeline(fault_factory=...)`: the worker labeling `shard` exits
    abruptly (no cleanup, as a killed process would) once more than `after` samples are done,
    unless the file `marker` exists. The marker is created first, so the retried attempt runs through."""

    shard: str
    after: int
    marker: str

    def __call__(self) -> Callable[[Any], None]:
        return self._on_progress

    def _on_progress(self, p: Any) -> None:
        if p.shard != self.shard or p.samples <= self.after or os.path.exists(self.marker):
            return
        with open(self.marker, "w") as f:
            f.write(str(os.getpid()))
        logging.getLogger("pipeline.run.actor").warning("test fault hook: exiting abruptly")
        os._exit(1)


def hostile_tar(path, declared=10**15):
    """s0.png, then a member declaring `declared` bytes whose data ends after 1 KiB."""
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("s0.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    head = good.getvalue()
    head = head[: 512 + 512]  # s0.png header + data block, without the end-of-archive blocks
    info = tarfile.TarInfo("s1.bin")
    info.size = declared
    path.write_bytes(head + info.tobuf(tarfile.PAX_FORMAT) + b"\x01" * 1024)
    return path


class PoolSizeProbe:
    """A Ray actor that reports the decode pool a CUDA labeler would start with (tests/run/test_placement.py)."""

    def size(self):
        from types import SimpleNamespace

        from pipeline.run.stage import decode_threads

        return decode_threads(SimpleNamespace(io=SimpleNamespace(decode_threads=0)), SimpleNamespace(type="cuda"))


START_FAILURE = "checkpoint /weights/moved/ViT-B-16.pt does not exist; model.pretrained is a file path or an open_clip tag"


def failing_start_engine(cfg):
    """An engine that cannot load, as a missing checkpoint inside a worker reports it."""
    from pipeline.errors import ModelLoadError

    raise ModelLoadError(START_FAILURE)
