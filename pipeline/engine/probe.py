"""Device time of each engine stage on one batch of crops, for the GPU check and profiles.

Each stage runs alone, `repeats` times after a warm-up, and is timed with CUDA events on a GPU
(device time of its kernels, launch overhead included) or the wall clock on a CPU. Stages: the
ViT trunk, the first-pass head, the SFR prior, PAMR with each kernel, the last block, post-processing
of one image, and the device-to-host copy of a batch's masks (pageable vs pinned). The shares
tell where a GPU spends its time; the benchmark gives the end-to-end rates.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.engine.pamr import pamr
from pipeline.engine.windows import plan_crops

PAMR_KERNELS = ("sparse", "shifted", "stencil")


def device_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Mean milliseconds per call of `fn` after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - t0) / repeats


def crop_batch(seg: Any, images: Sequence[np.ndarray]) -> Tensor:
    """Every sliding-window crop of `images` (prepared as the engine does), of the first crop shape."""
    inf = seg.cfg.inference
    crops = []
    for img in images:
        x = seg.prepare(img)
        for c in plan_crops(x.shape[-2], x.shape[-1], inf.slide_crop, inf.slide_stride):
            crops.append(x[:, c.y1 : c.y2, c.x1 : c.x2])
    shape = crops[0].shape
    return torch.stack([c for c in crops if c.shape == shape])


@torch.no_grad()
def stage_times(seg: Any, images: Sequence[np.ndarray], repeats: int = 5,
                pamr_kernels: Sequence[str] = PAMR_KERNELS, compile_stencil: bool = True) -> dict[str, Any]:
    """Milliseconds per batch for each stage, plus shares of the engine's own schedule."""
    device = seg.device
    crops = crop_batch(seg, images)
    size = tuple(crops.shape[-2:])
    grid = seg.model.grid(*size)
    ms: dict[str, float] = {}
    with seg.autocast:
        x, rcs = seg.model.trunk(crops)
        ms["trunk"] = device_ms(lambda: seg.model.trunk(crops), device, repeats)
        first = seg._project(seg.model.head(x, grid, rcs, None), grid, size)
        ms["first_head"] = device_ms(lambda: seg._project(seg.model.head(x, grid, rcs, None), grid, size),
                                     device, repeats)
        prior = seg._sfr_prior(crops, first)
        ms["last_block"] = device_ms(lambda: seg._project(seg.model.head(x, grid, rcs, prior), grid, size),
                                     device, repeats)
    for kernel in pamr_kernels:
        fused = compile_stencil and kernel == "stencil"
        ms[f"pamr_{kernel}"] = device_ms(
            lambda k=kernel, f=fused: pamr(crops.float(), first, 10, (8, 16), k, compiled=f), device, repeats)
    ms["predict_batch"] = device_ms(lambda: seg.predict(list(images), return_probs=False), device, repeats)
    ms.update(_copy_ms(images[0].shape[:2], len(images), device, repeats))
    used_pamr = f"pamr_{_engine_kernel(seg)}"
    schedule = ["trunk", "first_head", "last_block"] + ([used_pamr] if used_pamr in ms else [])
    total = sum(ms[k] for k in schedule) or 1.0
    return {
        "crops": int(crops.shape[0]), "crop_size": list(size), "images": len(images), "repeats": repeats,
        "device": str(device), "precision": seg.cfg.precision, "queries": int(len(seg.text)),
        "ms": {k: round(v, 4) for k, v in ms.items()},
        "engine_pamr_kernel": used_pamr,
        "shares_of_crop_work": {k: round(ms[k] / total, 4) for k in schedule},
    }


def _engine_kernel(seg: Any) -> str:
    kernel = getattr(seg, "pamr_kernel", "auto")
    if kernel == "auto":
        return "stencil" if seg.device.type == "cuda" else "sparse"
    return kernel


def _copy_ms(hw: tuple[int, int], batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    """A batch's labels and confidences to the host: int64 + float32 pageable (12 bytes a pixel,
    as before) against uint8 + uint8 into pinned memory (2 bytes a pixel)."""
    if device.type != "cuda":
        return {}
    h, w = hw
    pred = torch.zeros(batch, h, w, dtype=torch.int64, device=device)
    conf = torch.zeros(batch, h, w, dtype=torch.float32, device=device)
    small = torch.zeros(2, batch, h, w, dtype=torch.uint8, device=device)
    pinned = torch.empty(small.shape, dtype=torch.uint8, pin_memory=True)
    return {
        "copy_int64_float32_pageable": device_ms(lambda: (pred.cpu(), conf.cpu()), device, repeats),
        "copy_uint8_pinned": device_ms(lambda: pinned.copy_(small, non_blocking=True), device, repeats),
    }
