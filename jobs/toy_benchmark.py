"""mIoU of every base method with and without RCS / SFR on the held-out toy-world test split.

    .venv/bin/python jobs/toy_benchmark.py --checkpoint models/toyclip/toyclip-v1.pt \
        --out models/toyclip/benchmark.json

Runs through the real engine (`pipeline.engine.Segmenter`) with the toy vocabulary, 224 px scenes as
they are (`inference.short_side=0`, one 224/112 sliding window = the whole scene). Two tables:

- default: ResCLIP's published hyperparameters (conf/default.yaml) for every base method;
- tuned: RCS / SFR hyperparameters chosen per base method by coordinate search on the *validation*
  split (seed 1), then scored once on the test split (seed 2). The test split is never used to choose.

The JSON holds both tables, per-class IoU of every configuration, the tuned values and the seeds.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared CPU: see jobs/train_toy_clip.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.io.atomic import write_atomic  # noqa: E402
from pipeline.engine import Segmenter  # noqa: E402
from pipeline.engine.loading import file_sha256  # noqa: E402
from pipeline.evaluation.metrics import compute_metrics, confusion_counts  # noqa: E402
from pipeline.toyworld import NAMES, NUM_CLASSES, generate_scenes, split_seed  # noqa: E402

log = logging.getLogger("toy_benchmark")

ROOT = Path(__file__).resolve().parent.parent
VOCABULARY = ROOT / "conf" / "vocabularies" / "toyworld.txt"
BASES = ("vanilla", "sclip", "clearclip", "naclip")
VARIANTS = {"base": (False, False), "rcs": (True, False), "sfr": (False, True), "rcs+sfr": (True, True)}
IGNORE = 255

# Coordinate search space (one pass, in this order; each key starts at the paper default).
SEARCH: dict[str, list[Any]] = {
    "method.rcs.layers": [[5, 6, 7, 8], [3, 4, 5, 6], [7, 8, 9, 10], [4, 5, 6, 7, 8, 9]],
    "method.rcs.lam": [0.1, 0.3, 0.5, 0.7],
    "method.rcs.tau": [1.0, 2.0, 3.0],
    "method.sfr.lam": [0.3, 0.5, 0.7, 0.9],
    "method.sfr.tau": [1.0, 2.1, 3.0],
    "method.sfr.temp_thd": [0.15, 0.25, 0.35],
}


def base_overrides(checkpoint: Path) -> list[str]:
    return [f"model.pretrained={checkpoint}", f"vocabulary.file={VOCABULARY}", "inference.short_side=0",
            "inference.slide_crop=224", "inference.slide_stride=112", "device=cpu", "batch_size=16"]


def method_overrides(base: str, variant: str, params: dict[str, Any] | None = None) -> list[str]:
    rcs, sfr = VARIANTS[variant]
    out = [f"method.base={base}", f"method.rcs.enabled={str(rcs).lower()}", f"method.sfr.enabled={str(sfr).lower()}"]
    out += [f"{k}={json.dumps(v)}" for k, v in (params or {}).items()]
    return out


def evaluate(overrides: list[str], images: list[np.ndarray], labels: list[np.ndarray], batch: int = 16) -> dict[str, Any]:
    """mIoU (and per-class IoU) of one configuration on the given scenes, through the engine."""
    seg = Segmenter.from_config(load_config(overrides=overrides))
    if seg.vocabulary.names != list(NAMES):
        raise RuntimeError(f"vocabulary {VOCABULARY} does not match the toy-world class table")
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    for start in range(0, len(images), batch):
        outs = seg.predict(images[start : start + batch], return_probs=False)
        for out, gt in zip(outs, labels[start : start + batch]):
            confusion += confusion_counts(gt, out.pred, NUM_CLASSES, IGNORE, IGNORE)
    m = compute_metrics(confusion)
    return {"miou": m.miou, "pixel_accuracy": m.pixel_accuracy,
            "iou": {n: (None if np.isnan(v) else round(float(v), 4)) for n, v in zip(NAMES, m.iou)}}


def load_split(split: str, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    scenes = list(generate_scenes(split, count))
    return [s.image for s in scenes], [s.label for s in scenes]


def tune(base: str, common: list[str], images, labels) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """One pass of coordinate search over SEARCH for `base` with RCS + SFR, scored on validation."""
    cfg = load_config(overrides=common)
    params: dict[str, Any] = {k: _get(cfg, k) for k in SEARCH}
    cache: dict[str, float] = {}
    trials = []

    def score(p: dict[str, Any]) -> float:
        key = json.dumps(p, sort_keys=True)
        if key not in cache:
            cache[key] = evaluate(common + method_overrides(base, "rcs+sfr", p), images, labels)["miou"]
            trials.append({"params": dict(p), "val_miou": cache[key]})
            log.info("tune %s %s -> %.4f", base, {k.split("method.")[1]: v for k, v in p.items()}, cache[key])
        return cache[key]

    best = score(params)
    for key, values in SEARCH.items():
        for value in values:
            trial = {**params, key: value}
            s = score(trial)
            if s > best + 1e-6:
                best, params = s, trial
    return params, best, trials


def select_labeling_config(result: dict[str, Any], common: list[str], val, test) -> dict[str, Any]:
    """Pick the labelling configuration on validation only: for the base with the best tuned validation
    score, each ResCLIP variant with its tuned values, with and without PAMR (10 steps). The winner
    is then scored once on test. Written to models/toyclip/labeling.yaml by `--write-labeling`."""
    base = max(result["tuned"], key=lambda b: result["tuned"][b]["val_miou"])
    params = result["tuned"][base]["params"]
    candidates = []
    for variant in VARIANTS:
        for pamr in (0, 10):
            overrides = method_overrides(base, variant, params if variant != "base" else None)
            overrides.append(f"inference.pamr_steps={pamr}")
            score = evaluate(common + overrides, *val)["miou"]
            candidates.append({"overrides": overrides, "val_miou": score})
            log.info("select %s %s pamr=%d -> val %.4f", base, variant, pamr, score)
    best = max(candidates, key=lambda c: c["val_miou"])
    return {"candidates": candidates, "overrides": best["overrides"], "val_miou": best["val_miou"],
            "test": evaluate(common + best["overrides"], *test)}


def labeling_yaml(selection: dict[str, Any]) -> str:
    """The selected overrides as a config file for `--config` (paths are left to the caller)."""
    lines = ["# Labelling settings for the toy CLIP (models/toyclip/toyclip-v1.pt) on toy-world scenes.",
             "# Chosen on the validation split by jobs/toy_benchmark.py; see CARD.md. Use with",
             "# --config models/toyclip/labeling.yaml --set model.pretrained=models/toyclip/toyclip-v1.pt"]
    nested: dict[str, Any] = {"vocabulary": {"file": "toyworld"}, "inference": {"short_side": 0}}
    for item in selection["overrides"]:
        key, value = item.split("=", 1)
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    lines += _yaml_lines(nested, 0)
    return "\n".join(lines) + "\n"


def _yaml_lines(node: dict[str, Any], indent: int) -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out.append(" " * indent + f"{key}:")
            out += _yaml_lines(value, indent + 2)
        else:
            out.append(" " * indent + f"{key}: {value}")
    return out


def _get(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def markdown(result: dict[str, Any]) -> str:
    lines = ["| base | base only | + RCS | + SFR | + RCS + SFR | tuned + RCS | tuned + SFR | tuned + RCS + SFR |",
             "|---|---|---|---|---|---|---|---|"]
    for base in BASES:
        d = result["default"][base]
        t = result.get("tuned", {}).get(base, {})
        cells = [d[v]["miou"] for v in VARIANTS] + [t.get(v, {}).get("miou") for v in ("rcs", "sfr", "rcs+sfr")]
        lines.append(f"| {base} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "models" / "toyclip" / "toyclip-v1.pt")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "toyclip" / "benchmark.json")
    parser.add_argument("--test-count", type=int, default=200, help="held-out test scenes (split 'test', seed 2)")
    parser.add_argument("--val-count", type=int, default=64, help="validation scenes for tuning (split 'val', seed 1)")
    parser.add_argument("--no-tune", action="store_true")
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=BASES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--select-only", action="store_true",
                        help="reuse the tables in --out and only (re)run the validation selection of the labelling config")
    parser.add_argument("--write-labeling", type=Path, default=None, metavar="YAML",
                        help="write the selected configuration as a config file (e.g. models/toyclip/labeling.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()

    checkpoint = args.checkpoint.resolve()
    common = base_overrides(checkpoint)
    test_images, test_labels = load_split("test", args.test_count)
    if args.select_only:
        result = json.loads(args.out.read_text())
        if result["checkpoint_sha256"] != file_sha256(checkpoint) or "tuned" not in result:
            raise SystemExit(f"{args.out} is not a tuned benchmark of {checkpoint}; run without --select-only")
        return finish(args, result, common, (test_images, test_labels), t0)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint.relative_to(ROOT)) if checkpoint.is_relative_to(ROOT) else str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "test": {"split": "test", "seed": split_seed("test"), "count": args.test_count},
        "inference": "224 px scenes, short_side=0, slide 224/112 (one window), logit_scale 40, float32 on CPU",
        "default": {},
    }
    for base in args.bases:
        result["default"][base] = {}
        for variant in VARIANTS:
            r = evaluate(common + method_overrides(base, variant), test_images, test_labels)
            result["default"][base][variant] = r
            log.info("default %-9s %-8s mIoU %.4f", base, variant, r["miou"])
    # Not a ResCLIP setting: the engine's optional PAMR post-processing, for reference.
    result["extras"] = {}
    for base in args.bases:
        r = evaluate(common + method_overrides(base, "base") + ["inference.pamr_steps=10"], test_images, test_labels)
        result["extras"][f"{base}+pamr10"] = r
        log.info("extra   %-9s +pamr10  mIoU %.4f", base, r["miou"])
    if not args.no_tune:
        val_images, val_labels = load_split("val", args.val_count)
        result["val"] = {"split": "val", "seed": split_seed("val"), "count": args.val_count,
                         "search": {k: v for k, v in SEARCH.items()}, "method": "one pass of coordinate search, RCS + SFR"}
        result["tuned"] = {}
        for base in args.bases:
            params, val_miou, trials = tune(base, common, val_images, val_labels)
            entry: dict[str, Any] = {"params": params, "val_miou": val_miou, "trials": trials}
            for variant in ("rcs", "sfr", "rcs+sfr"):
                entry[variant] = evaluate(common + method_overrides(base, variant, params), test_images, test_labels)
                log.info("tuned   %-9s %-8s mIoU %.4f", base, variant, entry[variant]["miou"])
            result["tuned"][base] = entry
    return finish(args, result, common, (test_images, test_labels), t0)


def finish(args: argparse.Namespace, result: dict[str, Any], common: list[str], test, t0: float) -> int:
    if "tuned" in result:
        val = load_split("val", result["val"]["count"])
        result["selected"] = select_labeling_config(result, common, val, test)
        log.info("selected %s: val %.4f, test %.4f", result["selected"]["overrides"], result["selected"]["val_miou"],
                 result["selected"]["test"]["miou"])
        if args.write_labeling:
            args.write_labeling.write_text(labeling_yaml(result["selected"]))
    result["seconds"] = round(result.get("seconds", 0) + time.time() - t0, 1)
    result["table_markdown"] = markdown(result) if set(result["default"]) == set(BASES) else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(result, indent=2).encode())  # random temporary, never a planted symlink
    if result["table_markdown"]:
        print(result["table_markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
