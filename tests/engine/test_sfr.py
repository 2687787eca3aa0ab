"""SFR pieces against direct per-pair implementations of the golden README's description."""
import math

import numpy as np
import pytest
import torch

from pipeline.engine.sfr import blur_rows, grid_geometry, path_points, patch_majority, pixel_labels, same_label_matrix, sfr_prior


def _naive_same_label(labels: np.ndarray) -> np.ndarray:
    gh, gw = labels.shape
    coords = [(r, c) for r in range(gh) for c in range(gw)]
    m = max(max(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in coords for b in coords)
    t = np.linspace(0, 1, m + 1, dtype=np.float32)
    out = np.zeros((len(coords), len(coords)), dtype=np.float32)
    for i, (r0, c0) in enumerate(coords):
        for j, (r1, c1) in enumerate(coords):
            if labels[r0, c0] != labels[r1, c1]:
                continue
            steps = max(abs(r1 - r0), abs(c1 - c0))
            rows = np.round(np.float32(r0) * (1 - t) + np.float32(r1) * t).astype(int)[: steps + 1]
            cols = np.round(np.float32(c0) * (1 - t) + np.float32(c1) * t).astype(int)[: steps + 1]
            ok = all(labels[r, c] == labels[r0, c0] for r, c in zip(rows, cols))
            out[i, j] = 1.0 if ok else math.exp(-steps / m)
    return out


def test_path_check_matches_per_pair_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(5, 7))
    ours = same_label_matrix(torch.from_numpy(labels)[None], delete_same_entity=True)[0]
    np.testing.assert_allclose(ours.numpy(), _naive_same_label(labels), rtol=1e-6)


def test_without_path_check_is_plain_equality():
    labels = torch.tensor([[[0, 1], [1, 1]]])
    same = same_label_matrix(labels, delete_same_entity=False)[0]
    assert same.tolist() == [[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]


def test_geometry_is_cached_per_grid():
    assert grid_geometry(3, 4) is grid_geometry(3, 4)
    geo = grid_geometry(3, 4)
    assert geo.path_bits.shape == (1, 12, 12)
    assert float(geo.decay[0, 11]) == pytest.approx(math.exp(-3 / 3), rel=1e-6)


def _looped_bits(gh, gw):
    """The word-by-word, point-by-point OR that grid_geometry's scatter-add replaced."""
    pts = path_points(gh, gw)
    n, words = gh * gw, (gh * gw + 63) // 64
    bits = torch.zeros(words, n, n, dtype=torch.int64)
    for w in range(words):
        for k in range(pts.path.shape[-1]):
            p = pts.path[:, :, k]
            bits[w] |= torch.where(p // 64 == w, torch.ones((), dtype=torch.int64) << (p % 64), 0)
    return bits


@pytest.mark.parametrize("grid", [(1, 1), (3, 4), (8, 8), (7, 11), (14, 14), (5, 30)])
def test_geometry_bits_equal_the_looped_or(grid):
    geo = grid_geometry(*grid)
    assert torch.equal(geo.path_bits, _looped_bits(*grid))  # includes grids with bit 63 set (N > 64)


def test_blur_rows_normalises_and_stays_non_negative():
    m = torch.rand(2, 30, 30)
    out = blur_rows(m, std=2.0)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 30))
    assert (out >= 0).all()


def test_prior_has_zero_class_token_and_unit_peak():
    labels = torch.randint(0, 4, (3, 6, 5))
    prior = sfr_prior(labels, gaussian_std=5.0, delete_same_entity=True)
    assert prior.shape == (3, 1, 31, 31) and prior.dtype == torch.float16
    assert (prior[:, :, 0, :] == 0).all() and (prior[:, :, :, 0] == 0).all()
    torch.testing.assert_close(prior.float().amax(dim=(-1, -2)).flatten(), torch.ones(3))


def test_patch_majority_and_threshold_fallback():
    probs = torch.zeros(1, 3, 4, 4)
    probs[0, 2, :, :2] = 0.9  # left half: query 2, confident
    probs[0, 1, :, 2:] = 0.2  # right half: query 1 but below the threshold -> query 0
    labels = pixel_labels(probs, temp_thd=0.25)
    assert labels[0, :, :2].unique().tolist() == [2] and labels[0, :, 2:].unique().tolist() == [0]
    majority = patch_majority(labels, patch=2, num_labels=3)
    assert majority.tolist() == [[[2, 0], [2, 0]]]


def test_patch_majority_breaks_ties_like_torch_mode():
    from pipeline.engine.reference_path import mode_majority

    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 4, (3, 18, 22), generator=g)  # 2x2 patches of 4 labels: many ties
    counted = patch_majority(labels, patch=2, num_labels=4)
    assert counted.shape == (3, 9, 11)  # the partial last column is dropped
    assert torch.equal(counted, mode_majority(labels, patch=2))
    ties = labels[:, :2, :2].reshape(3, 4)
    assert torch.equal(counted[:, 0, 0], torch.mode(ties, dim=-1).values)


@pytest.mark.parametrize("grid", [(5, 7), (9, 13)])  # 9 x 13 = 117 patches: two bit words
def test_bit_set_path_check_equals_gathered_points(grid):
    from pipeline.engine.reference_path import gathered_path_check

    g = torch.Generator().manual_seed(sum(grid))
    labels = torch.randint(0, 3, (2, *grid), generator=g)
    torch.testing.assert_close(same_label_matrix(labels, delete_same_entity=True), gathered_path_check(labels))


def test_pack_bits_sets_one_bit_per_true_entry():
    from pipeline.engine.sfr import pack_bits

    mask = torch.zeros(2, 130, dtype=torch.bool)
    mask[0, [0, 63, 64, 129]] = True
    words = pack_bits(mask)
    assert words.shape == (2, 3)
    assert words[0].tolist() == [1 | (1 << 63) - (1 << 64), 1, 2]  # bit 63 is the sign bit of int64
    assert words[1].tolist() == [0, 0, 0]


def test_blur_is_float32_inside_a_low_precision_autocast():
    # crop_logits runs SFR inside bf16/fp16 autocast, which casts conv1d down; the reference blurs
    # in float32 and stores float16 only at the end, so the prior must not depend on the autocast.
    labels = torch.randint(0, 5, (2, 6, 7), generator=torch.Generator().manual_seed(0))
    plain = sfr_prior(labels, 3.0, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sfr_prior(labels, 3.0, True)
        assert blur_rows(torch.rand(1, 9, 9), 2.0).dtype == torch.float32
    assert inside.dtype == torch.float16 and torch.equal(inside, plain)
