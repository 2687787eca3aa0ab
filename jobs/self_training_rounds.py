"""Issue 23: does `pseudolabel selftrain` train a model clearly better than its labeler?

    .venv/bin/python jobs/self_training.py --rounds-experiment --work build/selftrain \\
        --json docs/self_training_rounds.json

1. toy-world scenes from seeds nothing else in the project uses: train 31, validation 32, test 33
   (the toy CLIP: 0/1/2; the first self-training job: 12/14);
2. the teacher (toy CLIP + models/toyclip/labeling.yaml, `pseudolabel run`) labels all three;
3. selection methods, each a one-round `pseudolabel selftrain` on training seed 0, scored on the
   VALIDATION split; the best on validation becomes the default recipe (the test split never chooses);
4. the default recipe for --rounds rounds with two training seeds (`seed=0`, `seed=1`), every round
   scored on the test split (round-K/eval.json, the command's own --eval);
5. the ceiling: the same student trained on the training split's ground truth.

Every stage is a folder under --work that a re-run reuses (the command skips finished rounds), so
a crash or a time limit costs only the stage it interrupted. --budget-min stops starting new
stages after that many minutes; the table then shows what finished.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TEACHER = REPO / "models" / "toyclip" / "toyclip-v1.pt"
TEACHER_CONFIG = REPO / "models" / "toyclip" / "labeling.yaml"
SPLITS = {"train": (31, 400), "val": (32, 100), "test": (33, 200)}
# Selection methods (student recipe overrides); the first is the `cpu` preset as it was.
# Explicit in full: `selftrain` adds its own defaults (class_top_p=0.8) under these.
METHODS = {
    "global_0.5": ["confidence.class_top_p=0"],
    "class_top_p_0.8": ["confidence.class_top_p=0.8"],
    "class_top_p_0.8+consistency": ["confidence.class_top_p=0.8", "consistency.weight=1"],
    "global_0.9": ["confidence.class_top_p=0", "confidence.min_confidence=0.9"],
    "none": ["confidence.class_top_p=0", "confidence.min_confidence=0", "confidence.weight=false"],
}
# A short schedule: the shared 2-core machine of this session (8 engineers) allows no more.
SCHEDULE = ["optim.steps=200", "optim.batch_size=8", "data.crop=96", "optim.warmup_steps=20", "checkpoint_every=25",
            "threads=1"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="build/selftrain")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", default="global_0.5,class_top_p_0.8",
                   help=f"selection methods compared on validation (known: {', '.join(METHODS)})")
    p.add_argument("--extra-methods", default="class_top_p_0.8+consistency,global_0.9",
                   help="methods trained last, for the table only, when the budget allows")
    p.add_argument("--seeds", default="0,1", help="training seeds of the default recipe's rounds")
    p.add_argument("--schedule", action="append", default=None, metavar="KEY=VALUE",
                   help=f"student schedule overrides (default: {' '.join(SCHEDULE)})")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--budget-min", type=float, default=0.0, help="start no new stage after this many minutes (0 = no limit)")
    p.add_argument("--no-ground-truth", action="store_true")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: score the finished stages under --work (the predict sweep; cached) "
                        "and print their table")
    p.add_argument("--no-relabel-sweep", action="store_true", help="skip the teacher-weight sweep on validation")
    return p.parse_args(argv)


class Budget:
    def __init__(self, minutes: float):
        self.t0, self.minutes = time.monotonic(), minutes

    def left(self) -> bool:
        return self.minutes <= 0 or (time.monotonic() - self.t0) / 60 < self.minutes


def prepare(work: Path, actors: int) -> dict[str, Path]:
    from pipeline.config import load_config
    from pipeline.run.runner import run_pipeline
    from pipeline.toyworld import write_shards

    sets = {}
    for name, (seed, count) in SPLITS.items():
        root = work / name
        if not (root / "dataset.json").exists():
            write_shards(root, seed, count, per_shard=50)
        labels = work / f"teacher-{name}"
        sets[name] = root
        if len(list((labels / "_done").glob("*.json"))) == len(list((root / "images").glob("*.tar"))):
            continue  # labeled before (a finished run needs no Ray start)
        cfg = load_config(TEACHER_CONFIG, [f"model.pretrained={TEACHER}", f"ray.cpu_actors={actors}", "device=cpu"])
        run_pipeline(str(root / "images"), str(labels), cfg, log_level=logging.WARNING)
    return sets


def selftrain(work: Path, name: str, sets: dict[str, Path], overrides: list[str], rounds: int,
              teacher_weight: float = 0.5) -> Path:
    from pipeline.cli import main as cli

    out = work / name
    sets_args = [a for o in overrides for a in ("--set", o)]
    rc = cli(["selftrain", str(work / "teacher-train"), "--out", str(out), "--rounds", str(rounds), "--no-progress",
              "--teacher-weight", str(teacher_weight),
              *sets_args, "--eval", str(sets["test"] / "images"), "--gt", str(sets["test"] / "labels")])
    if rc:
        raise SystemExit(f"pseudolabel selftrain failed for {name} (exit {rc})")
    return out


def val_miou(round_dir: Path, sets: dict[str, Path]) -> float:
    """The round's student on the validation split (cached in round-K/val.json)."""
    from pipeline.student.engine import StudentEngine
    from pipeline.student.evaluate import score_engine

    path = round_dir / "val.json"
    if not path.exists():
        result = score_engine(StudentEngine.from_file(round_dir / "student.pt"), str(sets["val"] / "images"),
                              str(sets["val"] / "labels"))
        result.write_json(path)
    return json.loads(path.read_text())["miou"]


def test_miou(round_dir: Path) -> float:
    return json.loads((round_dir / "eval.json").read_text())["miou"]


PREDICT_CANDIDATES = [([1.0], False), ([1.25], False), ([1.5], False), ([1.75], False), ([2.0], False),
                      ([2.5], False), ([3.0], False), ([2.0], True), ([1.5, 2.0], False)]


def predict_tag(scales: list[float], flip: bool) -> str:
    return "+".join(f"{s:g}" for s in scales) + (" flip" if flip else "")


def score_with(round_dir: Path, split: str, sets: dict[str, Path], scales: list[float], flip: bool) -> float:
    """The round's student on `split`, labeling with this predict recipe (cached per recipe in
    round-K/predict-SPLIT.json): old and new students are scored alike, whatever their card says."""
    from pipeline.student.config import PredictRecipe
    from pipeline.student.engine import StudentEngine
    from pipeline.student.evaluate import score_engine

    path, tag = round_dir / f"predict-{split}.json", predict_tag(scales, flip)
    cache = json.loads(path.read_text()) if path.exists() else {}
    if tag not in cache:
        engine = StudentEngine.from_file(round_dir / "student.pt", predict=PredictRecipe(scales=scales, flip=flip))
        cache[tag] = score_engine(engine, str(sets[split] / "images"), str(sets[split] / "labels")).miou
        path.write_text(json.dumps(cache, indent=1) + "\n")
    return cache[tag]


def predict_sweep(work: Path, chosen: str, seeds: list[int], sets: dict[str, Path]) -> dict:
    """How should the trained student label, and after how many rounds? Every candidate on the
    VALIDATION split with each round's seed-0 student of the default recipe; the best pair becomes
    the default (`predict` in the student recipe, `selftrain --rounds`). Then every round of every
    seed is scored with that `predict` on validation and test."""
    sweep: dict[str, dict[str, float]] = {}
    k = 1
    while (work / f"{chosen}-seed0" / f"round-{k}" / "student.pt").exists():
        rdir = work / f"{chosen}-seed0" / f"round-{k}"
        sweep[str(k)] = {predict_tag(sc, fl): score_with(rdir, "val", sets, sc, fl) for sc, fl in PREDICT_CANDIDATES}
        k += 1
    best_round, (scales, flip) = max(((r, c) for r in sweep for c in PREDICT_CANDIDATES),
                                     key=lambda rc: sweep[rc[0]][predict_tag(*rc[1])])
    rounds: dict = {}
    for seed in seeds:
        k = 1
        while (work / f"{chosen}-seed{seed}" / f"round-{k}" / "student.pt").exists():
            rdir = work / f"{chosen}-seed{seed}" / f"round-{k}"
            rounds.setdefault(str(seed), {})[str(k)] = {split: score_with(rdir, split, sets, scales, flip)
                                                       for split in ("val", "test")}
            k += 1
    return {"sweep_val": sweep, "chosen": {"scales": scales, "flip": flip, "rounds": int(best_round)},
            "rounds": rounds}


def relabel_sweep(student: Path, work: Path, sets: dict[str, Path], weights=(0.0, 0.25, 0.5, 0.75)) -> dict:
    """How good would the next round's labels be? The student relabels the VALIDATION images
    (flip TTA), averaged with the teacher's validation labels at each weight; mIoU against the
    validation gt. Chooses `--teacher-weight` without training a student per value."""
    from pipeline.evaluation.ground_truth import open_ground_truth
    from pipeline.evaluation.metrics import compute_metrics, confusion_counts
    from pipeline.student.engine import StudentEngine
    from pipeline.student.relabel import mix_teacher, to_masks, tta_probs
    from pipeline.training.loader import iter_shard
    from pipeline.training.selection import select_shards

    cache = student.parent / "relabel_sweep_val.json"
    if cache.exists():
        return json.loads(cache.read_text())
    engine = StudentEngine.from_file(student, device="cpu")
    truth = open_ground_truth(str(sets["val"] / "labels"))
    selection = select_shards(str(work / "teacher-val"))
    C, ignore = selection.info.num_classes, selection.info.ignore_index
    confusion = {w: np.zeros((C, C + 1), np.int64) for w in weights}
    for shard in selection.shards:
        samples = list(iter_shard(shard))
        for start in range(0, len(samples), 16):
            part = samples[start: start + 16]
            probs = tta_probs(engine, np.stack([s.image for s in part])).cpu()
            labels, confs = np.stack([s.label for s in part]), np.stack([s.conf for s in part])
            for w in weights:
                pred, _ = to_masks(mix_teacher(probs, labels, confs, w, ignore) if w > 0 else probs)
                for s, p in zip(part, pred):
                    confusion[w] += confusion_counts(truth.get(s.key), p, C, 255, ignore)
    result = {str(w): compute_metrics(confusion[w]).miou for w in weights}
    cache.write_text(json.dumps(result))
    return result


def ground_truth(work: Path, sets: dict[str, Path], schedule: list[str]) -> dict:
    from self_training import train_on_ground_truth  # jobs/ is on sys.path (self_training.py runs this job)

    out = work / "ground_truth"
    train_on_ground_truth(sets, work, schedule, folder=out.name, score_val=True)
    return ceiling_scores(out, sets)


def ceiling_scores(out: Path, sets: dict[str, Path]) -> dict:
    """The ground-truth student labeling with the `predict` candidate best on ITS validation
    scores (it peaks elsewhere than the pseudo-label students), then on test."""
    sweep = {predict_tag(sc, fl): score_with(out, "val", sets, sc, fl) for sc, fl in PREDICT_CANDIDATES}
    scales, flip = max(PREDICT_CANDIDATES, key=lambda c: sweep[predict_tag(*c)])
    return {"val": sweep[predict_tag(scales, flip)], "test": score_with(out, "test", sets, scales, flip),
            "predict": {"scales": scales, "flip": flip}, "sweep_val": sweep}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.evaluation import evaluate_output

    budget = Budget(args.budget_min)
    work = Path(args.work).resolve()
    if args.table_only:
        result = collect(work, [int(s) for s in args.seeds.split(",") if s])
        print(format_table(result))
        save(args, result)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    schedule = args.schedule or SCHEDULE
    sets = prepare(work, args.actors)
    result: dict = {"splits": {k: {"seed": s, "count": c} for k, (s, c) in SPLITS.items()}, "schedule": schedule,
                    "teacher": {split: evaluate_output(work / f"teacher-{split}", str(sets[split] / "labels")).miou
                                for split in ("val", "test")},
                    "methods": {}, "rounds": {}}
    print(f"teacher: val {100 * result['teacher']['val']:.2f}, test {100 * result['teacher']['test']:.2f}", flush=True)

    def method_row(name: str) -> None:
        out = selftrain(work, f"{name}-seed0", sets, [*schedule, *METHODS[name], "seed=0"], 1)
        result["methods"][name] = {"val": val_miou(out / "round-1", sets), "test": test_miou(out / "round-1")}
        print(f"round 1, {name}: val {100 * result['methods'][name]['val']:.2f}, "
              f"test {100 * result['methods'][name]['test']:.2f}", flush=True)
        if not args.no_relabel_sweep:
            result["methods"][name]["relabel_val"] = relabel_sweep(out / "round-1" / "student.pt", work, sets)
            print(f"  relabel sweep on val (teacher weight: mIoU of the round-2 labels): "
                  f"{ {w: round(100 * v, 2) for w, v in result['methods'][name]['relabel_val'].items()} }", flush=True)
        save(args, result)

    for name in [m for m in args.methods.split(",") if m]:
        if budget.left():
            method_row(name)
    chosen = max(result["methods"], key=lambda m: result["methods"][m]["val"]) if result["methods"] else None
    result["default"] = chosen
    sweep = result["methods"].get(chosen, {}).get("relabel_val")
    weight = float(max(sweep, key=sweep.get)) if sweep else 0.5
    result["teacher_weight"] = weight
    print(f"default recipe (best round-1 mIoU on validation): {chosen}, teacher weight {weight}", flush=True)
    for seed in [int(s) for s in args.seeds.split(",") if s and chosen]:
        for k in range(1, args.rounds + 1):
            if not budget.left():
                break
            out = selftrain(work, f"{chosen}-seed{seed}", sets, [*schedule, *METHODS[chosen], f"seed={seed}"], k,
                            weight)
            rdir = out / f"round-{k}"
            result["rounds"].setdefault(str(seed), {})[str(k)] = {"val": val_miou(rdir, sets), "test": test_miou(rdir)}
            print(f"seed {seed} round {k}: test {100 * test_miou(rdir):.2f}", flush=True)
            save(args, result)
    if chosen:
        result["predict"] = predict_sweep(work, chosen, [int(s) for s in args.seeds.split(",") if s], sets)
        print(f"predict recipe and rounds chosen on validation: {result['predict']['chosen']}", flush=True)
        save(args, result)
    if not args.no_ground_truth and budget.left():
        result["ground_truth"] = ground_truth(work, sets, schedule)
        save(args, result)
    for name in [m for m in args.extra_methods.split(",") if m in METHODS and m not in result["methods"] and chosen]:
        if budget.left():
            method_row(name)
    print(format_table(result))
    save(args, result)
    return 0


def collect(work: Path, seeds: list[int]) -> dict:
    """The results of the finished stages under `work` (what --table-only prints)."""
    from pipeline.evaluation import evaluate_output

    result: dict = {"splits": {k: {"seed": s, "count": c} for k, (s, c) in SPLITS.items()}, "methods": {}, "rounds": {},
                    "teacher": {split: evaluate_output(work / f"teacher-{split}", str(work / split / "labels")).miou
                                for split in ("val", "test")}}
    for name in METHODS:
        rdir = work / f"{name}-seed0" / "round-1"
        if (rdir / "eval.json").exists() and (rdir / "val.json").exists():
            result["methods"][name] = {"val": json.loads((rdir / "val.json").read_text())["miou"], "test": test_miou(rdir)}
            if (rdir / "relabel_sweep_val.json").exists():
                result["methods"][name]["relabel_val"] = json.loads((rdir / "relabel_sweep_val.json").read_text())
    main_methods = [m for m in ("global_0.5", "class_top_p_0.8") if m in result["methods"]]
    chosen = max(main_methods, key=lambda m: result["methods"][m]["val"]) if main_methods else None
    result["default"] = chosen
    for seed in seeds:
        k = 1
        while chosen and (work / f"{chosen}-seed{seed}" / f"round-{k}" / "eval.json").exists():
            rdir = work / f"{chosen}-seed{seed}" / f"round-{k}"
            val = json.loads((rdir / "val.json").read_text())["miou"] if (rdir / "val.json").exists() else float("nan")
            result["rounds"].setdefault(str(seed), {})[str(k)] = {"val": val, "test": test_miou(rdir)}
            k += 1
    if chosen and (work / f"{chosen}-seed0" / "round-1" / "student.pt").exists():  # scores are cached
        result["predict"] = predict_sweep(work, chosen, seeds, {name: work / name for name in SPLITS})
    gt = work / "ground_truth"
    if (gt / "eval.json").exists():
        result["ground_truth"] = ceiling_scores(gt, {name: work / name for name in SPLITS})
    return result


def save(args, result: dict) -> None:
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def _round_rows(rounds: dict, label: str) -> list[str]:
    """One table row per round: val and test mIoU averaged over the seeds, with each seed's test and the spread."""
    per_round: dict[str, list[dict]] = {}
    for seed_rows in rounds.values():
        for k, row in seed_rows.items():
            per_round.setdefault(k, []).append(row)
    lines = []
    for k in sorted(per_round, key=int):
        rows, tests = per_round[k], [r["test"] for r in per_round[k]]
        spread = f" (seeds: {', '.join(_pct(t) for t in tests)}; spread {100 * (max(tests) - min(tests)):.2f})"
        lines.append(f"| {label}, round {k}, mean of {len(rows)} seed(s) | "
                     f"{_pct(statistics.mean(r['val'] for r in rows))} | {_pct(statistics.mean(tests))}{spread} |")
    return lines


def format_table(result: dict) -> str:
    """The markdown table of docs/self_training.md (mIoU in points; rounds: mean and spread over seeds)."""
    lines = ["| model | val mIoU | test mIoU |", "|---|---|---|",
             f"| teacher: toy CLIP + ResCLIP labeling | {_pct(result['teacher']['val'])} | "
             f"{_pct(result['teacher']['test'])} |"]
    for name, row in result["methods"].items():
        mark = " (default)" if name == result.get("default") else ""
        lines.append(f"| student round 1, selection {name}{mark}, seed 0 | {_pct(row['val'])} | {_pct(row['test'])} |")
    lines += _round_rows(result["rounds"], "`selftrain` default as trained")
    if "predict" in result:
        p = result["predict"]
        for k, sweep in p["sweep_val"].items():
            lines.append(f"| *`predict` sweep, round {k}, seed 0 (val): "
                         + ", ".join(f"{t} {_pct(v)}" for t, v in sweep.items()) + "* | | |")
        lines.append(f"| *chosen on val: {p['chosen']}* | | |")
        lines += _round_rows(p["rounds"], "`selftrain` default + chosen `predict`")
    if "ground_truth" in result:
        gt = result["ground_truth"]
        lines.append(f"| student on ground truth (ceiling), seed 0, `predict` {gt.get('predict', 'as trained')} | "
                     f"{_pct(gt['val'])} | {_pct(gt['test'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
