"""`pseudolabel selftrain OUTPUT --out DIR [--rounds K]`: rounds of self-training on OUTPUT's pseudo-labels.

Round 1 trains a student on the teacher's labels (OUTPUT); round k > 1 relabels the same training
images with round k-1's student (flip / multi-scale TTA, averaged with the teacher) and trains a
fresh student on those labels. Each round keeps its own folder:

    DIR/round-K/student.pt, card.json     the round's model and card (a round with its card is done)
    DIR/round-K/checkpoint.pt             crash-safe training checkpoint (resumed on a re-run)
    DIR/round-K/labels/                   the labels it trained on (rounds > 1; labels.json = complete)
    DIR/round-K/eval.json                 with --eval IMAGES --gt GT: the round's held-out scores
    DIR/eval.json                         the final round's scores (the keys of `pseudolabel eval --json`)
    DIR/selftrain.json                    per round: mIoU, steps, seconds, selection thresholds

A re-run with the same arguments skips finished rounds and resumes the interrupted one exactly.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from pipeline.errors import UserError
from pipeline.io.atomic import write_atomic

log = logging.getLogger(__name__)

SUMMARY_FILE = "selftrain.json"
# selftrain's recipe on top of the preset, chosen on the validation split of jobs/self_training_rounds.py
# (docs/self_training.md): class-balanced selection beat the global 0.5 cut (59.77 vs 58.93 mIoU).
# --set comes after, so any of it can be overridden (confidence.class_top_p=0 turns it off).
DEFAULTS = ["confidence.class_top_p=0.8"]
# Rounds, chosen with the student's `predict` recipe on the same validation split at the `cpu`
# preset's full schedule: round 1 86.72 vs round 2 85.19 mIoU (seed 0). A second round trains on
# the first student's labels at its training size, which blur the small things the larger
# `predict` input recovers; --rounds 2+ stays for corpora where validation says otherwise.
DEFAULT_ROUNDS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output directory of `pseudolabel run`: the teacher's labels")
    parser.add_argument("--out", required=True, metavar="DIR", help="where round-K/ folders and eval.json go")
    parser.add_argument("--rounds", type=_positive, default=DEFAULT_ROUNDS, metavar="K",
                        help=f"training rounds (default {DEFAULT_ROUNDS}, chosen on validation)")
    from pipeline.cli import add_recipe_arguments

    add_recipe_arguments(parser)  # --config PRESET (--preset still parsed, with a deprecation line)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one student recipe key, e.g. optim.steps=600, consistency.weight=1 "
                             f"(selftrain's defaults on top of the preset: {' '.join(DEFAULTS)})")
    parser.add_argument("--teacher-weight", type=_share, default=0.5, metavar="W",
                        help="relabeling: weight of the teacher's probabilities in the average with the student's "
                             "(0 = the student alone; default 0.5, the best of 0/0.25/0.5/0.75 on validation)")
    parser.add_argument("--tta-scales", type=_scales, default=(1.0,), metavar="S1,S2",
                        help="relabeling: student input scales, multiples of its short side (default 1)")
    parser.add_argument("--no-flip", action="store_true", help="relabeling: no horizontal-flip TTA")
    from pipeline.commands.train import add_data_arguments

    add_data_arguments(parser, "image shards to score every round on")


def main(args: argparse.Namespace) -> int:
    from pipeline.evaluation.outputs import OutputDir
    from pipeline.student.config import load_student_config
    from pipeline.student.relabel import RelabelRecipe
    from pipeline.training.selection import SampleFilter, select_shards

    if bool(args.eval_images) != bool(args.gt):
        raise UserError("--eval IMAGES and --gt GT go together")
    from pipeline.cli import resolve_recipe

    args.preset = resolve_recipe(args, "selftrain")
    cfg = load_student_config(args.preset, [*DEFAULTS, *args.overrides])
    teacher = select_shards(OutputDir(str(args.output)), SampleFilter(min_mean_confidence=cfg.data.min_mean_confidence),
                            images_root=args.images_root)
    if not teacher.shards:
        raise UserError(f"{args.output} has no labeled sample to train on")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    relabel = RelabelRecipe(args.teacher_weight, not args.no_flip, tuple(args.tta_scales))
    rounds: list[dict[str, Any]] = []
    for k in range(1, args.rounds + 1):
        rounds.append(_round(k, args, cfg, teacher, relabel, out))
        _write_summary(out, args, cfg, relabel, rounds)
    final = out / f"round-{args.rounds}"
    if args.eval_images:
        shutil.copyfile(final / "eval.json", out / "eval.json")
        print(f"eval: {out / 'eval.json'} (round {args.rounds}, mIoU {100 * rounds[-1]['miou']:.2f})")
    return 0


def _round(k: int, args: argparse.Namespace, cfg, teacher, relabel, out: Path) -> dict[str, Any]:
    """Train (or skip, when its card exists) round k, score it; the round's summary row."""
    from pipeline.student.checkpoint import CARD_FILE, STUDENT_FILE

    rdir = out / f"round-{k}"
    t0 = time.monotonic()
    if (rdir / CARD_FILE).exists() and (rdir / STUDENT_FILE).exists():
        from pipeline.student.config import training_part

        recipe = json.loads((rdir / CARD_FILE).read_text()).get("recipe") or {}
        if training_part(recipe) != cfg.training_dict():
            raise UserError(f"{rdir} was trained with another recipe; re-run with the same --config/--set values, "
                            "or use a new --out")
        print(f"round {k}/{args.rounds}: done before ({rdir / STUDENT_FILE}), skipped")
        _restamp_predict(rdir, cfg, recipe.get("predict"))
    else:
        selection, hist, source = _labels(k, args, cfg, teacher, relabel, out, rdir)
        _train(k, args, cfg, selection, hist, source, rdir)
    card = json.loads((rdir / CARD_FILE).read_text())
    row: dict[str, Any] = {"round": k, "student": str(rdir / STUDENT_FILE), "steps": card["steps"],
                           "train_seconds": card["train_seconds"], "labels": card["data"].get("labels"),
                           "class_min_confidence": card.get("class_min_confidence")}
    if args.eval_images:
        row.update(_score(rdir, args))
    print(f"round {k}/{args.rounds}: {card['steps']} steps in {card['train_seconds'] / 60:.1f} min"
          + (f", held-out mIoU {100 * row['miou']:.2f}" if "miou" in row else "")
          + f" ({time.monotonic() - t0:.0f} s this run)")
    return row


def _labels(k: int, args, cfg, teacher, relabel, out: Path, rdir: Path):
    """The round's training labels: the teacher's (round 1), else the previous student's relabels."""
    from pipeline.student.engine import StudentEngine
    from pipeline.student.relabel import relabel as relabel_with
    from pipeline.student.selection import selection_histogram

    if k == 1:
        hist = selection_histogram(teacher, rdir / "teacher_histogram.json") if cfg.confidence.class_top_p > 0 else None
        return teacher, hist, {"labels": "teacher", "output": str(args.output)}
    previous = out / f"round-{k - 1}" / "student.pt"
    engine = StudentEngine.from_file(previous, device=cfg.device)
    t0 = time.monotonic()
    with _bar(teacher.num_samples, f"round {k} relabel", args.no_progress) as progress:
        selection, hist = relabel_with(teacher, engine, rdir / "labels", relabel, progress=progress)
    log.info("round %d: relabeled %d samples with %s in %.0f s", k, teacher.num_samples, previous, time.monotonic() - t0)
    return selection, hist, {"labels": f"round-{k - 1} student", "student": str(previous), "output": str(args.output),
                             "relabel": {"teacher_weight": relabel.teacher_weight, "flip": relabel.flip,
                                         "scales": list(relabel.scales)}}


def _train(k: int, args, cfg, selection, hist, source: dict[str, Any], rdir: Path) -> None:
    from pipeline.commands.train import _synonyms
    from pipeline.student.data import StudentTransform, class_pixel_counts
    from pipeline.student.selection import class_thresholds
    from pipeline.student.trainer import TrainData, train_student
    from pipeline.training.loader import PseudoLabelDataset

    info = selection.info
    dataset = PseudoLabelDataset(selection, transform=StudentTransform(cfg.data), shuffle_shards=True,
                                 shuffle_buffer=64, seed=cfg.seed)
    if hist is not None:
        counts = hist.class_pixels
    else:
        counts = class_pixel_counts(str(args.output), info.num_classes, cfg.data.min_mean_confidence)
    thresholds = class_thresholds(hist, cfg.confidence.class_top_p) if cfg.confidence.class_top_p > 0 else None
    data = TrainData(dataset=dataset, num_classes=info.num_classes, ignore_index=info.ignore_index,
                     class_names=list(info.names), colors=list(info.colors), synonyms=_synonyms(info),
                     pixel_counts=counts, class_min_confidence=thresholds,
                     source={**source, "round": k, "samples": len(dataset),
                             "config_fingerprint": info.raw.get("config_fingerprint"), "teacher": info.raw.get("model")})
    print(f"round {k}/{args.rounds}: training on {source['labels']} labels of {len(dataset)} samples, "
          f"{cfg.optim.steps} steps")
    with _bar(cfg.optim.steps, f"round {k} train", args.no_progress, unit="step") as progress:
        train_student(cfg, data, rdir, resume=True,
                      progress=None if progress is None else (lambda step, total, loss: progress(step)))


def _restamp_predict(rdir: Path, cfg, stamped: Optional[dict[str, Any]]) -> None:
    """A finished round re-run with another `predict` (how the student labels; no training step
    depends on it): its student file and card take the new one, and its stale scores are dropped,
    so what the round deploys and what it reports follow the command, not the first run.
    `stamped`: the card's `predict` (the student file is read only when it differs)."""
    import dataclasses

    from pipeline.student.checkpoint import CARD_FILE, STUDENT_FILE, load_student_file, save_student

    wanted = dataclasses.asdict(cfg.predict)
    if stamped == wanted:
        return
    blob = load_student_file(rdir / STUDENT_FILE)
    blob["card"]["recipe"]["predict"] = wanted
    save_student(rdir, blob["state_dict"], blob["card"])
    (rdir / "eval.json").unlink(missing_ok=True)
    log.info("%s: predict set to %s (%s rewritten; scores recomputed)", rdir, wanted, CARD_FILE)


def _score(rdir: Path, args) -> dict[str, Any]:
    """The round's held-out scores (computed once per `predict`, kept in round-K/eval.json)."""
    from pipeline.student.engine import StudentEngine
    from pipeline.student.evaluate import score_engine

    path = rdir / "eval.json"
    if not path.exists():
        engine = StudentEngine.from_file(rdir / "student.pt")
        result = score_engine(engine, args.eval_images, args.gt if len(args.gt) > 1 else args.gt[0],
                              class_map=args.class_map)
        result.write_json(path)
    doc = json.loads(path.read_text())
    return {"miou": doc["miou"], "pixel_accuracy": doc.get("pixel_accuracy")}


def _write_summary(out: Path, args, cfg, relabel, rounds: list[dict[str, Any]]) -> None:
    import dataclasses

    doc = {"output": str(args.output), "rounds_requested": args.rounds, "recipe": cfg.to_dict(),
           "relabel": dataclasses.asdict(relabel), "rounds": rounds}
    write_atomic(out / SUMMARY_FILE, (json.dumps(doc, indent=2) + "\n").encode())  # random temporary, never followed


class _bar:
    """A tqdm bar set to an absolute count by a callback (None when disabled)."""

    def __init__(self, total: int, desc: str, disabled: bool, unit: str = "image"):
        self.total, self.desc, self.disabled, self.unit, self.bar = total, desc, disabled, unit, None

    def __enter__(self) -> Optional[Any]:
        if self.disabled:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, dynamic_ncols=True)

        def update(n: int) -> None:
            self.bar.n = n
            self.bar.refresh()

        return update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in 0..1")
    return value


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from exc
    if not values or any(not 0.25 <= v <= 4.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: scales must be in 0.25..4")
    return values
