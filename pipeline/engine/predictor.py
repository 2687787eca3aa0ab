"""Segmenter: images in, per-pixel class probabilities out.

Owns preprocessing (short-side resize, normalisation), the vocabulary's text features, sliding
windows, the SFR two-pass schedule and post-processing. Every crop of every image in one call is
batched through the ViT together (grouped by crop shape), so images of different sizes mix freely.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.config import Config, InferenceConfig
from pipeline.engine.dense_vit import DenseViT
from pipeline.engine.loading import LoadedClip, load_clip
from pipeline.engine.pamr import pamr
from pipeline.engine.postprocess import BandedPost, PostSettings
from pipeline.engine.sfr import patch_majority, pixel_labels, sfr_prior
from pipeline.engine.text import encode_queries
from pipeline.engine.timing import SectionTimer
from pipeline.engine.windows import Crop, plan_crops
from pipeline.errors import UserError
from pipeline.io.layout import ErrorKind
from pipeline.io.masks import stored_size
from pipeline.io.records import SampleError
from pipeline.vocabulary import Vocabulary, load_templates, load_vocabulary

log = logging.getLogger(__name__)

SFR_PAMR_STEPS = 10  # the reference refines the first-pass segmentation with 10 PAMR iterations
PAMR_DILATIONS = (8, 16)


class ImageTooSmall(SampleError, ValueError):
    """The image has no full patch after resizing: a `too_small` row in `run` (data, not the engine)."""

    def __init__(self, message: str):
        super().__init__(ErrorKind.TOO_SMALL, message)


@dataclass
class Segmentation:
    pred: np.ndarray  # (H, W) class index: uint8 up to 256 classes, else uint16 (other engines: any int)
    # (H, W) probability of `pred`: uint8 round(255 p) from the Segmenter (what crosses from its
    # device), float32 from engines that keep floats (the student)
    confidence: np.ndarray
    probs: Optional[np.ndarray] = None  # float32 (C, H, W), when asked for
    mean_confidence: Optional[float] = None  # of the float confidence, when `confidence` is uint8
    ignored: Optional[np.ndarray] = None  # (H, W) bool: confidence < labels.min_confidence (None: none)


@contextlib.contextmanager
def exact_float32():
    """TF32 off for matmuls and cuDNN inside (the previous settings restored after): the text
    features are cached on disk by checkpoint, words and templates only, so they must be the float32
    ones whatever `inference.tf32` and the device (TF32 would also leak them into CPU runs)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here; use device=cpu or auto")
    return device


class Segmenter:
    def __init__(self, clip: LoadedClip, vocabulary: Vocabulary, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.vocabulary = vocabulary
        self.model_identity = clip.identity
        self.model = DenseViT(clip.model.visual, cfg.method).to(device).eval()
        self.precision = resolve_precision(cfg.precision, device)
        self.autocast = _autocast(device, self.precision)
        self.mean = torch.tensor(clip.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(clip.image_std, device=device).view(1, 3, 1, 1)
        ident = clip.identity
        # Disk cache key: the checkpoint's hash, or its tag; random weights are never cached.
        model_key = ident["checkpoint_sha256"] or (None if ident["pretrained"] == "random"
                                                   else f"{ident['name']}/{ident['pretrained']}")
        templates = load_templates(cfg.vocabulary.templates)
        self.template_texts = [t("{}") for t in templates]  # what the labels were made with (pipeline.identity)
        clip.model.to(device)
        with exact_float32():  # the cached features are the same on every device and TF32 setting
            self.text = encode_queries(clip.model, vocabulary.queries, templates, model_key, device)  # (Q, E)
        if device.type == "cuda":  # TF32 for the image side's float32 matmuls (process-wide, as torch sets it)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.inference.tf32
        self.query_class = torch.tensor(vocabulary.query_class, device=device)
        clip.model.transformer.to("cpu")  # the text tower is not needed any more: free device memory
        if self.precision != "float32":  # once, instead of autocast re-casting frozen weights every call
            self.model.cast_matmul_weights(_DTYPES[self.precision])
        self.timer = SectionTimer(enabled=False, device=device)  # switched on by profiles and `bench`
        # SFR's PAMR and prior are memory-bound: on a CPU one crop at a time stays in cache (25%
        # faster for a batch of 8 images than 12 crops at once); a GPU wants the whole batch.
        self._sfr_chunk = 1 if device.type == "cpu" else 1 << 30
        self.pamr_kernel = _pamr_kernel(cfg.inference, device)
        inf = cfg.inference
        settings = PostSettings(inf.logit_scale, inf.prob_thd, cfg.labels.min_confidence, inf.post_band_pixels,
                                pamr_halo=inf.pamr_steps * max(PAMR_DILATIONS) if inf.pamr_steps > 0 else 0)
        self.post = BandedPost(self.query_class, self.num_classes, settings,
                               refine=lambda img, lg: self._pamr(img, lg, inf.pamr_steps))

    @classmethod
    def from_config(cls, cfg: Config) -> "Segmenter":
        device = resolve_device(cfg.device)
        return cls(load_clip(cfg.model), load_vocabulary(cfg.vocabulary), cfg, device)

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def patch_size(self) -> int:
        return self.model.patch

    @property
    def batches_by_shape(self) -> bool:
        """Whole-image mode: crops batch by exact shape, so images of one `inference_size` run
        together (sliding windows are 224x224 whatever the image: any images batch together)."""
        return self.cfg.inference.slide_crop <= 0

    # The stage may ask for outputs at the stored size (labels.max_side) through `max_side`.
    labels_at_max_side = True

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], return_probs: bool = True,
                out_sizes: Optional[Sequence[tuple[int, int]]] = None, max_side: int = 0) -> list[Segmentation]:
        """uint8 RGB arrays (H, W, 3) of any sizes -> one Segmentation each, at the input size, or
        at `out_sizes[i]` (H, W): the full size of an image decoded smaller (io.jpeg_draft), which
        is then inferred at the size the full image would have been. With `max_side`, the outputs
        are post-processed at that size's stored size (`io.masks.stored_size`: long side at most
        `max_side`), still inferred at the full size's inference size.
        Post-processing runs in bands of output rows (`postprocess`): memory O(classes x band)."""
        sizes = [tuple(s) for s in out_sizes] if out_sizes is not None else [img.shape[:2] for img in images]
        if len(sizes) != len(images):
            raise ValueError(f"{len(sizes)} output sizes for {len(images)} images")
        with self.timer.section("preprocess"):
            prepared = [self.prepare(img, size) for img, size in zip(images, sizes)]
        logits = self.logits(prepared)
        outs = []
        with self.timer.section("postprocess"):
            for size, x, lg in zip([stored_size(*s, max_side) for s in sizes], prepared, logits):
                # The final PAMR sees the prepared image upsampled to `size`, drafted or not.
                band = self.post(lg, size, x if self.cfg.inference.pamr_steps > 0 else None, return_probs)
                outs.append(Segmentation(pred=band.pred, confidence=band.confidence, probs=band.probs,
                                         mean_confidence=band.mean_confidence, ignored=band.ignored))
        return outs

    def inference_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) an image of (height, width) is inferred at (io.jpeg_draft decodes to no less)."""
        return _resized(height, width, self.cfg.inference.short_side, self.cfg.inference.long_side)

    def prepare(self, image: np.ndarray, full_size: Optional[tuple[int, int]] = None) -> Tensor:
        """uint8 (H, W, 3) -> normalised float (3, h, w) on the device, resized to the configured
        short side of `full_size` (H, W) when the image was decoded smaller than that, else its own."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
            image = image.copy()
        x = torch.from_numpy(np.ascontiguousarray(image))
        if self.device.type == "cuda":
            x = x.pin_memory()  # page-locked: the copy below runs asynchronously
        x = x.to(self.device, non_blocking=True)
        x = x.permute(2, 0, 1)[None].float()
        full_h, full_w = full_size or image.shape[:2]
        size = self.inference_size(full_h, full_w)
        if size != tuple(image.shape[:2]):
            # Bilinear without antialiasing, like the cv2 resize of the authors' mmseg pipeline.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if min(size) < self.patch_size:
            raise ImageTooSmall(f"image {full_w}x{full_h} is smaller than one {self.patch_size}px patch")
        return ((x / 255.0 - self.mean) / self.std)[0]

    def logits(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Sliding-window cosine logits (Q, h, w) per prepared image, overlapping crops averaged."""
        inf = self.cfg.inference
        sums = [img.new_zeros((len(self.text),) + tuple(img.shape[-2:])) for img in images]
        groups: dict[tuple[int, int], list[tuple[int, Crop]]] = defaultdict(list)
        for i, img in enumerate(images):
            for crop in plan_crops(img.shape[-2], img.shape[-1], inf.slide_crop, inf.slide_stride):
                groups[crop.shape].append((i, crop))
        step = self._crops_per_forward()
        for members in groups.values():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                batch = torch.stack([images[i][:, c.y1 : c.y2, c.x1 : c.x2] for i, c in chunk])
                crop_logits = self.crop_logits(batch)
                with self.timer.section("window_merge"):
                    # One slice add per crop, in plan order: the sums bit for bit as before. One
                    # index_add_ per wave of non-overlapping crops was also exact but 3.6x slower on
                    # CPU (docs/gpu.md); the counts, which depend only on the plan, are cached.
                    for (i, c), lg in zip(chunk, crop_logits):
                        sums[i][:, c.y1 : c.y2, c.x1 : c.x2] += lg
        # in place: the same division, without a second (Q, h, w) tensor per image
        return [s.div_(_window_counts(tuple(s.shape[-2:]), inf.slide_crop, inf.slide_stride, s.device, s.dtype))
                for s in sums]

    def _crops_per_forward(self) -> int:
        wanted = self.cfg.inference.max_crops_per_forward
        if wanted > 0:
            return wanted
        # A CPU keeps a dozen crops' activations in cache (15% faster for batches of 8 images than
        # 48 crops at once); a GPU needs large batches to fill its cores.
        return 12 if self.device.type == "cpu" else 64

    def crop_logits(self, crops: Tensor) -> Tensor:
        """(B, 3, h, w) normalised crops of one shape -> (B, Q, h, w) float32 logits."""
        size = tuple(crops.shape[-2:])
        grid = self.model.grid(*size)
        t = self.timer
        with self.autocast:
            with t.section("vit_trunk"):
                trunk = self.model.compiled_trunk() if self.cfg.inference.compile_trunk else self.model.trunk
                x, rcs = trunk(crops)
            sfr = None
            if self.cfg.method.sfr.enabled:
                with t.section("sfr_first_pass"):
                    first = self._project(self.model.head(x, grid, rcs, None), grid, size)
                sfr = self._sfr_prior(crops, first)
            with t.section("last_block"):
                return self._project(self.model.head(x, grid, rcs, sfr), grid, size)

    def _sfr_prior(self, crops: Tensor, first_logits: Tensor) -> Tensor:
        chunk = self._sfr_chunk
        priors = [self._sfr_prior_chunk(img, lg)
                  for img, lg in zip(crops.float().split(chunk), first_logits.split(chunk))]
        with torch.autocast(self.device.type, enabled=False):  # under bf16 autocast, cat rejects float16
            return torch.cat(priors)

    def _sfr_prior_chunk(self, crops: Tensor, first_logits: Tensor) -> Tensor:
        sfr = self.cfg.method.sfr
        with self.timer.section("sfr_pamr"):
            refined = self._pamr(crops, first_logits, SFR_PAMR_STEPS)
        with self.timer.section("sfr_prior"):
            probs = torch.softmax(refined * self.cfg.inference.logit_scale, dim=1)
            labels = patch_majority(pixel_labels(probs, sfr.temp_thd), self.patch_size, len(self.text))  # queries
            return sfr_prior(labels, self.cfg.method.gaussian_std, sfr.delete_same_entity)

    def _pamr(self, image: Tensor, logits: Tensor, iterations: int) -> Tensor:
        try:
            return pamr(image, logits, iterations, PAMR_DILATIONS, self.pamr_kernel, self.cfg.inference.compile)
        except torch.cuda.OutOfMemoryError:
            raise  # a full device, not a missing kernel: the shifted kernel would need more memory
        except (RuntimeError, NotImplementedError) as exc:
            # A device whose sparse library lacks the CSR product: keep labeling with the slower kernel
            # when the user left the choice to us; an explicit `sparse` fails loudly.
            if self.pamr_kernel != "auto":
                raise
            log.warning("sparse PAMR failed on %s (%s); using the shifted kernel", self.device, exc)
            self.pamr_kernel = "shifted"
            return self._pamr(image, logits, iterations)

    def _project(self, tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        feats = tokens[:, 1:].float()  # drop the class token: (B, N, E)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        with torch.autocast(self.device.type, enabled=False):  # autocast would re-cast to bf16/fp16
            logits = (feats @ self.text.T).transpose(1, 2).reshape(len(feats), -1, *grid)  # (B, Q, gh, gw)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def class_probs(self, logits: Tensor, out_size: tuple[int, int], image: Tensor) -> Tensor:
        """Query logits (Q, h, w) -> class probabilities (C, H, W): upsample, [PAMR], softmax, synonym max.
        The untiled form, with `_finish`: the reference structure's, and the tests' oracle for the
        banded path that `predict` uses (four (Q, H, W) tensors: 16 GB each at 24 MP x 171 classes)."""
        inf = self.cfg.inference
        logits = logits[None].float()
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        if inf.pamr_steps > 0:
            img = F.interpolate(image[None].float(), size=out_size, mode="bilinear", align_corners=False)
            logits = self._pamr(img, logits, inf.pamr_steps)
        probs = torch.softmax(logits[0] * inf.logit_scale, dim=0)  # (Q, H, W)
        if len(self.text) != self.num_classes:
            index = self.query_class.view(-1, 1, 1).expand_as(probs)
            by_class = probs.new_zeros((self.num_classes,) + probs.shape[1:])
            probs = by_class.scatter_reduce_(0, index, probs, "amax", include_self=False)
        return probs

    def _finish(self, probs: Tensor, return_probs: bool) -> Segmentation:
        top, pred = probs.max(dim=0)
        pred = torch.where(top < self.cfg.inference.prob_thd, torch.zeros_like(pred), pred)
        probs = probs / probs.sum(dim=0, keepdim=True)  # the synonym max leaves rows that no longer sum to 1
        conf = probs.gather(0, pred[None])[0]
        return Segmentation(
            pred=pred.cpu().numpy().astype(np.int64),
            confidence=conf.float().cpu().numpy(),
            probs=probs.float().cpu().numpy() if return_probs else None,
        )


@functools.lru_cache(maxsize=64)
def _window_counts(size: tuple[int, int], crop: int, stride: int, device: torch.device,
                   dtype: torch.dtype) -> Tensor:
    """(1, h, w): how many crops of the plan cover each pixel. Shared by every image of that size:
    read only."""
    counts = torch.zeros((1,) + size, device=device, dtype=dtype)
    for c in plan_crops(size[0], size[1], crop, stride):
        counts[:, c.y1 : c.y2, c.x1 : c.x2] += 1
    return counts


def _resized(height: int, width: int, short_side: int, long_side: int = 0) -> tuple[int, int]:
    """(h, w) to infer at: the short side brought to `short_side`, unless that takes the long side
    past `long_side` (mmseg's keep-ratio rescale: factor min(long_side / long, short_side / short)),
    so a 10000x20 strip becomes 2048x4, not 168000x336. short_side 0 keeps the size, long_side
    still capping it; both 0: the input size."""
    factors = [short_side / min(height, width)] if short_side > 0 else []
    if long_side > 0 and (factors or max(height, width) > long_side):
        factors.append(long_side / max(height, width))
    if not factors:
        return height, width
    scale = min(factors)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _pamr_kernel(inf: InferenceConfig, device: torch.device) -> str:
    if inf.pamr_kernel == "auto":
        # Sparse reads the logits once per iteration instead of once per neighbour (16x less memory
        # traffic, which bounds PAMR on a GPU too) once its pattern is built (`pamr._resolve`);
        # compilation is for the shifted kernel.
        return "shifted" if inf.compile else "auto"
    if inf.compile and inf.pamr_kernel == "sparse":
        raise UserError("inference.compile fuses the shifted PAMR kernel: use pamr_kernel=shifted or auto")
    return inf.pamr_kernel


_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: float32 on CPU (bf16 pays only with AMX); bfloat16 on CUDA (fp16's range needs no
    scaling here, but bf16 keeps float32's exponent: the predicted choice until measured)."""
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" else "float32"


def _autocast(device: torch.device, precision: str):
    if precision == "float32":
        return contextlib.nullcontext()
    dtype = _DTYPES[precision]
    if device.type == "cpu" and dtype == torch.float16:
        raise UserError("precision float16 needs CUDA; on CPU use float32 or bfloat16")
    return torch.autocast(device.type, dtype=dtype)
