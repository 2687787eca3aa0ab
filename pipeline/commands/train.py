"""`pseudolabel train OUTPUT --out DIR`: train a student segmentation network on OUTPUT's pseudo-labels.

Writes DIR/student.pt (weights + card), DIR/card.json, DIR/checkpoint.pt (every
`checkpoint_every` steps; `--resume` continues from it) and, with `--eval IMAGES --gt GT`,
DIR/eval.json: the student's scores under `pseudolabel eval`'s metric (key `miou`).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Ctrl-C (pipeline.cli prints it): the last checkpoint_every step is on disk.
INTERRUPTED_HINT = "re-run the same command with --resume to continue from the last checkpoint in --out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="output directory of `pseudolabel run` (path or URL)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where student.pt, card.json and checkpoints go")
    from pipeline.cli import add_recipe_arguments

    add_recipe_arguments(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one recipe key, e.g. optim.steps=2000, confidence.min_confidence=0.6")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt after a crash")
    add_data_arguments(parser, "image shards to score the student on")


def add_data_arguments(parser: argparse.ArgumentParser, eval_help: str) -> None:
    """Held-out scoring, where the input shards are, progress: the same for `train` and `selftrain`."""
    parser.add_argument("--eval", dest="eval_images", metavar="IMAGES", help=eval_help)
    parser.add_argument("--gt", action="append", metavar="GT", help="ground truth for --eval (as for `pseudolabel eval`)")
    parser.add_argument("--class-map", metavar="FILE", help="YAML gt id -> class index or name (as for `pseudolabel eval`)")
    parser.add_argument("--images-root", metavar="DIR", help="read OUTPUT's input shards from DIR/<shard file name>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError
    from pipeline.student.config import load_student_config
    from pipeline.student.data import class_pixel_counts, pseudo_label_dataset
    from pipeline.student.trainer import TrainData, train_student

    if bool(args.eval_images) != bool(args.gt):
        raise UserError("--eval IMAGES and --gt GT go together")
    from pipeline.cli import resolve_recipe

    args.preset = resolve_recipe(args, "train")
    cfg = load_student_config(args.preset, args.overrides)
    dataset = pseudo_label_dataset(args.output, cfg.data, cfg.seed, images_root=args.images_root)
    info = dataset.selection.info
    data = TrainData(
        dataset=dataset, num_classes=info.num_classes, ignore_index=info.ignore_index, class_names=list(info.names),
        colors=list(info.colors), synonyms=_synonyms(info),
        pixel_counts=class_pixel_counts(args.output, info.num_classes, cfg.data.min_mean_confidence),
        source={"output": str(args.output), "samples": len(dataset),
                "config_fingerprint": info.raw.get("config_fingerprint"), "teacher": info.raw.get("model")},
    )
    log.info("training %s on %d samples of %s (%d classes), %d steps", cfg.model.arch, len(dataset), args.output,
             info.num_classes, cfg.optim.steps)
    with _bar(cfg.optim.steps, args.no_progress) as progress:
        result = train_student(cfg, data, args.out, resume=args.resume, progress=progress)
    print(f"student: {result.student_path} ({result.steps} steps in {result.seconds / 60:.1f} min)")
    if args.eval_images:
        _evaluate(args, result.student_path)
    return 0


def _evaluate(args: argparse.Namespace, student_path: Path) -> None:
    from pipeline.evaluation import format_table
    from pipeline.student.engine import StudentEngine
    from pipeline.student.evaluate import score_engine

    engine = StudentEngine.from_file(student_path)
    result = score_engine(engine, args.eval_images, args.gt if len(args.gt) > 1 else args.gt[0],
                          class_map=args.class_map)
    print(format_table(result))
    path = Path(args.out) / "eval.json"
    result.write_json(path)
    doc = json.loads(path.read_text())
    doc["student"] = str(student_path)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"eval: {path} (mIoU {100 * result.miou:.2f})")


def _synonyms(info) -> list[list[str]]:
    entries = sorted(info.raw.get("vocabulary", []), key=lambda e: int(e["index"]))
    return [list(e.get("synonyms") or [e["name"]]) for e in entries] or [[n] for n in info.names]


class _bar:
    """A tqdm bar fed by the trainer's progress callback (nothing when disabled)."""

    def __init__(self, total: int, disabled: bool):
        self.total, self.disabled, self.bar = total, disabled, None

    def __enter__(self):
        if self.disabled:
            return None
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, unit="step", desc="train", dynamic_ncols=True)

        def update(step: int, total: int, loss: float) -> None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            self.bar.refresh()

        return update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
