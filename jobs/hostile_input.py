"""Figures for hostile input: time to get past a tar member declaring 10^15 bytes, and the peak
memory of labeling a long thin strip with and without the long-side cap.

    python jobs/hostile_input.py [--repeats 3] [--model PT --vocab TXT] [--uncapped]
    python jobs/hostile_input.py --bounds [--repeats 3] [--pythonpath OLD_TREE]

`--bounds` (docs/security.md, threat 7): time and peak RSS of reading ten samples whose keys are
20 MiB PAX headers, and a 23 KB bzip2 tar holding a 1 GiB member, each in a fresh process; with
`--pythonpath` the children import `pipeline` from another tree (e.g. `git archive` of an older
commit) for a before/after comparison.

Each strip is labeled in its own process (peak RSS = ru_maxrss of that child), with the preset
resize (short side 336, long side 2048, sliding 224/112) on the model given (default: the tiny
golden CLIP of the tests, whose activations are far smaller than ViT-B/16's: the figure shows the
effect of the resize, not a ViT-B/16 budget). `--uncapped` also runs long_side=0 (what the
pipeline did before the cap): the 10000x20 strip then becomes 168000x336.
"""
from __future__ import annotations

import argparse
import gzip
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "fixtures" / "golden"


def hostile_tar(path: Path) -> Path:
    """One 3-byte image, then a member declaring 10^15 bytes whose data ends after 1 KiB."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("s0.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    big = tarfile.TarInfo("s1.bin")
    big.size = 10**15
    path.write_bytes(buf.getvalue()[:1024] + big.tobuf(tarfile.PAX_FORMAT) + b"\x01" * 1024)
    return path


def skip_times(repeats: int) -> None:
    from pipeline.io.reader import ReadReport, iter_samples

    with tempfile.TemporaryDirectory() as tmp:
        plain = hostile_tar(Path(tmp) / "h.tar")
        gz = Path(tmp) / "h.tar.gz"
        gz.write_bytes(gzip.compress(plain.read_bytes()))
        print("| input | reading a shard whose 2nd member declares 10^15 bytes (best of %d) |" % repeats)
        print("|---|---|")
        for label, url in (("local file (seek)", str(plain)), ("pipe:cat (stream)", f"pipe:cat {plain}"),
                           ("gzip file (stream)", str(gz))):
            best = min(_timed(lambda: list(iter_samples(url, ["png"], ReadReport()))) for _ in range(repeats))
            print(f"| {label} | {best * 1000:.1f} ms |")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


CHILD = r"""
import resource, sys, time
import numpy as np
from pipeline.config import load_config
from pipeline.engine import Segmenter
from pipeline.io.records import SampleError
w, h, long_side, model, vocab = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = load_config(overrides=[f"model.pretrained={model}", f"vocabulary.file={vocab}", "device=cpu",
                             "inference.short_side=336", f"inference.long_side={long_side}",
                             "inference.slide_crop=224", "inference.slide_stride=112"])
seg = Segmenter.from_config(cfg)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
t0 = time.perf_counter()
try:
    seg.predict([img])
    what = "labeled"
except SampleError as err:
    what = err.kind
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{what} {time.perf_counter() - t0:.2f} {before / 1024:.0f} {peak / 1024:.0f}")
"""


def strip_memory(model: str, vocab: str, uncapped: bool) -> None:
    print("\n| image | long_side | outcome | peak RSS of the process | RSS after model load | seconds |")
    print("|---|---|---|---|---|---|")
    cases = [(10000, 20), (10000, 400), (640, 480)]
    for w, h in cases:
        for long_side in ((2048, 0) if uncapped else (2048,)):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(w), str(h), str(long_side), model, vocab],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                print(f"| {w}x{h} | {long_side} | exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:80]} | | | |")
                continue
            what, secs, loaded, peak = proc.stdout.split()[-4:]
            print(f"| {w}x{h} | {long_side} | {what} | {peak} MB | {loaded} MB | {secs} |")


BOUNDS_CHILD = r"""
import resource, sys, time
from pipeline.io.reader import ReadReport, iter_samples
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
report = ReadReport()
rows = sum(1 for _ in iter_samples(sys.argv[1], ["png"], report))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{time.perf_counter() - t0:.3f} {(peak - start) / 1024:.0f} {rows} {'stopped' if report.failure else 'read-through'}")
"""


def bound_figures(repeats: int, pythonpath: str | None) -> None:
    import os
    import statistics

    sys.path.insert(0, str(REPO / "tests" / "security"))
    from hostile_tars import bomb, huge_pax_keys

    env = {**os.environ, "PYTHONPATH": pythonpath or str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"10 keys of 20 MiB (PAX)": huge_pax_keys(Path(tmp) / "pax.tar"),
                 "bzip2 tar, 1 GiB member": bomb(Path(tmp) / "bomb.tar.bz2")}
        print(f"\n| hostile shard | file bytes | seconds (median of {repeats}) | peak RSS growth | rows | outcome |")
        print("|---|---|---|---|---|---|")
        for label, path in files.items():
            # cwd: `-c` puts the working folder first on sys.path, before PYTHONPATH
            runs = [subprocess.run([sys.executable, "-c", BOUNDS_CHILD, str(path)], capture_output=True, text=True,
                                   env=env, cwd=tmp, check=True).stdout.split() for _ in range(repeats)]
            secs = statistics.median(float(r[0]) for r in runs)
            grow = statistics.median(int(r[1]) for r in runs)
            print(f"| {label} | {path.stat().st_size} | {secs:.2f} | {grow} MiB | {runs[0][2]} | {runs[0][3]} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=str(GOLDEN / "tiny_clip_openai.pt"))
    ap.add_argument("--vocab", default=str(GOLDEN / "vocab_b.txt"))
    ap.add_argument("--uncapped", action="store_true", help="also run long_side=0 (can need many GB)")
    ap.add_argument("--bounds", action="store_true", help="only the tar bounds figures (threat 7)")
    ap.add_argument("--pythonpath", help="with --bounds: import pipeline from this tree instead")
    args = ap.parse_args()
    if args.bounds:
        bound_figures(args.repeats, args.pythonpath)
        return
    skip_times(args.repeats)
    strip_memory(args.model, args.vocab, args.uncapped)


if __name__ == "__main__":
    main()
