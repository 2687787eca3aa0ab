"""Vectorised PAMR against a direct convolution-kernel formulation of the published algorithm."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.engine.pamr import pamr


def _kernels(with_centre: bool, sign_centre: float):
    positions = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    if with_centre:
        positions = positions[:4] + [(1, 1)] + positions[4:]
    k = torch.zeros(len(positions), 1, 3, 3)
    for n, (r, c) in enumerate(positions):
        k[n, 0, r, c] = 1.0 if with_centre or sign_centre == 0 else -1.0
        if sign_centre and not with_centre:
            k[n, 0, 1, 1] = sign_centre
    return k


def _neigh(x, kernel, dilations):
    b, c, h, w = x.shape
    flat = x.reshape(b * c, 1, h, w)
    outs = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
    return torch.cat(outs, 1).reshape(b, c, -1, h, w)


def _reference_pamr(image, mask, iters, dilations):
    std = _neigh(image, _kernels(True, 0), dilations).std(2, keepdim=True)
    aff = -_neigh(image, _kernels(False, 1.0), dilations).abs() / (1e-8 + 0.1 * std)
    aff = F.softmax(aff.mean(1, keepdim=True), 2)
    for _ in range(iters):
        mask = (_neigh(mask, _kernels(False, 0), dilations) * aff).sum(2)
    return mask


def test_matches_kernel_formulation():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 40, 37, generator=g)
    logits = torch.randn(2, 5, 40, 37, generator=g)
    torch.testing.assert_close(pamr(image, logits, 4, (2, 5)), _reference_pamr(image, logits, 4, (2, 5)),
                               atol=1e-5, rtol=1e-5)


def test_zero_iterations_is_identity():
    logits = torch.randn(1, 2, 8, 8)
    assert pamr(torch.randn(1, 3, 8, 8), logits, 0) is logits


def test_compiled_propagation_matches_eager():
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, 24, 20, generator=g)
    logits = torch.randn(1, 3, 24, 20, generator=g)
    torch.testing.assert_close(pamr(image, logits, 3, (2, 4), "shifted", compiled=True), pamr(image, logits, 3, (2, 4)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch,size", [(1, (33, 29)), (3, (20, 48))])
def test_sparse_and_shifted_kernels_agree(batch, size):
    g = torch.Generator().manual_seed(2)
    image = torch.randn(batch, 3, *size, generator=g)
    logits = torch.randn(batch, 6, *size, generator=g)
    sparse = pamr(image, logits, 6, (3, 7), "sparse")
    shifted = pamr(image, logits, 6, (3, 7), "shifted")
    assert sparse.shape == logits.shape
    assert not torch.allclose(sparse, logits, atol=1e-3)  # the refinement did something
    torch.testing.assert_close(sparse, shifted, atol=1e-5, rtol=1e-5)


def test_sparse_kernel_keeps_float32_under_autocast():
    image, logits = torch.randn(1, 3, 16, 16), torch.randn(1, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pamr(image, logits, 2, (1, 2), "sparse")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pamr(image, logits, 2, (1, 2), "shifted"), atol=1e-5, rtol=1e-5)


def test_sparse_pattern_is_canonical_csr():
    """cuSPARSE needs sorted, distinct columns per row; clamped borders produce duplicates to merge."""
    from pipeline.engine.pamr import _pattern

    pat = _pattern(9, 7, (2, 5), "cpu").tiled(2)
    rows, cols = pat.rows.long(), pat.columns.long()
    assert rows[0] == 0 and rows[-1] == cols.numel() and len(rows) == 2 * 9 * 7 + 1
    lengths = rows[1:] - rows[:-1]
    assert lengths.max() == 16 and lengths.min() < 16  # interior rows keep 16; border rows merged
    for r in range(len(rows) - 1):
        row = cols[rows[r] : rows[r + 1]]
        assert (row[1:] > row[:-1]).all()
        assert (row // (9 * 7) == r // (9 * 7)).all()  # block-diagonal: no mixing across the batch
    assert len(pat.first) == cols.numel()
    used = pat.first.tolist()
    for src, dst in pat.merges:
        assert len(set(dst.tolist())) == len(dst)
        used += src.tolist()
    assert sorted(used) == list(range(2 * 9 * 7 * 16))  # every weight lands in exactly one entry


def test_auto_kernel_builds_the_sparse_pattern_only_for_repeated_shapes():
    from pipeline.engine.pamr import _resolve

    size, dil, cpu = (37, 41), (1, 2), torch.device("cpu")
    assert _resolve("auto", size, dil, cpu) == "shifted"  # first sight: a one-off size never pays the build
    assert _resolve("auto", size, dil, cpu) == "sparse"
    assert _resolve("shifted", size, dil, cpu) == "shifted" and _resolve("sparse", (5, 5), dil, cpu) == "sparse"


def _stencil_case(seed: int, batch: int, size: tuple[int, int]):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=g), torch.randn(batch, 5, *size, generator=g)


def test_stencil_kernel_equals_sparse_eager():
    image, logits = _stencil_case(4, 2, (37, 30))
    sparse = pamr(image, logits, 10, (8, 16), "sparse")
    stencil = pamr(image, logits, 10, (8, 16), "stencil")
    assert not torch.allclose(sparse, logits, atol=1e-3)
    assert (stencil - sparse).abs().max() <= 1e-5


@pytest.mark.slow
def test_compiled_stencil_equals_sparse_within_1e5():
    """What CUDA runs (`auto` picks the compiled stencil there), compiled here by the CPU backend."""
    image, logits = _stencil_case(3, 2, (40, 36))
    compiled = pamr(image, logits, 10, (8, 16), "stencil", compiled=True)
    sparse = pamr(image, logits, 10, (8, 16), "sparse")
    assert compiled.dtype == torch.float32 and compiled.shape == logits.shape
    assert (compiled - sparse).abs().max() <= 1e-5


def test_auto_picks_stencil_on_cuda_only():
    from pipeline.engine.pamr import _resolve

    assert _resolve("auto", (224, 224), (8, 16), torch.device("cuda")) == "stencil"
    assert _resolve("auto", (11, 13), (8, 16), torch.device("cpu")) in ("sparse", "shifted")
