"""A 24 MP photo with COCO-Stuff's 171 classes through `pseudolabel run` on CPU, in bounded memory.

Before banded post-processing this needed ~16 GB per (classes, H, W) tensor and was killed.
Every process of the run (driver, Ray, the labeling actor) is watched through /proc: peak resident
memory (VmHWM) must stay under 4 GB.
"""
import io
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.bench_real import textured_jpeg
from pipeline.evaluation.outputs import decode_conf_png, decode_label_png
from pipeline.io.tarfiles import write_tar
from tests.support import REPO, env_without

LIMIT_MB = 4096


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        found.append(pid)
        frontier.extend(child for child, parent in parents.items() if parent == pid)
    return found


def _peak_rss_mb(pid: int) -> tuple[float, str]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return 0.0, ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024, cmdline
    return 0.0, cmdline


class PeakWatcher(threading.Thread):
    """Largest VmHWM seen per process of a process tree, polled until stopped."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peaks, self.stop = root, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in _descendants(self.root):
                mb, name = _peak_rss_mb(pid)
                if mb > self.peaks.get(pid, (0.0, ""))[0]:
                    self.peaks[pid] = (mb, name)
            time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_24_megapixel_photo_with_171_classes_stays_under_4gb(tiny_overrides, tmp_path):
    rng = np.random.default_rng(0)
    jpeg = textured_jpeg(rng, 4000, 6000)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_tar(inputs / "photos-000000.tar", [("big.jpg", jpeg)])
    sets = [*tiny_overrides, f"vocabulary.file={REPO / 'conf' / 'vocabularies' / 'coco_stuff.txt'}",
            # the paper's (and the defaults') resize and sliding window, not the tiny fixture's shortcuts
            "inference.short_side=336", "inference.slide_crop=224", "inference.slide_stride=112",
            "ray.cpu_actors=1", "batch_size=1",
            "labels.max_side=0", "labels.confidence_max_side=0"]  # post-processed and stored at the full size
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(inputs / "photos-000000.tar"), str(tmp_path / "out"),
           *[a for s in sets for a in ("--set", s)], "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env_without("RAY_ADDRESS"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    watcher = PeakWatcher(proc.pid)
    watcher.start()
    try:
        output, _ = proc.communicate(timeout=1400)
    finally:
        watcher.stop.set()
        watcher.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    peaks = sorted(watcher.peaks.values(), reverse=True)
    print("peak RSS per process (MB):", [(round(mb), name) for mb, name in peaks[:6]])
    assert len(peaks) >= 3, "the watcher saw too few processes (driver, Ray, actor)"
    assert peaks[0][0] < LIMIT_MB, f"a process reached {peaks[0][0]:.0f} MB: {peaks[0][1]}"
    with tarfile.open(tmp_path / "out" / "masks" / "photos-000000.tar") as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    labels, conf = decode_label_png(blobs["big.label.png"]), decode_conf_png(blobs["big.conf.png"])
    assert labels.shape == conf.shape == (4000, 6000)
    assert labels.max() < 171 and len(np.unique(labels)) > 1
