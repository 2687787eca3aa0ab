"""Train on pseudo-labels: manifest-driven sample selection, paired augmentations, and loaders
for `torch.utils.data.DataLoader` (`PseudoLabelDataset`) and Ray Data / Ray Train
(`build_ray_dataset`). See `python -m pipeline.training --help` for a dry run over an output."""
from pipeline.training.loader import PseudoLabelDataset, RawSample, iter_shard, make_dataloader
from pipeline.training.ray_data import build_ray_dataset
from pipeline.training.selection import SampleFilter, Selection, ShardSelection, select_shards
from pipeline.training.transforms import CLIP_MEAN, CLIP_STD, RandomResizedCropFlip, Resize

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "PseudoLabelDataset", "RandomResizedCropFlip", "RawSample", "Resize",
    "SampleFilter", "Selection", "ShardSelection", "build_ray_dataset", "iter_shard", "make_dataloader",
    "select_shards",
]
