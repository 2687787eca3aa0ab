"""`pseudolabel run` end to end vs `pseudolabel predict` one image at a time, in one run.

Both label the same generated images with the same config (default: the golden tiny CLIP at the
paper's settings, conf/bench/cpu_tiny.yaml). `predict` gets the images as files with batch_size 1;
`run` gets them as WebDataset shards on a local Ray. Reported: wall time of each command (model
loading and Ray start-up included) and, for `run`, the labeling time from its `_stats.json`.

    python jobs/bench_run_vs_predict.py --images 32 --actors 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.benchmark import bench_images  # noqa: E402
from pipeline.io.tarfiles import write_tar  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--per-shard", type=int, default=8)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--size", default="336x448")
    p.add_argument("--config", default=str(REPO / "conf" / "bench" / "cpu_tiny.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    sets = [x for o in args.overrides for x in ("--set", o)]
    cli = [sys.executable, "-m", "pipeline.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        files, shards = _write_inputs(tmp_path, bench_images(args.images, (height, width)), args.per_shard)
        t0 = time.perf_counter()
        _check(subprocess.run(cli + ["predict", *map(str, files), "--out", str(tmp_path / "pred"),
                                     "--config", args.config, "--set", "batch_size=1", *sets], cwd=REPO))
        predict_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _check(subprocess.run(cli + ["run", str(tmp_path / "shards"), str(tmp_path / "out"), "--config",
                                     args.config, "--set", f"ray.cpu_actors={args.actors}", "--no-progress", *sets],
                              cwd=REPO))
        run_s = time.perf_counter() - t0
        stats = json.loads((tmp_path / "out" / "_stats.json").read_text())
    labeling_s = stats.get("this_run", stats).get("labeling_seconds") or run_s
    n = args.images
    print(f"\n{n} images of {width}x{height}, config {Path(args.config).name} {' '.join(args.overrides)}")
    print(f"predict, one image at a time : {predict_s:7.1f} s wall  {n / predict_s:6.2f} images/s")
    print(f"run, {args.actors} actors (wall)       : {run_s:7.1f} s wall  {n / run_s:6.2f} images/s")
    print(f"run, labeling time only      : {labeling_s:7.1f} s       {n / labeling_s:6.2f} images/s")
    return 0


def _write_inputs(root: Path, images, per_shard: int) -> tuple[list[Path], list[Path]]:
    from PIL import Image

    (root / "files").mkdir()
    (root / "shards").mkdir()
    files, members = [], []
    for i, img in enumerate(images):
        path = root / "files" / f"img{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        files.append(path)
        members.append((f"img{i:05d}.jpg", path.read_bytes()))
    shards = []
    for s in range(0, len(members), per_shard):
        shards.append(root / "shards" / f"bench-{s // per_shard:06d}.tar")
        write_tar(shards[-1], members[s : s + per_shard])
    return files, shards


def _check(proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"command failed with exit code {proc.returncode}")


if __name__ == "__main__":
    sys.exit(main())
