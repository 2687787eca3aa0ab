"""Text features of a vocabulary: one L2-normalised vector per query word.

Per query: encode every prompt template, L2-normalise each, average, L2-normalise again. The result
depends only on the checkpoint, the templates and the words, so it is cached in memory and on disk
(`~/.cache/pseudolabel/text/`, or $PSEUDOLABEL_CACHE): an actor restart does not re-encode 10k prompts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from pipeline.io.atomic import atomic_local_path

log = logging.getLogger(__name__)


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
    path = cache_dir() / f"{key}.pt" if key else None
    if path is not None and path.is_file():
        return torch.load(path, map_location=device, weights_only=True)
    feats = _encode(model, queries, templates, device, chunk)
    if path is not None:
        _save_atomic(feats.cpu(), path)
    return feats


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
    blob = json.dumps({"model": model_key, "queries": list(queries), "templates": probe}).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _save_atomic(tensor: Tensor, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_local_path(path) as tmp:
            torch.save(tensor, tmp)
    except OSError as exc:  # a read-only home must not stop labeling
        log.warning("text feature cache not written (%s): %s", path, exc)
