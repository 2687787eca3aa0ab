"""The real pipeline (tiny CLIP, local Ray) on a tiny corpus, then eval, report and the loader on its output."""
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.demo_corpus import build_demo_corpus
from pipeline.evaluation import evaluate_output
from pipeline.evaluation.outputs import OutputDir, iter_masks, ok_rows
from pipeline.report import ReportOptions, build_report
from pipeline.training import PseudoLabelDataset, Resize, make_dataloader

pytestmark = pytest.mark.timeout(300)


def test_pipeline_output_feeds_eval_report_and_loader(tmp_path, tiny_overrides, ray_session):
    from pipeline.run.runner import run_pipeline

    build_demo_corpus(tmp_path / "in", shards=2, per_shard=3, size=(64, 48))
    cfg = load_config(overrides=[*tiny_overrides, "batch_size=4", "ray.cpu_actors=1", "labels.min_confidence=0.2"])
    out = tmp_path / "out"
    run_pipeline(str(tmp_path / "in" / "demo-{000000..000001}.tar"), str(out), cfg)

    output = OutputDir(str(out))
    manifest = output.load_manifest()
    ok = ok_rows(manifest)
    n_failed = int((manifest["status"] != "ok").sum())
    assert len(ok) == 4 and n_failed == 2  # the demo corpus breaks one sample per end shard

    # eval: gt = the pseudo-labels with ignored pixels filled -> exact on covered pixels
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    ignore = output.info.ignore_index
    for shard in ok["mask_shard"].unique():
        for key, label, _conf in iter_masks(output, shard, ok[ok["mask_shard"] == shard]):
            Image.fromarray(np.where(label == ignore, 0, label).astype(np.uint8)).save(gt_dir / f"{key}.png")
    result = evaluate_output(out, gt_dir, sweep_thresholds=[0.0, 0.6])
    assert result.num_images == 4
    assert result.metrics.covered_accuracy == pytest.approx(1.0)
    assert result.metrics.pixel_accuracy == pytest.approx(result.metrics.coverage)
    assert result.sweep[1].metrics.coverage <= result.metrics.coverage
    result.write_json(out / "eval.json")

    # report: overlays of every ok sample, one row per failure, the IoU chart
    index = build_report(out, options=ReportOptions(grid_samples=10, extremes=2))
    text = index.read_text()
    assert text.count('class="overlay"') == 4 + 2 + 2
    assert text.count('class="failure"') == 2
    assert 'id="iou-chart"' in text and "original image unavailable" not in text

    # loader: every ok sample, masks joined with the original JPEGs
    ds = PseudoLabelDataset(str(out), transform=Resize((32, 32)))
    batches = list(make_dataloader(ds, batch_size=2))
    assert sum(b[0].shape[0] for b in batches) == 4
    labels = torch.cat([b[1] for b in batches])
    allowed = set(range(output.info.num_classes)) | {ignore}
    assert set(labels.unique().tolist()) <= allowed
