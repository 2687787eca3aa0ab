"""The README's first command (`make demo`): the whole product on a demo corpus, on a local Ray.

1. builds a toy-world corpus (procedural scenes with ground truth) as WebDataset shards, plus one
   small shard with two deliberately broken samples;
2. labels it with `pseudolabel run` semantics (local Ray, CPU actors, mask shards + manifests);
3. scores the labels against the ground truth (`eval`), renders the HTML report (`report`) and
   checks the output with `verify`;
4. prints what it used and where everything is.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_config  # noqa: E402
from pipeline.demo_corpus import build_demo_corpus  # noqa: E402

TOY_CHECKPOINT = REPO / "models" / "toyclip" / "toyclip-v1.pt"
TOY_CONFIG = REPO / "models" / "toyclip" / "labeling.yaml"
FALLBACK_CHECKPOINT = REPO / "tests" / "fixtures" / "golden" / "tiny_clip_openai.pt"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo-out", help="working directory (corpus, outputs, report)")
    p.add_argument("--images", type=int, default=48, help="toy-world scenes to label")
    p.add_argument("--actors", type=int, default=2, help="CPU actors on the local Ray")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args()


def model_overrides() -> tuple[list[str], str]:
    if TOY_CHECKPOINT.is_file():
        sets = [f"model.pretrained={TOY_CHECKPOINT}", "vocabulary.file=toyworld"]
        return sets, f"the project's own toy-world CLIP ({TOY_CHECKPOINT.relative_to(REPO)}, see its CARD.md)"
    sets = [f"model.pretrained={FALLBACK_CHECKPOINT}", "vocabulary.file=toyworld"]
    return sets, f"a RANDOM tiny CLIP ({FALLBACK_CHECKPOINT.relative_to(REPO)}): labels are meaningless"


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.commands.run import print_summary
    from pipeline.evaluation import evaluate_output, format_table
    from pipeline.report import build_report
    from pipeline.run.runner import run_pipeline
    from pipeline.toyworld.shards import write_shards
    from pipeline.run.verify import verify_output

    work = Path(args.out).resolve()
    shutil.rmtree(work, ignore_errors=True)
    corpus, output = work / "corpus", work / "labels"
    toy = write_shards(corpus, "test", args.images, per_shard=16)
    broken = build_demo_corpus(corpus / "extra", shards=1, per_shard=8, seed=1, corrupt=True)
    shutil.move(str(broken[0]), corpus / "images" / "zz-broken-000000.tar")
    print(f"corpus: {len(toy.images)} toy-world shards ({args.images} scenes) + 1 shard with 2 broken samples "
          f"under {corpus / 'images'}")

    sets, weights = model_overrides()
    config = TOY_CONFIG if TOY_CONFIG.is_file() else None
    cfg = load_config(config, sets + [f"ray.cpu_actors={args.actors}"] + args.overrides)
    print(f"weights: {weights}")
    print(f"method: {cfg.method.base} + RCS {'on' if cfg.method.rcs.enabled else 'off'}"
          f" + SFR {'on' if cfg.method.sfr.enabled else 'off'}; local Ray with {args.actors} CPU actors")
    summary = run_pipeline(str(corpus / "images"), str(output), cfg, log_level=logging.WARNING)
    print_summary(summary)

    result = evaluate_output(output, str(corpus / "labels"))
    result.write_json(output / "eval.json")
    print(format_table(result))
    report = build_report(output)
    check = verify_output(str(output), str(corpus / "images"))
    print(check.summary(first=5))
    print()
    print(f"mIoU against the toy world's ground truth: {100 * result.miou:.1f}% ({result.num_images} scenes)")
    print(f"outputs:  {output}/masks/*.tar (KEY.label.png, KEY.conf.png), {output}/manifest/*.parquet,")
    print(f"          {output}/dataset.json, {output}/_stats.json, {output}/eval.json")
    print(f"report:   {report}")
    return 0 if check.passed else 1


if __name__ == "__main__":
    sys.exit(main())
