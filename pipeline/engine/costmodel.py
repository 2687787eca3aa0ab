"""FLOP count of labeling one image, to turn measured images/s into model FLOP/s utilisation.

Counts multiply-adds as 2 FLOPs, for the matrix work only (patch embedding, projections, attention
products, MLPs, text similarity, logit upsampling is ignored): it is what tensor cores execute, and
what a hardware peak in TFLOP/s refers to. Element-wise work (softmax, PAMR, SFR) is memory-bound
and is reported by the profile, not here.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Config
from pipeline.engine.windows import plan_crops

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


@dataclass(frozen=True)
class VitDims:
    width: int
    layers: int
    heads: int
    patch: int
    embed: int  # output (projection) dimension


def crop_flops(d: VitDims, h: int, w: int, queries: int, cfg: Config) -> dict[str, float]:
    n = (h // d.patch) * (w // d.patch)
    t = n + 1
    D = d.width
    block = 2 * t * (3 * D * D + D * D + 8 * D * D) + 2 * 2 * t * t * D  # qkv, out, MLP; scores and A.V
    # RCS blocks expose their attention maps without extra matrix work (dense_vit.block_with_attention).
    trunk = 2 * n * 3 * d.patch**2 * D + (d.layers - 1) * block
    base = cfg.method.base
    scores = 2 * (2 if base == "sclip" else 1) * t * t * D
    residual = base in ("vanilla", "sclip")
    head = 2 * t * 4 * D * D + scores + 2 * t * t * D + (2 * t * 8 * D * D if residual else 0)
    head += 2 * t * D * d.embed + 2 * n * d.embed * queries  # ln_post proj, cosine logits
    passes = 2 if cfg.method.sfr.enabled else 1
    return {"trunk": float(trunk), "last_block": float(passes * head)}


def image_flops(d: VitDims, height: int, width: int, queries: int, cfg: Config) -> float:
    """Total matrix FLOPs for one image of the given (already resized) size."""
    inf = cfg.inference
    crops = plan_crops(height, width, inf.slide_crop, inf.slide_stride)
    return sum(sum(crop_flops(d, *c.shape, queries, cfg).values()) for c in crops)


def dims_of(visual) -> VitDims:
    blocks = visual.transformer.resblocks
    return VitDims(
        width=int(visual.conv1.weight.shape[0]),
        layers=len(blocks),
        heads=int(blocks[-1].attn.num_heads),
        patch=int(visual.patch_size[0]),
        embed=int(visual.proj.shape[1]),
    )
