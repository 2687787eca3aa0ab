"""Typed configuration: dataclasses loaded from YAML in `conf/`, with `key=value` overrides.

Every key is validated on load; an unknown key or a bad value raises `ConfigError` naming the
dotted key and what it accepts. The same `Config` drives `predict`, `run`, `bench` and the jobs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

import yaml

from pipeline.resources import conf_dir
from pipeline.errors import UserError

CONF_DIR = conf_dir()
DEFAULT_CONFIG = CONF_DIR / "default.yaml"

BaseMethod = Literal["vanilla", "sclip", "clearclip", "naclip"]
Precision = Literal["auto", "float32", "bfloat16", "float16"]
PamrKernelChoice = Literal["auto", "sparse", "shifted", "stencil"]


class ConfigError(UserError, ValueError):
    """A configuration key is unknown or its value is not accepted."""


@dataclass
class ModelConfig:
    name: str = "ViT-B-16"  # open_clip architecture name; ignored for OpenAI .pt files (sizes come from the file)
    pretrained: str = "openai"  # open_clip tag (needs network) or a local checkpoint path
    cache_dir: Optional[str] = None  # where open_clip looks for downloaded weights
    # Local checkpoint layout. auto: TorchScript archives and state dicts that do not fit `name` are
    # OpenAI's (sizes inferred from the tensors, QuickGELU); others load into open_clip's `name`.
    format: Literal["auto", "openai", "open_clip"] = "auto"
    # A student of `pseudolabel train` (DIR/student.pt) labels instead of CLIP: a second, cheaper
    # labeling round. Its classes are the ones it was trained on; vocabulary.* and method.* are unused.
    student: Optional[str] = None
    # Read TorchScript checkpoints (OpenAI's original release format). They hold code, which torch
    # runs while loading them: only for files whose author you trust (docs/security.md).
    allow_torchscript: bool = False


@dataclass
class VocabularyConfig:
    file: Optional[str] = None  # one class per line, synonyms separated by ", " (or a YAML list)
    classes: Optional[list[str]] = None  # inline alternative to `file`, same per-entry syntax
    background: Optional[str] = None  # when set, a class of this name (and synonyms) is put at index 0
    templates: str = "openai_imagenet"  # prompt template set: a registered name or a text file, one per line with {}
    shared_synonyms: bool = False  # allow one word in two classes (the authors' coco_object list has 'bed' twice)


@dataclass
class RCSConfig:
    enabled: bool = True
    layers: list[int] = field(default_factory=lambda: [5, 6, 7, 8])  # 0-based blocks whose attention is averaged
    tau: float = 2.0
    lam: float = 0.3


@dataclass
class SFRConfig:
    enabled: bool = True
    tau: float = 2.1
    lam: float = 0.7
    temp_thd: float = 0.25  # below this first-pass confidence a pixel falls back to query 0
    delete_same_entity: bool = True  # path check with distance decay between same-label patches


@dataclass
class MethodConfig:
    base: BaseMethod = "naclip"
    gaussian_std: float = 5.0  # NACLIP window prior and SFR row blur
    rcs: RCSConfig = field(default_factory=RCSConfig)
    sfr: SFRConfig = field(default_factory=SFRConfig)


@dataclass
class InferenceConfig:
    slide_crop: int = 224  # 0 = whole image in one pass (positional embeddings interpolated)
    slide_stride: int = 112
    short_side: int = 336  # resize so the short side has this length; 0 = keep the input size
    # ... but so that the long side is at most this (mmseg's Resize(scale=(2048, 336), keep_ratio=True)
    # of the authors' configs: factor min(long_side / long, short_side / short)); 0 = no cap.
    long_side: int = 2048
    logit_scale: float = 40.0
    prob_thd: float = 0.0  # pixels whose best class probability is below this become class 0
    pamr_steps: int = 0  # PAMR refinement of the final logits; 0 = off
    # Post-processing works on bands of this many output pixels (rows x width): memory per image is
    # O(classes x band), not O(classes x pixels); the outputs do not depend on it.
    post_band_pixels: int = 65536
    # Upper bound on crops sent through the ViT at once; 0 = auto: 12 on CPU, 64 on GPU.
    max_crops_per_forward: int = 0
    # PAMR propagation: `sparse` (one CSR product per iteration; fastest on CPU), `shifted` (one pass
    # per neighbour; what `compile` fuses), `stencil` (pure element-wise form that torch.compile fuses
    # into one kernel per iteration; compiled on CUDA always). auto = stencil on CUDA; on CPU sparse
    # for shapes seen before (building the pattern costs about one shifted run), shifted with `compile`.
    pamr_kernel: PamrKernelChoice = "auto"
    # torch.compile the shifted PAMR propagation, after a one-off compile per crop shape (~1 min on
    # 2 cores). With pamr_kernel auto, compile picks the shifted kernel.
    compile: bool = False
    # torch.compile the ViT trunk (blocks 0..L-2): true | false. Opt-in until the GPU check measures
    # that it pays (bench.json, compile_trunk rows); one-off compile per worker (minutes on CUDA with
    # autotuning). Equal to eager within 1e-5 on CPU (tests/engine/test_compile_trunk.py).
    compile_trunk: bool = False
    # CUDA, float32: matmuls and convolutions in TF32 (10-bit mantissa, ~8x the float32 rate on
    # H100/H200). Off reproduces float32 exactly.
    tf32: bool = True


@dataclass
class IOConfig:
    image_extensions: list[str] = field(default_factory=lambda: ["jpg", "jpeg", "png", "webp"])
    max_image_pixels: int = 89_478_485  # decompression-bomb guard (Pillow's default limit)
    # Decode JPEGs at 1/2, 1/4 or 1/8 scale in libjpeg (Pillow's draft mode) when the engine would
    # shrink them anyway: ~3x faster decoding at 12 MP, labels still at the full size, but slightly
    # different pixels (~99.6% equal labels, docs/real_photos.md), so off by default.
    jpeg_draft: bool = False
    # An image member declaring more bytes is a too_large row, skipped unread (checked on the tar
    # header, before reading). 256 MiB: a 89-Mpixel PNG at ~3 bytes/pixel still fits.
    max_member_bytes: int = 268_435_456
    # A gzip/bz2/xz shard that expands more than this many times the compressed bytes read (past a
    # 64 MiB allowance) is stopped as a decompression bomb: a failed shard. 0 = no limit.
    max_expansion_ratio: float = 100.0
    decode_threads: int = 0  # decoding/encoding threads per actor; 0 = auto: cores per GPU, or 2 on CPU
    prefetch_batches: int = 2  # decoded batches queued ahead of inference; whole-image mode regroups as many by shape
    png_compression: int = 1  # zlib level for mask PNGs: 1 is ~5x faster than 6 for ~10% more bytes
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options (endpoint_url, key, ...)
    min_image_side: int = 16  # run: shorter images are errors; the engine's patch size wins when it exposes one


@dataclass
class RayConfig:
    address: Optional[str] = None  # RAY_ADDRESS wins when set; None = start a local Ray
    num_actors: int = 0  # 0 = one per GPU, or `cpu_actors` without GPUs
    cpu_actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0  # below 1, several actors share a GPU (e.g. 0.5: two per GPU)
    # CPUs reserved per GPU actor; 0 = auto: the GPU node's cores / its actors (pipeline/run/placement.py),
    # and the actor's decode pool is sized to match.
    cpus_per_gpu_actor: float = 0.0
    stall_timeout_s: float = 900.0  # give up on the queued shards when no worker is alive for this long
    max_actor_restarts: int = 3  # restarts of a lost actor (infrastructure failures only)
    max_shard_retries: int = 3  # re-submissions of a shard whose worker was lost
    shard_stall_timeout_s: float = 1800.0  # a shard whose samples do not move for this long fails and is retried (0 = off)
    # On SIGTERM, how long shards in flight may take to finish before the run stops (then at once);
    # below Kubernetes' default 30 s grace, so the lock is released before a SIGKILL.
    term_grace_s: float = 20.0


@dataclass
class LabelsConfig:
    min_confidence: float = 0.0  # pixels below this confidence get the ignore value
    # Label PNG pixels: "gray" (mode L / I;16) or "palette" (mode P with the vocabulary's colours,
    # up to 255 classes); the stored values are the class indices either way.
    png_mode: Literal["gray", "palette"] = "gray"
    # Longest side of the stored label / confidence maps (0: the image's size); readers resize back
    # to the image by nearest neighbour. Host time and bytes per photo, measured: docs/host_budget.md
    max_side: int = 768
    confidence_max_side: int = 384


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    vocabulary: VocabularyConfig = field(default_factory=VocabularyConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    io: IOConfig = field(default_factory=IOConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    batch_size: int = 8  # images per engine call
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: float32 on CPU; on CUDA bfloat16 (the predicted choice until the GPU check measures its
    # agreement with float32). Weights are cast once for the chosen precision; logits stay float32.
    precision: Precision = "float32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Hash of everything that changes the labels (not where or how fast they are made)."""
        d = self.to_dict()
        for key in ("io", "ray"):
            d.pop(key)
        d.pop("batch_size")
        d.pop("device")
        d["inference"].pop("max_crops_per_forward")
        d["inference"].pop("compile")
        d["inference"].pop("pamr_kernel")
        if d["model"].get("student") is None:
            d["model"].pop("student")  # unset: the same fingerprint as before the key existed
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Range:
    """Valid values of a numeric key: `low <= v <= high` (`None` = unbounded), strict ends when
    `open_low`/`open_high`; lists are checked per item."""

    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""  # what the special values mean

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))

    def __str__(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}" if isinstance(x, float) else str(x)
        if self.low is not None and self.high is not None:
            text = f"{'(' if self.open_low else '['}{num(self.low)}, {num(self.high)}{')' if self.open_high else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.open_low else '>='} {num(self.low)}"
        else:
            text = f"{'<' if self.open_high else '<='} {num(self.high)}"
        return f"{text} ({self.note})" if self.note else text


# The valid range of every numeric key (tests/test_config.py checks that none is missing). Checked
# on load, so a bad value is one line naming the key, the value and this range, before any work.
RANGES: dict[str, Range] = {
    "method.gaussian_std": Range(0, open_low=True),
    "method.rcs.layers": Range(0, note="each a 0-based block index, below the model's depth"),
    "method.rcs.tau": Range(0, open_low=True),
    "method.rcs.lam": Range(0, 1),
    "method.sfr.tau": Range(0, open_low=True),
    "method.sfr.lam": Range(0, 1),
    "method.sfr.temp_thd": Range(0, 1),
    "inference.slide_crop": Range(0, note="0 = whole image"),
    "inference.slide_stride": Range(1, note="at most slide_crop when sliding"),
    "inference.short_side": Range(0, note="0 = keep the input size"),
    "inference.long_side": Range(0, note="0 = no cap"),
    "inference.logit_scale": Range(0, open_low=True),
    "inference.prob_thd": Range(0, 1),
    "inference.pamr_steps": Range(0, note="0 = off"),
    "inference.post_band_pixels": Range(1024, note="output pixels per post-processing band"),
    "inference.max_crops_per_forward": Range(0, note="0 = auto"),
    "io.max_image_pixels": Range(1),
    "io.max_member_bytes": Range(1024, 2**40),
    "io.max_expansion_ratio": Range(0, note="0 = no limit"),
    "io.decode_threads": Range(0, note="0 = auto"),
    "io.prefetch_batches": Range(1),
    "io.png_compression": Range(0, 9),
    "io.min_image_side": Range(1),
    "ray.num_actors": Range(0, note="0 = one per GPU, or ray.cpu_actors"),
    "ray.cpu_actors": Range(1),
    "ray.cpus_per_actor": Range(0, open_low=True),
    "ray.gpus_per_actor": Range(0, open_low=True, note="below 1, actors share a GPU"),
    "ray.cpus_per_gpu_actor": Range(0, note="0 = auto"),
    "ray.stall_timeout_s": Range(0, open_low=True),
    "ray.max_actor_restarts": Range(0),
    "ray.max_shard_retries": Range(0),
    "ray.shard_stall_timeout_s": Range(0, note="0 = off"),
    "ray.term_grace_s": Range(0, note="0 = stop at the first SIGTERM"),
    "labels.min_confidence": Range(0, 1),
    "labels.max_side": Range(0, note="0 stores maps at the image's size"),
    "labels.confidence_max_side": Range(0, note="0 stores confidence at the label size"),
    "batch_size": Range(1),
}


def numeric_keys(cls: Optional[type] = None, prefix: str = "") -> list[str]:
    """Dotted names of every int/float (or list of them) field of `Config`."""
    cls = cls or Config
    out: list[str] = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += numeric_keys(tp, f"{key}.")
            continue
        inner = [a for a in (get_args(tp) or (tp,)) if a is not type(None)]
        if get_origin(tp) is list:
            inner = list(get_args(tp))
        if any(a in (int, float) for a in inner):
            out.append(key)
    return out


def check_ranges(cfg: "Config") -> None:
    """`ConfigError` naming the first key outside its range (and cross-key limits)."""
    for key, rng in RANGES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        for item in value if isinstance(value, list) else [value]:
            if not rng.contains(item):
                raise ConfigError(f"{key}={item!r} is out of range: valid values are {rng}")
    inf = cfg.inference
    if inf.slide_crop > 0 and inf.slide_stride > inf.slide_crop:
        raise ConfigError(f"inference.slide_stride={inf.slide_stride} is out of range: it must be at most "
                          f"inference.slide_crop={inf.slide_crop}, or windows leave pixels unlabeled")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Default config, then the file at `path` (if any), then `KEY=VALUE` overrides (YAML values);
    every key and value checked (types, then `RANGES`)."""
    data = _read_yaml(DEFAULT_CONFIG)
    if path is not None:
        _merge(data, _read_yaml(resolve_config_path(path)), "")
    for item in overrides or []:
        key, value = parse_override(item)
        _merge(data, _nest(key, value), "")
    cfg = from_dict(Config, data)
    check_ranges(cfg)
    return cfg


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. method.base=sclip)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML") from exc
    return key.strip(), value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value against the annotations."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; accepted: {', '.join(sorted(names))}")
    kwargs = {}
    for name in names & set(data):
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, get_args(tp)))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def resolve_config_path(path: str | Path) -> Path:
    """A config file as given, else a preset name shipped in `conf/presets/` (`ade20k`, `voc21.yaml`)."""
    p = Path(path)
    if p.exists() or p.parent != Path("."):
        return p
    for candidate in (CONF_DIR / "presets" / p, CONF_DIR / "presets" / f"{p}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(c.stem for c in (CONF_DIR / "presets").glob("*.yaml")))
    raise ConfigError(f"config {path} is neither a file nor a preset; presets: {known}")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "storage_options":
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value
