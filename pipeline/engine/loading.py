"""Load an OpenCLIP ViT from an open_clip tag or a local checkpoint.

Local files come in two formats: OpenAI's (`visual.proj`, `visual.conv1.weight`, ...; a TorchScript
archive or a plain state dict) whose sizes are inferred from the tensors, and open_clip's own state
dicts, which need `model.name` for the architecture.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import ModelLoadError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class LoadedClip:
    model: nn.Module  # open_clip CLIP, eval mode, float32
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    identity: dict[str, Optional[str]]  # name, pretrained, checkpoint_sha256


def load_clip(cfg: ModelConfig) -> LoadedClip:
    import open_clip

    path = Path(cfg.pretrained).expanduser()
    if cfg.pretrained in ("random", "none"):
        # Untrained weights: for throughput benchmarks and tests only; the labels mean nothing.
        log.warning("model.pretrained=%s: %s with RANDOM weights", cfg.pretrained, cfg.name)
        model = open_clip.create_model(cfg.name, pretrained=None)
        identity = {"name": cfg.name, "pretrained": "random", "checkpoint_sha256": None}
    elif path.suffix in CHECKPOINT_SUFFIXES or path.exists():
        model, name = _load_local(path, cfg)
        identity = {"name": name, "pretrained": str(path), "checkpoint_sha256": file_sha256(path)}
    else:
        model = _load_tag(cfg)
        identity = {"name": cfg.name, "pretrained": cfg.pretrained, "checkpoint_sha256": None}
    model = model.float().eval().requires_grad_(False)
    _check_supported(model, identity["name"])
    mean = tuple(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return LoadedClip(model, mean, std, identity)


def _check_tag_name(cfg: ModelConfig) -> None:
    import open_clip

    if cfg.name not in open_clip.list_models():
        raise ModelLoadError(f"model.name {cfg.name!r} is not an open_clip architecture (see open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    if cfg.pretrained not in tags:
        raise ModelLoadError(f"{cfg.pretrained!r} is neither a file nor a tag of {cfg.name} (tags: {', '.join(tags)})")


def check_tag_weights(cfg: ModelConfig) -> Optional[str]:
    """Before any worker starts: the open_clip tag exists and its weights can be had here, from the
    local cache or (when the hub answers) by download. Returns the cached file, or None when the
    workers will download it; offline and not cached is a `ModelLoadError` that says what to do."""
    _check_tag_name(cfg)
    cached = cached_tag_file(cfg)
    if cached is not None:
        return cached
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or not _hub_reachable():
        raise ModelLoadError(
            f"open_clip weights {cfg.name}/{cfg.pretrained} are not cached here and the hub cannot be reached; "
            f"pass a local checkpoint: --set model.pretrained=/path/to/{cfg.name}.pt (or run once where "
            f"huggingface.co answers, or point model.cache_dir at a cache that holds them)")
    return None


def cached_tag_file(cfg: ModelConfig) -> Optional[str]:
    """Where open_clip would find the tag's weights without a download (its own lookup rules:
    the hub cache when the tag names a hub file, else the URL's file name under the cache dir)."""
    import os

    from open_clip import pretrained as oc

    entry = oc.get_pretrained_cfg(cfg.name, cfg.pretrained)
    if entry.get("file"):
        return entry["file"] if os.path.isfile(entry["file"]) else None
    if entry.get("hf_hub") and oc.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(entry["hf_hub"])
        filename = filename or oc.HF_WEIGHTS_NAME
        for name in (*oc._get_safe_alternatives(filename), filename):
            hit = try_to_load_from_cache(model_id, name, cache_dir=cfg.cache_dir)
            if isinstance(hit, str):  # else None or the "known missing" marker
                return hit
        return None
    if entry.get("url"):
        target = os.path.join(cfg.cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(entry["url"]))
        return target if os.path.isfile(target) else None
    return None


def _load_tag(cfg: ModelConfig) -> nn.Module:
    import open_clip

    _check_tag_name(cfg)
    online = _hub_reachable()
    try:
        # Offline, look only in the local cache: the hub client would otherwise retry for ~45 s.
        with _hub_offline(not online):
            return open_clip.create_model(cfg.name, pretrained=cfg.pretrained, cache_dir=cfg.cache_dir)
    except Exception as exc:  # download, hub and cache errors all surface differently; one message for all
        why = "no network and not in the local cache" if not online else str(exc).splitlines()[0][:160]
        raise ModelLoadError(
            f"cannot load open_clip weights {cfg.name}/{cfg.pretrained} ({why}); pass a local checkpoint "
            f"instead: --set model.pretrained=/path/to/{cfg.name}.pt"
        ) from exc


def _hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(enabled: bool):
    import huggingface_hub.constants as hub

    saved = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = saved or enabled
    if enabled:
        # open_clip logs the cache miss at ERROR on the root logger; our exception says it in one line.
        logging.disable(logging.ERROR)
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved
        logging.disable(logging.NOTSET)


def _load_local(path: Path, cfg: ModelConfig) -> tuple[nn.Module, str]:
    import open_clip

    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist; model.pretrained is a file path or an open_clip tag")
    state, scripted = _read_state_dict(path, cfg.allow_torchscript)
    fmt = cfg.format
    if fmt == "auto":
        fmt = "openai" if scripted or not _fits(state, cfg.name) else "open_clip"
    if fmt == "openai":
        if "visual.proj" not in state or "visual.conv1.weight" not in state:
            raise ModelLoadError(f"{path} is not an OpenAI-format ViT checkpoint (no visual.proj / visual.conv1)")
        model = open_clip.model.build_model_from_openai_state_dict(state)
        conv = state["visual.conv1.weight"]
        return model, f"openai-vit-w{conv.shape[0]}-p{conv.shape[-1]}"
    if cfg.name not in open_clip.list_models():
        raise ModelLoadError(f"{path} is an open_clip state dict; set model.name to its architecture (got {cfg.name!r})")
    model = open_clip.create_model(cfg.name, pretrained=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not fit {cfg.name} ({str(exc).splitlines()[1].strip()}); check model.name") from exc
    return model, cfg.name


def _fits(state: dict[str, torch.Tensor], name: str) -> bool:
    """Whether `state` has exactly the keys and shapes of open_clip architecture `name`."""
    import open_clip

    if name not in open_clip.list_models():
        return False
    logging.disable(logging.WARNING)  # open_clip warns that no weights were loaded: that is the point
    try:
        with torch.device("meta"):  # shapes only, no memory, no initialisation cost
            reference = open_clip.create_model(name, pretrained=None, device="meta").state_dict()
    finally:
        logging.disable(logging.NOTSET)
    return reference.keys() == state.keys() and all(reference[k].shape == state[k].shape for k in state)


def _read_state_dict(path: Path, allow_torchscript: bool = False) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict, and whether it came from a TorchScript archive (OpenAI's released format).
    Checkpoints are data: `weights_only` refuses a pickle that would run code, and TorchScript
    (code by design, outside that guarantee) is read only with `model.allow_torchscript`."""
    scripted = False
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f"it refers to {found.group(1)}" if found else "it holds objects other than tensors"
            raise ModelLoadError(f"checkpoint {path} is not plain tensor data ({what}); refusing to load it, "
                                 "since unpickling it could run code") from None
        except RuntimeError as exc:
            if not _is_torchscript(path):
                raise ModelLoadError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
            if not allow_torchscript:
                raise ModelLoadError(
                    f"checkpoint {path} is a TorchScript archive, which holds code; load it only if you trust its "
                    "author: --set model.allow_torchscript=true (or convert it once to a state dict / .safetensors)"
                ) from None
            # OpenAI's released checkpoints are TorchScript archives.
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            scripted = True
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds no state dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}, scripted


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding `constants.pkl` (torch.load's own test for one)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _check_supported(model: nn.Module, name: str) -> None:
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or getattr(visual, "attn_pool", None) is not None:
        raise ModelLoadError(f"{name}: only OpenCLIP ViTs with a standard transformer are supported")
    for i, blk in enumerate(blocks):
        if not hasattr(getattr(blk, "attn", None), "in_proj_weight"):
            raise ModelLoadError(f"{name}: block {i} has no in_proj_weight (non-standard attention)")


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
