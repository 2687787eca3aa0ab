"""Scoring pseudo-labels against ground truth, and reading output directories through their format.

- `outputs`: read dataset.json, manifests and mask shards of a `pseudolabel run` output.
- `metrics`: pure confusion-matrix arithmetic (mmsegmentation conventions).
- `ground_truth`: gt sources (PNG folder, tar shards) and the gt id -> class mapping.
- `evaluate`: `evaluate_output(output_dir, gt, ...) -> EvalResult`.
"""
from pipeline.evaluation.evaluate import EVAL_FILE, EvalResult, SweepPoint, evaluate_output, format_table
from pipeline.evaluation.metrics import Metrics, compute_metrics, confusion_counts

__all__ = [
    "EVAL_FILE", "EvalResult", "Metrics", "SweepPoint", "compute_metrics", "confusion_counts",
    "evaluate_output", "format_table",
]
