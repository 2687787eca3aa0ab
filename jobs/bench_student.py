"""Labeling speed of the student against its teacher, in one process, on the same toy images.

    .venv/bin/python jobs/bench_student.py --student build/self_training/student-confidence/student.pt

Times `predict` of the toy CLIP (models/toyclip/labeling.yaml) and of the student on the same
scenes, `--repeats` times each after a warm-up, and prints images/s and the ratio (best repeat).
The engines only: decoding and writing cost the same for both.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def best_rate(engine, images, batch: int, repeats: int) -> float:
    engine.predict(images[:batch])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(images), batch):
            engine.predict(images[i: i + batch])
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=14, help="toy-world seed of the scenes (14: the job's test set)")
    args = p.parse_args(argv)
    from pipeline.config import load_config
    from pipeline.engine import Segmenter
    from pipeline.student.engine import StudentEngine
    from pipeline.toyworld import generate_scene

    images = [generate_scene(args.seed, i).image for i in range(args.images)]
    cfg = load_config(REPO / "models/toyclip/labeling.yaml",
                      [f"model.pretrained={REPO / 'models/toyclip/toyclip-v1.pt'}", "device=cpu"])
    teacher = best_rate(Segmenter.from_config(cfg), images, args.batch, args.repeats)
    student = best_rate(StudentEngine.from_file(args.student, "cpu", args.batch), images, args.batch, args.repeats)
    print(f"{'engine':<10} {'images/s':>9}")
    print(f"{'teacher':<10} {teacher:>9.2f}")
    print(f"{'student':<10} {student:>9.2f}   ({student / teacher:.1f}x the teacher)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
