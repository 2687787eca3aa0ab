"""FLOP count against the published size of ViT-B/16 (17.6 GMACs at 224 px)."""
import pytest

from pipeline.config import load_config
from pipeline.engine.costmodel import VitDims, crop_flops, image_flops

VIT_B16 = VitDims(width=768, layers=12, heads=12, patch=16, embed=512)


def test_vanilla_vit_b16_matches_its_published_flops():
    cfg = load_config(overrides=["method.base=vanilla", "method.rcs.enabled=false", "method.sfr.enabled=false"])
    assert image_flops(VIT_B16, 224, 224, 0, cfg) == pytest.approx(2 * 17.6e9, rel=0.02)


def test_sfr_runs_the_last_block_twice_and_sliding_counts_every_crop():
    plain = load_config(overrides=["method.sfr.enabled=false"])
    sfr = load_config()
    one, two = crop_flops(VIT_B16, 224, 224, 21, plain), crop_flops(VIT_B16, 224, 224, 21, sfr)
    assert two["trunk"] == one["trunk"] and two["last_block"] == pytest.approx(2 * one["last_block"])
    per_crop = sum(two.values())
    assert image_flops(VIT_B16, 336, 448, 21, sfr) == pytest.approx(6 * per_crop)  # 2 x 3 crops of 224
