"""ResCLIP segmentation engine: model layer (`dense_vit`, `attention`, `sfr`, `pamr`) and predictor."""
from pipeline.engine.predictor import ImageTooSmall, Segmentation, Segmenter, resolve_device

__all__ = ["ImageTooSmall", "Segmentation", "Segmenter", "resolve_device"]
