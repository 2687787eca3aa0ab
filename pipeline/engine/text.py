"""Text features of a vocabulary: one L2-normalised vector per query word.

Per query: encode every prompt template, L2-normalise each, average, L2-normalise again. The result
depends only on the checkpoint, the templates and the words, so it is cached in memory and on disk
(`~/.cache/pseudolabel/text/`, or $PSEUDOLABEL_CACHE): an actor restart does not re-encode 10k prompts.

The disk cache is checked before use (docs/security.md, threat 8): each file holds the features,
their shape and dtype and a SHA-256 of those; a file that does not match its digest is recomputed
and overwritten (one warning). A cache folder (or file) that another user owns or that group or
others may write is not used at all (one warning per folder): whoever can write there could plant
features with a matching digest and change every label made with them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import stat
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from pipeline.io.atomic import atomic_local_path

log = logging.getLogger(__name__)

CACHE_FORMAT = "pseudolabel-text-features-v2"  # a dict with its digest; v1 files were bare tensors
_REFUSED: set[str] = set()  # cache folders already warned about in this process


def cache_dir() -> Path:
    root = os.environ.get("PSEUDOLABEL_CACHE") or Path.home() / ".cache" / "pseudolabel"
    return Path(root) / "text"


def encode_queries(
    model: nn.Module,
    queries: Sequence[str],
    templates: Sequence[Callable[[str], str]],
    model_key: Optional[str],
    device: torch.device,
    chunk: int = 1024,
) -> Tensor:
    """(Q, E) float32 features on `device`. `model_key` (checkpoint hash or tag) enables the disk cache."""
    key = _cache_key(model_key, queries, templates)
    folder = _usable_cache_dir() if key else None
    path = folder / f"{key}.pt" if folder is not None else None
    if path is not None and path.is_file():
        cached = _load_checked(path)
        if cached is not None:
            return cached.to(device)
    feats = _encode(model, queries, templates, device, chunk)
    if path is not None:
        _save_atomic(_entry(feats.detach().cpu()), path)
    return feats


def _entry(feats: Tensor) -> dict:
    feats = feats.contiguous()
    return {"format": CACHE_FORMAT, "features": feats, "shape": list(feats.shape), "dtype": str(feats.dtype),
            "sha256": _digest(feats)}


def _digest(feats: Tensor) -> str:
    """SHA-256 of the shape, the dtype and the bytes of a CPU tensor."""
    digest = hashlib.sha256(json.dumps([list(feats.shape), str(feats.dtype)]).encode())
    digest.update(feats.contiguous().view(torch.uint8).numpy().tobytes() if feats.numel() else b"")
    return digest.hexdigest()


def _load_checked(path: Path) -> Optional[Tensor]:
    """The cached features when the file is ours, plain data and matches its digest; else None
    (with a warning), and the caller recomputes and overwrites it."""
    if not _private(path, is_dir=False):
        log.warning("text feature cache %s is writable by others or not yours: not used, recomputed", path)
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        log.warning("text feature cache %s is unreadable (%s): recomputed and overwritten", path,
                    str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
        return None
    feats = entry.get("features") if isinstance(entry, dict) else None
    if (not isinstance(feats, Tensor) or entry.get("format") != CACHE_FORMAT or feats.dim() != 2
            or list(feats.shape) != entry.get("shape") or str(feats.dtype) != entry.get("dtype")
            or _digest(feats) != entry.get("sha256")):
        log.warning("text feature cache %s does not match its stored digest and shape (changed or damaged): "
                    "recomputed and overwritten", path)
        return None
    return feats


def _usable_cache_dir() -> Optional[Path]:
    """The cache folder, created private (0700) when missing; None (one warning) when it or its
    root is not owned by this user or is writable by group or others."""
    text = cache_dir()
    try:
        for folder in (text.parent, text):
            if not folder.exists():
                folder.parent.mkdir(parents=True, exist_ok=True)
                folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:  # a read-only home must not stop labeling
        log.warning("text feature cache folder %s cannot be created: %s", text, exc)
        return None
    for folder in (text.parent, text):
        if not _private(folder, is_dir=True):
            if str(folder) not in _REFUSED:
                _REFUSED.add(str(folder))
                log.warning("text feature cache folder %s is not owned by you or is writable by group/others: the "
                            "disk cache is not used (chmod go-w it, or point PSEUDOLABEL_CACHE to a private folder)",
                            folder)
            return None
    return text


def _private(path: Path, is_dir: bool) -> bool:
    """Owned by this user and not writable by group or others (what lstat says: a symlink is not
    followed, and is not private)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    kind_ok = stat.S_ISDIR(st.st_mode) if is_dir else stat.S_ISREG(st.st_mode)
    return kind_ok and st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


@torch.no_grad()
def _encode(model, queries, templates, device, chunk) -> Tensor:
    import open_clip

    prompts = [t(q) for q in queries for t in templates]
    tokens = open_clip.tokenize(prompts, context_length=model.context_length)
    out = []
    for start in range(0, len(tokens), chunk):
        feats = model.encode_text(tokens[start : start + chunk].to(device)).float()
        out.append(feats / feats.norm(dim=-1, keepdim=True))
    feats = torch.cat(out).reshape(len(queries), len(templates), -1).mean(dim=1)
    return feats / feats.norm(dim=-1, keepdim=True)


def _cache_key(model_key, queries, templates) -> Optional[str]:
    if not model_key:
        return None
    probe = [t("{}") for t in templates]  # the template texts themselves
    # "format": the file layout; a pseudolabel that reads bare tensors never meets a v2 file
    blob = json.dumps({"model": model_key, "queries": list(queries), "templates": probe,
                       "format": CACHE_FORMAT}).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _save_atomic(entry: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_local_path(path) as tmp:
            torch.save(entry, tmp)
    except OSError as exc:  # a read-only home must not stop labeling
        log.warning("text feature cache not written (%s): %s", path, exc)
