"""Self-training on the toy world: does a student trained on the toy CLIP's pseudo-labels match it?

1. toy scenes from seeds no other part of the project uses (train 12, test 14; the toy CLIP was
   trained on seed 0, tuned on 1 and benchmarked on 2), written as WebDataset shards with gt;
2. the teacher (models/toyclip/toyclip-v1.pt with models/toyclip/labeling.yaml) labels both sets
   with `pseudolabel run` semantics (local Ray, CPU actors);
3. `pseudolabel train` trains students on the train set's pseudo-labels only: with the confidence
   handling (default recipe) and without it (every pixel, unweighted); a third student is trained
   on the ground truth with the same recipe, as the ceiling;
4. teacher and students are scored on the held-out test set under `pseudolabel eval`'s metric;
   the confidence-handled student also labels the test set through `pseudolabel run`
   (`model.student`), and that output is scored with `pseudolabel eval` as a cross-check.

    .venv/bin/python jobs/self_training.py --work build/self_training --json docs/self_training.json

Re-running with the same --work reuses finished stages (shards, labels, students), so a crash
costs only the stage it interrupted (a student resumes from its checkpoint).
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "jobs"))

TEACHER = REPO / "models" / "toyclip" / "toyclip-v1.pt"
TEACHER_CONFIG = REPO / "models" / "toyclip" / "labeling.yaml"
NO_CONFIDENCE = ["confidence.min_confidence=0", "confidence.weight=false", "confidence.class_balance=0"]
# The toy CLIP's softmax is over-confident: at the default 0.5 only 0.1% of the train set's pixels
# are ignored. 0.9 ignores 9% and lifts the accuracy of the kept pixels from 91.4% to 95.1%
# (`pseudolabel eval --sweep-min-confidence` on the train split; the test split is never used to choose).
STRICT = ["confidence.min_confidence=0.9"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="build/self_training", help="working directory (shards, labels, students)")
    p.add_argument("--json", default=None, help="write the results here (e.g. docs/self_training.json)")
    p.add_argument("--train-count", type=int, default=600)
    p.add_argument("--test-count", type=int, default=200)
    p.add_argument("--train-seed", type=int, default=12)
    p.add_argument("--test-seed", type=int, default=14)
    p.add_argument("--actors", type=int, default=2, help="CPU actors for the teacher's labeling runs")
    p.add_argument("--variants", default="confidence,no_confidence,ground_truth",
                   help="students to train (comma-separated; also: confidence_strict)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="student recipe override for every variant (e.g. optim.steps=300)")
    p.add_argument("--no-second-round", action="store_true", help="skip labeling the test set with the student")
    p.add_argument("--rounds-experiment", action="store_true",
                   help="run the issue-23 experiment instead: `pseudolabel selftrain` rounds, selection methods "
                        "chosen on a validation split, two training seeds (see rounds_main)")
    return p.parse_args(argv)


def make_shards(work: Path, args) -> dict[str, Path]:
    from pipeline.toyworld import write_shards

    sets = {}
    for name, seed, count in (("train", args.train_seed, args.train_count), ("test", args.test_seed, args.test_count)):
        root = work / name
        if not (root / "dataset.json").exists():
            write_shards(root, seed, count, per_shard=100)
        sets[name] = root
    return sets


def label_with(images: Path, output: Path, overrides: list[str], args) -> float:
    """`pseudolabel run` on a local Ray; returns its wall seconds (0 when the output was complete)."""
    from pipeline.config import load_config
    from pipeline.run.runner import run_pipeline

    cfg = load_config(TEACHER_CONFIG, [f"model.pretrained={TEACHER}", f"ray.cpu_actors={args.actors}",
                                       "device=cpu", *overrides])
    t0 = time.monotonic()
    run_pipeline(str(images), str(output), cfg, log_level=logging.WARNING)
    return time.monotonic() - t0


def train_on_pseudo_labels(name: str, teacher_train: Path, sets: dict[str, Path], work: Path, extra: list[str]) -> dict:
    """`pseudolabel train` (the command itself) with --eval on the test set; returns its eval + card."""
    from pipeline.cli import main as cli

    out = work / f"student-{name}"
    if not (out / "eval.json").exists():
        sets_args = [a for o in extra for a in ("--set", o)]
        rc = cli(["train", str(teacher_train), "--out", str(out), "--resume", "--no-progress", *sets_args,
                  "--eval", str(sets["test"] / "images"), "--gt", str(sets["test"] / "labels")])
        if rc:
            raise SystemExit(f"pseudolabel train failed for {name} (exit {rc})")
    return summarize(out)


def train_on_ground_truth(sets: dict[str, Path], work: Path, extra: list[str], folder: str = "student-ground_truth",
                          score_val: bool = False) -> dict:
    """The ceiling: the same recipe on the ground truth of the training split, scored on the test split
    (and on the validation split too with score_val, as the rounds experiment needs)."""
    from pipeline.student.config import load_student_config
    from pipeline.student.data import GroundTruthDataset, StudentTransform
    from pipeline.student.engine import StudentEngine
    from pipeline.student.evaluate import score_engine
    from pipeline.student.trainer import TrainData, train_student
    from pipeline.toyworld import NAMES, NUM_CLASSES, PALETTE

    out = work / folder
    if not (out / "eval.json").exists():
        cfg = load_student_config("cpu", extra)
        images = sorted(str(p) for p in (sets["train"] / "images").glob("*.tar"))
        labels = [str(sets["train"] / "labels" / Path(p).name) for p in images]
        ds = GroundTruthDataset(images, labels, StudentTransform(cfg.data), NUM_CLASSES, seed=cfg.seed)
        data = TrainData(ds, NUM_CLASSES, 255, list(NAMES), list(PALETTE),
                         source={"ground_truth": str(sets["train"] / "labels"), "samples": "all"})
        result = train_student(cfg, data, out, resume=True)
        engine = StudentEngine.from_file(result.student_path)
        if score_val:  # before eval.json, which marks the stage done
            score_engine(engine, str(sets["val"] / "images"), str(sets["val"] / "labels")).write_json(out / "val.json")
        score_engine(engine, str(sets["test"] / "images"), str(sets["test"] / "labels")).write_json(out / "eval.json")
    return summarize(out)


def summarize(out: Path) -> dict:
    ev = json.loads((out / "eval.json").read_text())
    card = json.loads((out / "card.json").read_text())
    return {"miou": ev["miou"], "pixel_accuracy": ev["pixel_accuracy"], "per_class_iou": ev["per_class_iou"],
            "train_seconds": card["train_seconds"], "steps": card["steps"], "recipe": card["recipe"],
            "student": str(out / "student.pt"), **({"interrupted": card["interrupted"]} if "interrupted" in card else {})}


def main(argv=None) -> int:
    if "--rounds-experiment" in (sys.argv[1:] if argv is None else argv):
        import self_training_rounds

        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--rounds-experiment"]
        return self_training_rounds.main(rest)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.evaluation import evaluate_output

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sets = make_shards(work, args)
    timings_file = work / "timings.json"  # labeling times of the first run, kept when stages are reused
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for split in ("train", "test"):
        if f"teacher_{split}_labeling_s" not in timings:
            timings[f"teacher_{split}_labeling_s"] = label_with(sets[split] / "images", work / f"teacher-{split}", [], args)
            timings_file.write_text(json.dumps(timings))
    teacher = evaluate_output(work / "teacher-test", str(sets["test"] / "labels"))
    # How the threshold was chosen: the teacher's labels on the TRAIN split against its gt.
    train_sweep = evaluate_output(work / "teacher-train", str(sets["train"] / "labels"),
                                  sweep_thresholds=[0.5, 0.7, 0.8, 0.9]).to_dict()["sweep"]
    rows = {"teacher": {"miou": teacher.to_dict()["miou"], "pixel_accuracy": teacher.to_dict()["pixel_accuracy"],
                        "per_class_iou": teacher.per_class_iou}}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "confidence" in variants:
        rows["student"] = train_on_pseudo_labels("confidence", work / "teacher-train", sets, work, args.overrides)
    if "confidence_strict" in variants:
        rows["student_strict"] = train_on_pseudo_labels(
            "confidence_strict", work / "teacher-train", sets, work, [*args.overrides, *STRICT])
    if "no_confidence" in variants:
        rows["student_no_confidence"] = train_on_pseudo_labels(
            "no_confidence", work / "teacher-train", sets, work, [*args.overrides, *NO_CONFIDENCE])
    if "ground_truth" in variants:
        rows["student_ground_truth"] = train_on_ground_truth(sets, work, args.overrides)
    if "student" in rows and not args.no_second_round:
        second = work / "student-round2-test"
        if "student_test_labeling_s" not in timings:
            timings["student_test_labeling_s"] = label_with(
                sets["test"] / "images", second, [f"model.student={rows['student']['student']}"], args)
            timings_file.write_text(json.dumps(timings))
        check = evaluate_output(second, str(sets["test"] / "labels"))
        rows["student"]["miou_via_run_and_eval"] = check.to_dict()["miou"]
    result = {
        "seeds": {"train": args.train_seed, "test": args.test_seed},
        "counts": {"train": args.train_count, "test": args.test_count},
        "teacher": {"checkpoint": str(TEACHER.relative_to(REPO)), "config": str(TEACHER_CONFIG.relative_to(REPO))},
        "results": rows,
        "teacher_train_confidence_sweep": train_sweep,
        "timings": timings,
        "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
    }
    print(format_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def format_table(rows: dict) -> str:
    labels = {"teacher": "teacher (toy CLIP, ResCLIP labeling)", "student": "student, confidence handling (min conf 0.5)",
              "student_strict": "student, confidence handling (min conf 0.9)",
              "student_no_confidence": "student, no confidence handling",
              "student_ground_truth": "student on ground truth (ceiling)"}
    lines = [f"{'model':<46} {'mIoU':>7} {'pixel acc':>9} {'train min':>9}"]
    for key, row in rows.items():
        minutes = f"{row['train_seconds'] / 60:.1f}" if "train_seconds" in row else "-"
        lines.append(f"{labels.get(key, key):<46} {100 * row['miou']:>7.2f} {100 * row['pixel_accuracy']:>9.2f} {minutes:>9}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
