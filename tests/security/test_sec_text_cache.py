"""Threat 8 of docs/security.md: the text-feature cache ($PSEUDOLABEL_CACHE/text/<key>.pt) is
checked before use. Poisoned features (rows rotated under the same key) are detected by their
digest, recomputed and overwritten; a cache folder writable by others is not used at all. Labels
are checked through `pseudolabel predict`: the same as with a clean cache."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fast(tiny_overrides, tmp_path):
    """The tiny model with 2 prompt templates and 4 classes: encoding the text takes no time."""
    templates, vocab = tmp_path / "templates.txt", tmp_path / "vocab.txt"
    templates.write_text("a photo of a {}.\na picture of the {}.\n")
    vocab.write_text("sky\nbrick\ngrass\nperson\n")
    return [*tiny_overrides, f"vocabulary.templates={templates}", f"vocabulary.file={vocab}"]


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PSEUDOLABEL_CACHE", str(root))
    import pipeline.engine.text as text

    monkeypatch.setattr(text, "_REFUSED", set())  # warnings are once per folder and process
    return root


def _photo(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    arr[:24] = (40, 90, 200)
    arr[24:, :32] = (200, 40, 40)
    path = tmp_path / "photo.png"
    Image.fromarray(arr).save(path)
    return path


def _predict(overrides, image, out) -> np.ndarray:
    sets = [a for s in overrides for a in ("--set", s)]
    assert main(["predict", str(image), "--out", str(out), *sets, "--probs"]) == 0
    with np.load(out / f"{image.stem}.npz") as z:
        return z["probs"]


def _rotated(entry: dict) -> dict:
    """The attack: the same file, key and stored digest, with the features' rows rotated."""
    return {**entry, "features": torch.roll(entry["features"], 1, dims=0)}


def test_poisoned_features_are_recomputed_and_labels_unchanged(private_cache, fast, tmp_path, caplog):
    image = _photo(tmp_path)
    clean = _predict(fast, image, tmp_path / "clean")
    [cached] = list((private_cache / "text").glob("*.pt"))
    entry = torch.load(cached, weights_only=True)
    torch.save(_rotated(entry), cached)

    with caplog.at_level(logging.WARNING, logger="pipeline.engine.text"):
        again = _predict(fast, image, tmp_path / "again")
    assert "does not match its stored digest" in caplog.text
    np.testing.assert_array_equal(again, clean)
    repaired = torch.load(cached, weights_only=True)  # overwritten with the real features
    assert torch.equal(repaired["features"], entry["features"])


def test_rotated_rows_do_change_labels_when_used(private_cache, fast, tmp_path):
    """The poison is real: with the rotated features and a digest recomputed to match (what an
    attacker who can write the folder would do), the labels change; so the folder check matters."""
    from pipeline.engine.text import _entry

    image = _photo(tmp_path)
    clean = _predict(fast, image, tmp_path / "clean")
    [cached] = list((private_cache / "text").glob("*.pt"))
    torch.save(_entry(_rotated(torch.load(cached, weights_only=True))["features"]), cached)
    poisoned = _predict(fast, image, tmp_path / "poisoned")
    assert not np.array_equal(poisoned, clean)


def test_a_cache_folder_writable_by_others_is_not_used(private_cache, fast, tmp_path, caplog):
    from pipeline.engine.text import _entry

    image = _photo(tmp_path)
    clean = _predict(fast, image, tmp_path / "clean")
    [cached] = list((private_cache / "text").glob("*.pt"))
    assert (cached.stat().st_mode & 0o022) == 0 and ((private_cache / "text").stat().st_mode & 0o077) == 0
    # a colleague's planted file, with a digest that matches, in a group-writable folder
    torch.save(_entry(_rotated(torch.load(cached, weights_only=True))["features"]), cached)
    os.chmod(private_cache / "text", 0o775)
    with caplog.at_level(logging.WARNING, logger="pipeline.engine.text"):
        shared = _predict(fast, image, tmp_path / "shared")
    assert "writable by group/others: the disk cache is not used" in caplog.text
    np.testing.assert_array_equal(shared, clean)

    # a private folder, but a file that is not ours (as root, hand it to another user)
    os.chmod(private_cache / "text", 0o700)
    if os.geteuid() == 0:
        os.chown(cached, 4242, -1)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pipeline.engine.text"):
            foreign = _predict(fast, image, tmp_path / "foreign")
        assert "writable by others or not yours" in caplog.text
        np.testing.assert_array_equal(foreign, clean)
