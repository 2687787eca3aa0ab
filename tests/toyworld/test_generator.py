"""The toy world generator: determinism, ground truth consistent with the classes, captions."""
import numpy as np
import pytest

from pipeline.toyworld import NAMES, NUM_CLASSES, PALETTE, SCENE_SIZE, colorize, generate_scene, vocabulary_text
from pipeline.toyworld.classes import STUFF, THINGS, class_index
from pipeline.toyworld.generator import present_classes, split_seed


def test_same_seed_and_index_give_identical_scenes():
    a, b = generate_scene(2, 5), generate_scene(2, 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.caption == b.caption and a.key == b.key


def test_scenes_do_not_depend_on_generation_order():
    later_first = [generate_scene(0, i) for i in (3, 1)]
    assert np.array_equal(later_first[1].image, generate_scene(0, 1).image)


def test_different_seeds_or_indices_differ():
    base = generate_scene(0, 0)
    assert not np.array_equal(base.image, generate_scene(1, 0).image)
    assert not np.array_equal(base.image, generate_scene(0, 1).image)


def test_splits_have_distinct_fixed_seeds():
    seeds = [split_seed(s) for s in ("train", "val", "test")]
    assert len(set(seeds)) == 3
    with pytest.raises(KeyError, match="unknown split"):
        split_seed("holdout")


@pytest.mark.parametrize("index", range(6))
def test_scene_geometry_and_label_values(index):
    s = generate_scene(2, index)
    assert s.image.shape == (SCENE_SIZE, SCENE_SIZE, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (SCENE_SIZE, SCENE_SIZE) and s.label.dtype == np.uint8
    assert s.label.max() < NUM_CLASSES


def test_masks_match_the_named_classes():
    for index in range(12):
        s = generate_scene(1, index)
        counts = np.bincount(s.label.ravel(), minlength=NUM_CLASSES)
        assert set(s.classes) == {c for c in range(NUM_CLASSES) if counts[c] >= 0.005 * s.label.size}
        assert list(s.classes) == sorted(s.classes, key=lambda c: -counts[c])  # largest first
        assert all(NAMES[c] in s.caption for c in s.classes)
        assert 2 <= len(present_classes(s.label)) <= 6


def test_thing_pixels_look_like_their_class():
    """A thing's mask must cover pixels painted as that thing: e.g. ball pixels are mostly red."""
    ball = class_index("ball")
    for index in range(60):
        s = generate_scene(0, index)
        m = s.label == ball
        if m.sum() > 500:
            r, g, b = s.image[m].astype(float).mean(0)
            assert r > 1.5 * g and r > 1.5 * b
            return
    pytest.fail("no ball in 60 scenes")


def test_several_classes_per_scene_and_all_classes_occur():
    seen = np.zeros(NUM_CLASSES, bool)
    kinds = []
    for index in range(80):
        s = generate_scene(0, index)
        seen[np.unique(s.label)] = True
        kinds.append(any(c in THINGS for c in s.classes))
    assert seen.all(), [NAMES[i] for i in np.flatnonzero(~seen)]
    assert 0.6 < np.mean(kinds) < 1.0  # most scenes have things, some have none


def test_class_table_vocabulary_and_palette():
    assert NUM_CLASSES >= 12 and len(STUFF) >= 6 and len(THINGS) >= 6
    assert vocabulary_text().splitlines() == list(NAMES)
    assert len(set(PALETTE)) == NUM_CLASSES
    rgb = colorize(np.array([[0, NUM_CLASSES - 1]]))
    assert tuple(rgb[0, 0]) == PALETTE[0] and tuple(rgb[0, 1]) == PALETTE[-1]


def test_committed_vocabulary_file_matches_the_class_table():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "conf" / "vocabularies" / "toyworld.txt"
    assert path.read_text() == vocabulary_text()
