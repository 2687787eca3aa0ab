"""Training loader: paired augmentations, manifest filtering, DataLoader workers, a tiny training run."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from output_fixture import FakeSample, synthetic_sample, write_output_dir
from pipeline.errors import UserError
from pipeline.training import (
    PseudoLabelDataset, RandomResizedCropFlip, Resize, SampleFilter, iter_shard, make_dataloader, select_shards,
)
from pipeline.training.transforms import sample_crop_box

pytestmark = pytest.mark.timeout(120)

NAMES = ["background", "cat", "dog", "bird"]
IGN = 255


def _striped(h=48, w=64):
    """Vertical stripes 8 px wide: label = stripe index % 3 (ignore every 4th stripe); the image's
    red channel encodes the stripe's class, so image/mask alignment is checkable after a transform."""
    stripe = np.arange(w) // 8
    label = np.tile(np.where(stripe % 4 == 3, IGN, stripe % 3), (h, 1)).astype(np.uint8)
    red = np.where(label == IGN, 250, label.astype(np.int64) * 80).astype(np.uint8)
    image = np.stack([red, np.full_like(red, 30), np.tile(np.arange(w, dtype=np.uint8) * 3, (h, 1))], axis=-1)
    conf = np.tile((stripe * 20 + 10).astype(np.uint8), (h, 1))
    return image, label, conf


@pytest.mark.timeout(30)
def test_paired_crop_flip_keeps_masks_aligned_and_values_exact():
    image, label, conf = _striped()
    transform = RandomResizedCropFlip((40, 40), scale=(0.2, 1.0), flip_prob=0.5)
    flips = 0
    for seed in range(30):
        img_t, lab_t, conf_t = transform(image, label, conf, np.random.default_rng(seed))
        assert img_t.shape == (3, 40, 40) and img_t.dtype == torch.float32
        assert lab_t.shape == (40, 40) and lab_t.dtype == torch.int64
        assert conf_t.shape == (40, 40) and conf_t.dtype == torch.float32
        assert set(lab_t.unique().tolist()) <= {0, 1, 2, IGN}  # nearest: no blended or lost ignore values
        assert set((conf_t * 255).round().long().unique().tolist()) <= set(np.unique(conf).tolist())
        lab = lab_t.numpy()
        # Away from stripe borders the (bilinear) red channel must match the (nearest) label.
        inner = (lab[:, 1:-1] == lab[:, :-2]) & (lab[:, 1:-1] == lab[:, 2:])
        red = img_t[0, :, 1:-1].numpy() * 255
        expected = np.where(lab[:, 1:-1] == IGN, 250, lab[:, 1:-1] * 80)
        assert np.abs(red - expected)[inner].max() < 2.0
        # confidence follows the same geometry: constant per stripe, so constant where the label is
        c = conf_t.numpy()
        assert np.all(c[:, 1:-1][inner & (lab[:, 1:-1] != IGN)] > 0)
        blue = img_t[2].numpy()
        flips += int(blue[0, 0] > blue[0, -1])  # the blue ramp runs left to right unless flipped
    assert 5 < flips < 25  # both flipped and unflipped crops occur


@pytest.mark.timeout(30)
def test_resize_is_nearest_for_labels_and_ignore_is_uint16_safe():
    image, label, conf = _striped(16, 40)
    label16 = np.where(label == IGN, 65535, label.astype(np.uint16))
    _, lab_t, _ = Resize((37, 29))(image, label16, conf, np.random.default_rng(0))
    assert set(lab_t.unique().tolist()) == {0, 1, 2, 65535}
    assert (lab_t == 65535).any()
    box = sample_crop_box(10, 1000, (0.9, 1.0), (0.75, 1.33), np.random.default_rng(0))  # fallback path
    assert box.height <= 10 and box.width <= 1000 and box.width / box.height <= 1.34


def _corpus(tmp_path: Path, n_shards=4, per_shard=3, size=(24, 32)):
    """Shards of cat/dog samples (no bird: tests add it where they need it)."""
    rng = np.random.default_rng(0)
    shards = {}
    for s in range(n_shards):
        samples = [synthetic_sample(rng, f"s{s}/k{i}", size, len(NAMES), classes=(1, 2)) for i in range(per_shard)]
        shards[f"shard-{s:02d}"] = samples
    return shards


def _make_unreadable(path: Path):
    """Remove a file (works even for root, for whom chmod 000 changes nothing)."""
    path.chmod(0)
    path.unlink()


def test_filter_decides_per_shard_and_never_opens_rejected_shards(tmp_path):
    shards = _corpus(tmp_path)
    # shard-01: every sample low-confidence; shard-02: every sample contains "bird" (excluded below)
    for s in shards["shard-01"]:
        s.conf = s.conf * 0.3
    for s in shards["shard-02"]:
        s.label[:3, :3] = 3
    shards["shard-03"].append(FakeSample("s3/broken", None, error="DecodeError: truncated"))
    out = write_output_dir(tmp_path / "out", shards, NAMES)
    sample_filter = SampleFilter(min_mean_confidence=0.5, excluded_classes=["bird"])
    selection = select_shards(out.root, sample_filter)
    assert [s.shard for s in selection.shards] == ["shard-00", "shard-03"]
    assert selection.rejected_shards == ["shard-01", "shard-02"]
    for name in ("shard-01", "shard-02"):
        _make_unreadable(out.root / "masks" / f"{name}.tar")
        _make_unreadable(out.input_dir / f"{name}.tar")
    ds = PseudoLabelDataset(out.root, sample_filter, transform=Resize((16, 16)), with_key=True)
    keys = [item[3] for item in ds]
    assert sorted(keys) == sorted([f"s0/k{i}" for i in range(3)] + [f"s3/k{i}" for i in range(3)])
    assert len(ds) == 6
    # Control: selecting the deleted shard does fail, so the run above really never opened it.
    with pytest.raises(UserError, match="cannot read tar"):
        list(PseudoLabelDataset(out.root, SampleFilter(required_classes=["bird"])))
    assert [s.shard for s in select_shards(out.root, SampleFilter(required_classes=[3])).shards] == ["shard-02"]
    both = SampleFilter(required_classes=["cat", "dog", "bird"], require_all=True)
    kept = select_shards(out.root, both)
    assert 0 < kept.kept_rows <= 3 and [s.shard for s in kept.shards] == ["shard-02"]
    with pytest.raises(UserError, match="not in this output's vocabulary"):
        select_shards(out.root, SampleFilter(required_classes=["unicorn"]))


def test_join_yields_original_pixels_with_their_masks(tmp_path):
    shards = _corpus(tmp_path, n_shards=1, per_shard=3)
    out = write_output_dir(tmp_path / "out", shards, NAMES)
    selection = select_shards(out.root, SampleFilter())
    samples = list(iter_shard(selection.shards[0]))
    assert [s.key for s in samples] == ["s0/k0", "s0/k1", "s0/k2"]
    for got, want in zip(samples, shards["shard-00"]):
        np.testing.assert_array_equal(got.image, want.image)  # PNG inputs: lossless
        np.testing.assert_array_equal(got.label, want.label.astype(np.uint8))
        np.testing.assert_array_equal(got.conf, np.round(255 * want.conf).astype(np.uint8))
    ds = PseudoLabelDataset(out.root, pixel_min_confidence=0.5, shuffle_shards=False)
    image, label, conf = next(iter(ds))
    assert image.shape == (3, 24, 32) and label.dtype == torch.int64
    assert torch.all(label[conf < 0.5] == IGN) and torch.all(label[conf >= 0.5] != IGN)
    assert ds.ignore_index == IGN and ds.class_names == NAMES


def test_dataloader_with_two_workers_splits_shards(tmp_path):
    out = write_output_dir(tmp_path / "out", _corpus(tmp_path, n_shards=4, per_shard=3), NAMES)
    ds = PseudoLabelDataset(out.root, transform=RandomResizedCropFlip((16, 16)), with_key=True, seed=3)
    assert [len(ds.shards_for(w, 2)) for w in (0, 1)] == [2, 2]
    assert not {s.shard for s in ds.shards_for(0, 2)} & {s.shard for s in ds.shards_for(1, 2)}
    loader = make_dataloader(ds, batch_size=2, num_workers=2)
    keys = []
    for image, label, conf, batch_keys in loader:
        assert image.shape[1:] == (3, 16, 16) and label.shape[1:] == (16, 16) and conf.shape == label.shape
        keys.extend(batch_keys)
    expected = {f"s{s}/k{i}" for s in range(4) for i in range(3)}
    assert sorted(keys) == sorted(expected)  # every sample once, none twice
    # ranks split shards too
    r0 = PseudoLabelDataset(out.root, rank=0, world_size=2, seed=1)
    r1 = PseudoLabelDataset(out.root, rank=1, world_size=2, seed=1)
    s0 = {s.shard for s in r0.shards_for(0, 1)}
    s1 = {s.shard for s in r1.shards_for(0, 1)}
    assert len(s0) == len(s1) == 2 and not s0 & s1


def test_tiny_segmentation_head_learns_from_pseudo_labels(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    shards = {f"sh{s}": [synthetic_sample(rng, f"s{s}/k{i}", (40, 40), len(NAMES)) for i in range(8)] for s in range(4)}
    out = write_output_dir(tmp_path / "out", shards, NAMES)
    ds = PseudoLabelDataset(out.root, transform=RandomResizedCropFlip((32, 32), scale=(0.5, 1.0)), shuffle_buffer=8)
    head = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, len(NAMES), 1)
    )
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    losses = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        for image, label, conf in make_dataloader(ds, batch_size=8):
            logits = head(image)
            per_pixel = F.cross_entropy(logits, label, ignore_index=ds.ignore_index, reduction="none")
            weight = conf * (label != ds.ignore_index)
            loss = (per_pixel * weight).sum() / weight.sum().clamp(min=1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(losses) == 20  # 32 samples, batches of 8, 5 epochs
    assert np.mean(losses[-3:]) < 0.3 * np.mean(losses[:2]), losses
    with torch.no_grad():
        image, label, _ = next(iter(make_dataloader(ds, batch_size=16)))
        pred = head(image).argmax(1)
        valid = label != IGN
        assert (pred[valid] == label[valid]).float().mean() > 0.8


def test_training_dry_run_command(tmp_path, capsys):
    from pipeline.training.__main__ import main as dry_run

    out = write_output_dir(tmp_path / "out", _corpus(tmp_path, n_shards=2, per_shard=2), NAMES)
    assert dry_run([str(out.root), "--min-mean-confidence", "0.1", "--exclude", "bird", "--batches", "1", "--size", "16", "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "4 of 4 samples" in printed and "image (2, 3, 16, 16)" in printed
    assert os.path.exists(out.root / "manifest" / "shard-00.parquet")
