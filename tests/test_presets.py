"""The eight ResCLIP benchmark presets load, validate, and point at well-formed vocabularies."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.vocabulary import read_vocabulary_file

PRESET_DIR = Path(__file__).resolve().parent.parent / "conf" / "presets"

# preset -> (classes, slide_crop, short_side, prob_thd, temp_thd, (rcs tau, lam), (sfr tau, lam))
# transcribed from yvhangyang/ResCLIP configs/cfg_*.py
EXPECTED = {
    "voc21": (21, 0, 336, 0.1, 0.50, (2.0, 0.3), (2.2, 0.7)),
    "voc20": (20, 0, 336, 0.0, 0.10, (2.0, 0.6), (2.1, 0.6)),
    "context60": (60, 224, 336, 0.1, 0.30, (2.0, 0.3), (1.8, 0.7)),
    "context59": (59, 224, 336, 0.0, 0.25, (2.0, 0.4), (1.8, 0.7)),
    "coco_object": (81, 224, 336, 0.1, 0.11, (2.0, 0.4), (1.8, 0.7)),
    "coco_stuff": (171, 224, 336, 0.0, 0.11, (2.0, 0.4), (1.8, 0.7)),
    "cityscapes": (19, 224, 560, 0.0, 0.10, (2.0, 0.2), (2.1, 0.6)),
    "ade20k": (150, 224, 336, 0.0, 0.25, (2.0, 0.3), (2.1, 0.7)),
}


def test_every_preset_is_listed():
    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_loads_and_matches_authors_settings(name):
    cfg = load_config(PRESET_DIR / f"{name}.yaml")
    n_cls, crop, short, prob, temp, rcs, sfr = EXPECTED[name]
    assert cfg.model.name == "ViT-B-16" and cfg.model.pretrained == "openai"
    assert cfg.method.base == "naclip"
    assert cfg.method.gaussian_std == 5.0
    assert cfg.method.rcs.enabled and cfg.method.sfr.enabled
    assert cfg.method.rcs.layers == [5, 6, 7, 8]
    assert (cfg.method.rcs.tau, cfg.method.rcs.lam) == pytest.approx(rcs)
    assert (cfg.method.sfr.tau, cfg.method.sfr.lam) == pytest.approx(sfr)
    assert cfg.method.sfr.temp_thd == pytest.approx(temp)
    assert cfg.method.sfr.delete_same_entity is True
    assert cfg.inference.slide_crop == crop
    assert cfg.inference.slide_stride == 112
    assert cfg.inference.short_side == short
    assert cfg.inference.prob_thd == pytest.approx(prob)
    assert cfg.inference.logit_scale == 40.0
    assert cfg.inference.pamr_steps == 0
    assert cfg.vocabulary.background is None
    assert cfg.vocabulary.file == name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_vocabulary(name):
    cfg = load_config(PRESET_DIR / f"{name}.yaml")
    vocab = read_vocabulary_file(cfg.vocabulary.file)
    assert len(vocab) == EXPECTED[name][0]
    assert len(set(vocab.names)) == len(vocab.names), "class names must be unique"
    for group in vocab.synonyms:
        assert len(set(group)) == len(group), f"repeated synonym in {group}"
        assert all(w == w.strip() and w for w in group)
    if EXPECTED[name][3] > 0:
        # prob_thd sends pixels to class 0, so these vocabularies must start with a background class
        assert vocab.names[0] in ("sky", "background")
