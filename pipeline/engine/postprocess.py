"""Post-processing in bands of output rows: query logits (Q, h, w) at the engine's resolution ->
label map and uint8 confidence at the image's own size.

The untiled form (`Segmenter.class_probs` + `_finish`) upsamples every query's logits to the full
image before the softmax: four (Q, H, W) float32 tensors, 16 GB each for a 24 MP photo and 171
classes. Here every step runs on one band of output rows at a time, on the engine's device, and
only the label map (label dtype) and the uint8 confidence of each band cross to the host, so peak
memory is O(Q x band) and time is linear in pixels.

Exactness. Each output pixel sees the same arithmetic as in the untiled form:
- bilinear upsampling (half-pixel centres, `align_corners=False`) is separable; the width pass is
  torch's own kernel on the source rows the band needs (a height-identity resize, which copies the
  width-interpolated rows exactly), the height pass blends two of those rows with torch's source
  index formula (`scale * (y + 0.5) - 0.5`, clamped at 0, computed with one rounding as the fused
  multiply-add of the CPU kernel). Against `F.interpolate` this is equal bit for bit in almost every
  case measured and otherwise within one float32 rounding (2.4e-7 on unit-scale values), and the
  band form is the same for any band height (tests);
- softmax, synonym max, `prob_thd`, the renormalisation and the gather are per pixel;
- the final PAMR (`inference.pamr_steps` > 0) moves information `max(dilations)` pixels per
  iteration, so a band is refined together with a halo of `steps * max(dilations)` rows on each
  side (replicate padding happens only at the true image border, as in the untiled form) and
  only its centre rows are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.engine.host_copy import PackedBuffers

# Output pixels per band: 64 Ki pixels x 171 classes x 4 bytes = 45 MB per (C, band) tensor; small
# enough for any host, big enough that per-band overheads stay under ~5% on CPU (measured).
DEFAULT_BAND_PIXELS = 1 << 16

Refine = Callable[[Tensor, Tensor], Tensor]  # (1, 3, n, W) image band, (1, Q, n, W) logits -> refined


@dataclass(frozen=True)
class PostSettings:
    logit_scale: float
    prob_thd: float
    min_confidence: float  # labels.min_confidence: pixels below it are reported in `ignored`
    band_pixels: int = DEFAULT_BAND_PIXELS
    pamr_halo: int = 0  # rows of context each side of a band for the final PAMR (0 = no PAMR)


@dataclass
class BandOutputs:
    """What crosses to the host for one image: <= 2 bytes per pixel plus the label dtype."""

    # On CUDA the first four are `host_copy.PendingArray`s (ndarray-like; contents on first read;
    # `mean_confidence` a 0-d float64 one, `float()` gives the value).
    pred: np.ndarray  # (H, W) uint8 (<= 256 classes) or uint16 class index
    confidence: np.ndarray  # (H, W) uint8 = round(255 * p)
    mean_confidence: float  # mean of the float confidence (float64 sum over bands)
    ignored: Optional[np.ndarray]  # (H, W) bool, confidence < min_confidence; None when that is 0
    probs: Optional[np.ndarray]  # (C, H, W) float32, only when asked for


@dataclass(frozen=True)
class _Axis:
    """Linear interpolation along one axis for output indices [start, stop)."""

    lo: int  # first source index needed
    hi: int  # one past the last
    i0: Tensor  # (n,) source index below, relative to lo
    i1: Tensor  # (n,) source index above, relative to lo
    l0: Tensor  # (n,) weight of i0
    l1: Tensor  # (n,) weight of i1


def _axis(n_in: int, n_out: int, start: int, stop: int, device: torch.device) -> _Axis:
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)  # torch: (float) input_size / output_size
    centres = np.arange(start, stop, dtype=f32) + f32(0.5)
    # scale * (y + 0.5) - 0.5 with a single rounding (the CPU kernel's fused multiply-add): the
    # float32 x float32 product is exact in float64.
    src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(f32)
    src = np.maximum(src, f32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    l1 = np.clip(src - i0.astype(f32), f32(0), f32(1)).astype(f32)
    l0 = (f32(1) - l1).astype(f32)
    lo, hi = int(i0.min()), int(i1.max()) + 1
    # non_blocking: from pageable memory CUDA stages the bytes before returning, without the
    # stream synchronisation a blocking copy does (which would stall every band on a GPU)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)  # noqa: E731
    return _Axis(lo, hi, as_t(i0 - lo), as_t(i1 - lo), as_t(l0), as_t(l1))


def upsample_rows(x: Tensor, out_size: tuple[int, int], start: int, stop: int) -> Tensor:
    """Rows [start, stop) of `F.interpolate(x[None], out_size, bilinear, align_corners=False)[0]`.
    x: (C, h, w) float -> (C, stop - start, W)."""
    (h, w), (height, width) = x.shape[-2:], out_size
    if h == height:
        rows = x[:, start:stop]
        if w != width:
            rows = F.interpolate(rows[None], size=(stop - start, width), mode="bilinear", align_corners=False)[0]
        return rows
    ax = _axis(h, height, start, stop, x.device)
    src = x[:, ax.lo : ax.hi]
    if w != width:
        src = F.interpolate(src[None], size=(ax.hi - ax.lo, width), mode="bilinear", align_corners=False)[0]
    l0, l1 = ax.l0.view(1, -1, 1), ax.l1.view(1, -1, 1)
    # index_select, not src[:, i]: advanced indexing is 5x slower on CPU for the same rows
    return torch.addcmul(src.index_select(1, ax.i1) * l1, src.index_select(1, ax.i0), l0)  # (C, n, W)


def band_rows(height: int, width: int, band_pixels: int, halo: int) -> int:
    """Output rows per band: `band_pixels` worth, and with a PAMR halo at least 4 halos so that
    refining the context costs at most 1.5x the band itself."""
    rows = max(1, band_pixels // max(1, width))
    if halo:
        rows = max(rows, 4 * halo)
    return min(rows, height)


class BandedPost:
    """Banded post-processing for one Segmenter (its queries, classes and settings)."""

    def __init__(self, query_class: Tensor, num_classes: int, settings: PostSettings,
                 refine: Optional[Refine] = None):
        self.query_class = query_class  # (Q,) class of each query, on the device
        self.num_classes = num_classes
        self.s = settings
        self.refine = refine
        # The deferred copy's transport (`host_copy.cuda_copy` when None); tests set a fake to run
        # the CUDA path's logic on CPU tensors.
        self.copier: Optional[Callable] = None
        if settings.pamr_halo and refine is None:
            raise ValueError("a PAMR halo needs a refine function")

    def label_dtype(self) -> tuple[torch.dtype, type]:
        return (torch.uint8, np.uint8) if self.num_classes <= 256 else (torch.uint16, np.uint16)

    def __call__(self, logits: Tensor, out_size: tuple[int, int], image: Optional[Tensor] = None,
                 return_probs: bool = False) -> BandOutputs:
        """logits (Q, h, w) and, for the final PAMR, the prepared image (3, h, w) -> host outputs.
        On CUDA the outputs are `PendingArray`s filled by one non-blocking copy (`host_copy`)."""
        height, width = out_size
        rows = band_rows(height, width, self.s.band_pixels, self.s.pamr_halo)
        deferred = logits.is_cuda or self.copier is not None
        sink = (_DeviceSink if deferred else _HostSink)(out_size, self.label_dtype()[0], self.s.min_confidence > 0,
                                                        logits.device)
        probs = np.empty((self.num_classes, height, width), np.float32) if return_probs else None
        for start in range(0, height, rows):
            stop = min(start + rows, height)
            band_probs = self.class_probs(logits, out_size, start, stop, image)
            p, c = self.finish(band_probs)
            sink.put(start, stop, p, c, self.s.min_confidence)
            if probs is not None:  # opt-in and float32 (C x 4 bytes a pixel): copied per band, blocking
                probs[:, start:stop] = (band_probs / band_probs.sum(dim=0, keepdim=True)).cpu().numpy()
        return sink.outputs(probs, self.copier)

    def class_probs(self, logits: Tensor, out_size: tuple[int, int], start: int, stop: int,
                    image: Optional[Tensor]) -> Tensor:
        """Class probabilities (C, stop - start, W) of output rows [start, stop)."""
        halo = self.s.pamr_halo
        if halo:
            a, b = max(0, start - halo), min(out_size[0], stop + halo)
            lg = upsample_rows(logits.float(), out_size, a, b)[None]
            img = upsample_rows(image.float(), out_size, a, b)[None]
            lg = self.refine(img, lg)[0, :, start - a : stop - a]
        else:
            lg = upsample_rows(logits.float(), out_size, start, stop)
        probs = torch.softmax(lg * self.s.logit_scale, dim=0)  # (Q, n, W)
        if len(self.query_class) != self.num_classes:
            index = self.query_class.view(-1, 1, 1).expand_as(probs)
            by_class = probs.new_zeros((self.num_classes,) + probs.shape[1:])
            probs = by_class.scatter_reduce_(0, index, probs, "amax", include_self=False)
        return probs

    def finish(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        """(C, n, W) class probabilities -> pred (n, W) long and float confidence, as `_finish`."""
        top, pred = probs.max(dim=0)
        pred = torch.where(top < self.s.prob_thd, torch.zeros_like(pred), pred)
        total = probs.sum(dim=0, keepdim=True)  # the synonym max leaves rows that no longer sum to 1
        conf = probs.gather(0, pred[None])[0] / total[0]
        return pred, conf


class _HostSink:
    """Band results straight into host arrays (the CPU path: `.cpu()` there is free, one copy each)."""

    def __init__(self, out_size: tuple[int, int], label_dtype: torch.dtype, with_ignored: bool,
                 device: torch.device):
        self.t_dtype = label_dtype
        self.pred = np.empty(out_size, _NP_LABEL[label_dtype])
        self.conf = np.empty(out_size, np.uint8)
        self.ignored = np.empty(out_size, bool) if with_ignored else None
        self.total = 0.0
        self.pixels = out_size[0] * out_size[1]

    def put(self, start: int, stop: int, pred: Tensor, conf: Tensor, min_confidence: float) -> None:
        self.total += float(conf.sum(dtype=torch.float64))
        self.pred[start:stop] = pred.to(self.t_dtype).cpu().numpy()
        self.conf[start:stop] = quantise(conf).cpu().numpy()
        if self.ignored is not None:
            self.ignored[start:stop] = (conf < min_confidence).cpu().numpy()

    def outputs(self, probs: Optional[np.ndarray], copier=None) -> BandOutputs:
        return BandOutputs(self.pred, self.conf, self.total / max(1, self.pixels), self.ignored, probs)


class _DeviceSink:
    """Band results into one device buffer per image, then one non-blocking copy to pinned memory:
    no band waits for the device (a blocking `.cpu()` per band, and `float()` of the confidence
    sum, each stalled the inference thread until the GPU had caught up)."""

    def __init__(self, out_size: tuple[int, int], label_dtype: torch.dtype, with_ignored: bool,
                 device: torch.device):
        parts = [("mean", (), torch.float64), ("pred", out_size, label_dtype), ("conf", out_size, torch.uint8)]
        if with_ignored:
            parts.append(("ignored", out_size, torch.bool))
        self.buffers = PackedBuffers(parts, device)
        self.parts = self.buffers.views
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.pixels = out_size[0] * out_size[1]

    def put(self, start: int, stop: int, pred: Tensor, conf: Tensor, min_confidence: float) -> None:
        # float64 additions in the host sink's order: the same sum, bit for bit
        self.total += conf.sum(dtype=torch.float64)
        self.parts["pred"][start:stop] = pred
        self.parts["conf"][start:stop] = quantise(conf)
        if "ignored" in self.parts:
            self.parts["ignored"][start:stop] = conf < min_confidence

    def outputs(self, probs: Optional[np.ndarray], copier=None) -> BandOutputs:
        self.parts["mean"].copy_(self.total / max(1, self.pixels))  # IEEE division, as on the host
        host = self.buffers.send(copier)
        return BandOutputs(host["pred"], host["conf"], host["mean"], host.get("ignored"), probs)


_NP_LABEL = {torch.uint8: np.uint8, torch.uint16: np.uint16}


def quantise(conf: Tensor) -> Tensor:
    """Float probability -> uint8 round(255 p), half to even, as `np.rint` in the mask encoder."""
    return torch.round(conf.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
