"""Dense features from an OpenCLIP ViT: vanilla blocks 0..L-2, a replaced last block.

The model's own modules are used as they are (open_clip's `ResidualAttentionBlock` for every
block but the last), so the untouched part of the network computes exactly what open_clip
computes. The last block is re-implemented from its weights, read by name (`in_proj_weight`,
`in_proj_bias`, `out_proj`), following the chosen base method.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import MethodConfig
from pipeline.engine.attention import BASE_METHODS, Mix, Plugins, attention_map, gaussian_window
from pipeline.errors import UserError


class DenseViT(nn.Module):
    """Wraps `model.visual`; `trunk` runs the shared part once, `head` may run several times (SFR)."""

    def __init__(self, visual: nn.Module, method: MethodConfig):
        super().__init__()
        self.visual = visual
        self.blocks = visual.transformer.resblocks
        self.patch = int(visual.patch_size[0])
        self.base = BASE_METHODS[method.base]
        self.gaussian_std = method.gaussian_std
        depth = len(self.blocks)
        self.rcs_layers: tuple[int, ...] = ()
        if method.rcs.enabled:
            bad = [i for i in method.rcs.layers if not 0 <= i < depth - 1]
            if bad or not method.rcs.layers:
                raise UserError(f"method.rcs.layers {method.rcs.layers}: need 0-based blocks in 0..{depth - 2}")
            self.rcs_layers = tuple(sorted(set(method.rcs.layers)))
        self.rcs_mix = Mix(method.rcs.tau, method.rcs.lam)
        self.sfr_mix = Mix(method.sfr.tau, method.sfr.lam)
        self._compiled: Optional[Callable] = None  # `compiled_trunk`, made on first use

    def cast_matmul_weights(self, dtype: torch.dtype) -> None:
        """Store the weights of every matrix product (patch conv, qkv, out_proj, MLP, proj) in `dtype`.
        autocast caches casts only for weights that require grad: frozen float32 weights are cast
        again on every call. Autocast would feed these same rounded values to the same kernels, so
        the numbers do not change; LayerNorms, embeddings and the class token stay float32 (autocast
        runs layer_norm in float32 with the float32 parameters)."""
        v = self.visual
        v.conv1.to(dtype)
        for blk in self.blocks:
            blk.attn.in_proj_weight.data = blk.attn.in_proj_weight.data.to(dtype)
            if blk.attn.in_proj_bias is not None:
                blk.attn.in_proj_bias.data = blk.attn.in_proj_bias.data.to(dtype)
            blk.attn.out_proj.to(dtype)
            for layer in blk.mlp.modules():
                if isinstance(layer, nn.Linear):
                    layer.to(dtype)
        v.proj.data = v.proj.data.to(dtype)

    @property
    def num_heads(self) -> int:
        return self.blocks[-1].attn.num_heads

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch, width // self.patch

    def embed(self, images: Tensor) -> Tensor:
        """Patchify, class token, positional embeddings (interpolated as the reference does), ln_pre."""
        v = self.visual
        x = v.conv1(images)  # (B, D, gh, gw); pixels past a multiple of the patch are ignored
        b, d, gh, gw = x.shape
        x = x.reshape(b, d, gh * gw).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1)
        return v.ln_pre(x + self._positions(gh, gw).to(x.dtype))

    def _positions(self, gh: int, gw: int) -> Tensor:
        pos = self.visual.positional_embedding  # (1 + N0, D)
        if pos.shape[0] == gh * gw + 1:
            return pos
        return _interpolate_positions(pos, gh, gw)

    def trunk(self, images: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Blocks 0..L-2, vanilla; returns tokens (B, T, D) and the RCS attention (B, h, T, T).
        RCS blocks make their attention map explicit, as the reference computes them; the others
        use fused attention. Both are computed from the block's weights rather than by its own
        forward: under autocast open_clip's attention takes a slow path (see `block_fused`)."""
        x = self.embed(images)
        rcs_sum = None
        for i, blk in enumerate(self.blocks[:-1]):
            if i in self.rcs_layers:
                x, attn = block_with_attention(blk, x)
                rcs_sum = attn if rcs_sum is None else rcs_sum + attn
            else:
                x = block_fused(blk, x)
        rcs = rcs_sum / len(self.rcs_layers) if rcs_sum is not None else None
        return x, rcs

    def compiled_trunk(self) -> Callable[[Tensor], tuple[Tensor, Optional[Tensor]]]:
        """`trunk` through torch.compile, built once per module (`inference.compile_trunk`).

        CUDA: "max-autotune-no-cudagraphs": the gains to expect are fused element-wise work
        (LayerNorm, GELU, residual adds, RCS averaging) and GEMM tiles tuned to the shapes; CUDA
        graphs are left out because with post-processing no longer synchronising the host runs
        ahead of the GPU, so launch latency is already hidden, and graph outputs are overwritten
        by the next replay (a hazard for tokens held across the two heads). CPU: the default mode
        (autotuning there costs minutes of compile for nothing measurable).
        Shapes: dynamic=None, so torch specialises on the first batch size and makes the batch
        dimension symbolic at the second, instead of compiling once per crop count."""
        if self._compiled is None:
            device = next(self.parameters()).device
            mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None
            self._compiled = torch.compile(self.trunk, mode=mode, fullgraph=False)
        return self._compiled

    def head(self, x: Tensor, grid: tuple[int, int], rcs: Optional[Tensor], sfr: Optional[Tensor]) -> Tensor:
        """The replaced last block, ln_post and proj on every token: (B, T, D) -> (B, T, E)."""
        blk = self.blocks[-1]
        q, k, v = _qkv(blk, x)
        plugins = Plugins(
            sfr_prior=sfr, sfr_mix=self.sfr_mix if sfr is not None else None,
            rcs_attn=rcs, rcs_mix=self.rcs_mix if rcs is not None else None,
            window=self._window(grid, x.device, x.dtype) if self.base.uses_window else None,
        )
        attn = self.base.attention(q, k, plugins)  # (B, h, T, T)
        b, t, d = x.shape
        out = (attn.to(v.dtype) @ v).transpose(1, 2).reshape(b, t, d)
        out = blk.attn.out_proj(out)
        if self.base.residual:
            x = x + blk.ls_1(out)
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        else:
            x = out
        return self.visual.ln_post(x) @ self.visual.proj

    def _window(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
        return _cached_window(grid[0], grid[1], self.gaussian_std, str(device)).to(dtype)


def _qkv(blk: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, t, d = x.shape
    h = blk.attn.num_heads
    qkv = F.linear(blk.ln_1(x), blk.attn.in_proj_weight, blk.attn.in_proj_bias)
    qkv = qkv.reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, h, T, hd)
    return qkv[0], qkv[1], qkv[2]


def block_with_attention(blk: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One vanilla residual block with its attention probabilities made explicit: (B, T, D) -> x, (B, h, T, T).
    Equal to the block's own forward up to float rounding; computing the map alongside would run
    the block's projections and attention twice."""
    q, k, v = _qkv(blk, x)
    attn = attention_map(q, k)
    return _finish_block(blk, x, attn.to(v.dtype) @ v), attn


def block_fused(blk: nn.Module, x: Tensor) -> Tensor:
    """One vanilla residual block with scaled_dot_product_attention, batch-first throughout.
    open_clip's own forward goes through nn.MultiheadAttention, which under autocast leaves its fast
    path and projects a sequence-first view; with frozen weights matmul then expands the weight per
    token (12x slower for 6 crops of ViT-B/16 in bf16 on CPU)."""
    q, k, v = _qkv(blk, x)
    return _finish_block(blk, x, F.scaled_dot_product_attention(q, k, v))


def _finish_block(blk: nn.Module, x: Tensor, heads: Tensor) -> Tensor:
    """Merge the heads (B, h, T, hd), out_proj, residual, MLP with residual."""
    b, t, d = x.shape
    x = x + blk.ls_1(blk.attn.out_proj(heads.transpose(1, 2).reshape(b, t, d)))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


@functools.lru_cache(maxsize=32)
def _cached_window(gh: int, gw: int, std: float, device: str) -> Tensor:
    return gaussian_window(gh, gw, std).to(device)


def _interpolate_positions(pos: Tensor, gh: int, gw: int) -> Tensor:
    """Bicubic resize of the patch positions to (gh, gw), with the reference's `+0.1` scale factors
    (the factor, not the output size, sets the sampling grid, so it must be passed the same way)."""
    n0 = pos.shape[0] - 1
    side = int(round(n0**0.5))
    d = pos.shape[1]
    grid = pos[1:].reshape(1, side, side, d).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.float(), mode="bicubic", align_corners=False, recompute_scale_factor=False,
        scale_factor=((gh + 0.1) / side, (gw + 0.1) / side),
    )
    grid = grid.permute(0, 2, 3, 1).reshape(gh * gw, d).to(pos.dtype)
    return torch.cat([pos[:1], grid], dim=0)
