"""The model layer leaves open_clip's own computation untouched where ResCLIP does not change it."""
import torch

from pipeline.config import MethodConfig, RCSConfig, SFRConfig
from pipeline.engine.dense_vit import DenseViT
from pipeline.engine.loading import load_clip

from tests.engine.golden_data import golden_config


def _clip():
    return load_clip(golden_config().model)


def _reference_trunk(visual, images):
    x = visual._embeds(images)
    for blk in visual.transformer.resblocks[:-1]:
        x = blk(x)
    return x


def _trunk_against_open_clip(rcs_enabled: bool):
    clip = _clip()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    dense = DenseViT(clip.model.visual, MethodConfig(rcs=RCSConfig(enabled=rcs_enabled)))
    with torch.no_grad():
        ours, rcs = dense.trunk(images)
        theirs = _reference_trunk(clip.model.visual, images)
    return dense, ours, theirs, rcs


def test_trunk_without_rcs_equals_open_clip():
    _, ours, theirs, rcs = _trunk_against_open_clip(rcs_enabled=False)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)  # our fused blocks vs open_clip's forward
    assert rcs is None


def test_rcs_blocks_with_explicit_attention_equal_open_clip():
    dense, ours, theirs, rcs = _trunk_against_open_clip(rcs_enabled=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)  # explicit vs fused attention: rounding only
    assert rcs.shape == (2, dense.num_heads, 197, 197)
    torch.testing.assert_close(rcs.sum(-1), torch.ones(2, dense.num_heads, 197))


def test_vanilla_head_equals_open_clip_forward():
    clip = _clip()
    visual = clip.model.visual
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    method = MethodConfig(base="vanilla", rcs=RCSConfig(enabled=False), sfr=SFRConfig(enabled=False))
    dense = DenseViT(visual, method)
    with torch.no_grad():
        x, rcs = dense.trunk(images)
        ours = dense.head(x, (14, 14), rcs, None)
        full = visual.transformer.resblocks[-1](x)
        theirs = visual.ln_post(full) @ visual.proj
        pooled = clip.model.encode_image(images)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours[:, 0], pooled, atol=2e-5, rtol=1e-4)


def test_positional_embeddings_interpolate_for_other_grids():
    dense = DenseViT(_clip().model.visual, MethodConfig())
    pos = dense._positions(14, 21)
    assert pos.shape == (1 + 14 * 21, 128)
    assert torch.equal(pos[0], dense.visual.positional_embedding[0])  # class token position untouched
    assert torch.equal(dense._positions(14, 14), dense.visual.positional_embedding)
