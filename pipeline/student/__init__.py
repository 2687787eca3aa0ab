"""Self-training: a student segmentation network trained on a `pseudolabel run` output.

- `config`: the typed recipe (`StudentConfig`, presets `cpu` / `gpu`, `--set` overrides).
- `model`: the networks (a registry: `small` for CPUs, torchvision's DeepLabV3-ResNet50 for GPUs).
- `data`: the student's transform, datasets (pseudo-labels, or gt for a ceiling), class counts.
- `loss`: cross-entropy that ignores / down-weights low-confidence pixels, optional class balance.
- `trainer`: the loop, checkpoints every N steps, exact resume; `checkpoint`: student.pt + card.
- `engine`: the student as a labeling engine for `pseudolabel run` / `predict`.
- `evaluate`: the student's mIoU on image shards against gt (the `pseudolabel eval` metric).
"""
