"""Static HTML report of an output directory (`pseudolabel report`): overlays, confidence and class
statistics, failures and, when OUTPUT/eval.json exists, per-class IoU."""
from pipeline.report.builder import ReportOptions, build_report

__all__ = ["ReportOptions", "build_report"]
