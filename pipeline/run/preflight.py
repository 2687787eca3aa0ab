"""Checks the driver makes before it starts Ray, so that a typo fails in about a second, in one line.

In order, cheapest first: OUTPUT (local: a directory we may write, or one we may create), INPUT
(expanded; for local specs at least one shard must exist), then the identity (vocabulary file,
template file, checkpoint: read and hashed, pipeline.identity). The config itself was checked
when it was loaded (types and pipeline.config.RANGES). Nothing is written here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.identity import Identity, resolve_identity
from pipeline.io.shards import ShardSpec, expand_input

log = logging.getLogger(__name__)


@dataclass
class Preflight:
    shards: list[ShardSpec]
    identity: Identity


def preflight(input_spec: str, output: str, cfg: Config, *, allow_pipe: bool = False) -> Preflight:
    """`allow_pipe`: the command line's --allow-pipe (pipeline.io.shards: never from a list or config)."""
    check_output(output)
    shards = expand_input(input_spec, cfg.io.storage_options, allow_pipe=allow_pipe)
    check_local_shards(input_spec, shards)
    identity = resolve_identity(cfg)
    check_checkpoints(cfg)
    return Preflight(shards, identity)


def local_path(url: str) -> Optional[Path]:
    """The file system path of a local URL (plain path or file://), None for anything remote."""
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    if "://" in url or url.startswith("pipe:"):
        return None
    return Path(url).expanduser()


def check_output(output: str) -> None:
    """A local OUTPUT must be a directory we can write, or creatable (nothing is created here)."""
    path = local_path(output)
    if path is None:
        return
    if path.exists():
        if not path.is_dir():
            raise UserError(f"OUTPUT {output} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"OUTPUT {output} is not writable (permission denied or a read-only file system)")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"OUTPUT {output} cannot be created: {parent} is not a writable directory")


def check_checkpoints(cfg: Config) -> None:
    """Refuse, before Ray starts, a local checkpoint whose pickle names anything but tensors and
    plain values (it would run code on every worker), or a TorchScript archive without
    `model.allow_torchscript`. Reads the pickle's opcodes only, not the tensors. The workers load
    with `weights_only` all the same; this gives the one-line error early (docs/security.md)."""
    from pipeline.engine.loading import CHECKPOINT_SUFFIXES

    files = []
    if cfg.model.student:
        student = Path(cfg.model.student).expanduser()
        files.append(("model.student", student / "student.pt" if student.is_dir() else student))
    else:
        pretrained = Path(cfg.model.pretrained).expanduser()
        if pretrained.suffix in CHECKPOINT_SUFFIXES and pretrained.suffix != ".safetensors":
            files.append(("model.pretrained", pretrained))
    for key, path in files:
        if path.is_file():
            _check_pickle(key, path, cfg.model.allow_torchscript)


def _check_pickle(key: str, path: Path, allow_torchscript: bool) -> None:
    import zipfile

    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        unsafe = get_unsafe_globals_in_checkpoint(str(path))
    except ValueError as exc:  # a TorchScript archive, or the legacy (non-zip) format
        if "torchscript" in str(exc) and not allow_torchscript:
            raise UserError(f"{key} {path} is a TorchScript archive, which holds code; load it only if you trust "
                            "its author: --set model.allow_torchscript=true") from None
        return  # legacy format: the workers' weights_only load refuses any code in it
    except (OSError, RuntimeError, zipfile.BadZipFile):
        return  # unreadable: the load reports it where it happens
    if unsafe:
        raise UserError(f"{key} {path} is not plain tensor data (it refers to {', '.join(unsafe[:3])}); refusing "
                        "to load it, since unpickling it could run code on every worker")


def check_local_shards(input_spec: str, shards: list[ShardSpec]) -> None:
    """For local shards, at least one must exist (stops at the first that does: O(1) in the
    common case). Missing ones among existing ones become unreadable shards of the run."""
    paths = [local_path(s.url) for s in shards]
    if any(p is None for p in paths):
        return  # remote or pipe: shards are opened by the workers (their errors are per shard)
    if not any(p is not None and p.is_file() for p in paths):
        first = paths[0]
        raise UserError(f"INPUT {input_spec}: none of its {len(shards)} shard(s) exists "
                        f"(first: {first}); check the path or brace pattern")
