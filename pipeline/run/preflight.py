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
    try:
        shards = expand_input(input_spec, cfg.io.storage_options, allow_pipe=allow_pipe)
    except UserError as exc:
        raise expand_local_hint(input_spec, exc) from exc
    check_local_shards(input_spec, shards)
    return Preflight(shards, check_model(cfg))


def check_model(cfg: Config) -> Identity:
    """The engine's identity (vocabulary, templates, weights read and hashed), its checkpoints free
    of code, an open_clip tag's weights at hand: everything preflight checks but INPUT and OUTPUT."""
    identity = resolve_identity(cfg)
    check_checkpoints(cfg)
    check_tag_weights(cfg)
    return identity


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


def check_tag_weights(cfg: Config) -> None:
    """An open_clip tag (`model.pretrained: openai`, every preset's default) must be in the local
    cache, or the hub reachable, before Ray starts: not a failure of every worker a minute later."""
    from pipeline.identity import CHECKPOINT_SUFFIXES, RANDOM_TAGS

    model = cfg.model
    if model.student or model.pretrained in RANDOM_TAGS:
        return
    path = Path(model.pretrained).expanduser()
    if path.suffix in CHECKPOINT_SUFFIXES or path.exists():
        return  # a file: resolve_identity has read and hashed it
    from pipeline.engine.loading import check_tag_weights as check_tag

    check_tag(model)


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


# What pipeline.student.checkpoint.load_data also accepts: a str subclass in older student cards.
ALLOWED_GLOBALS = frozenset({"torch.torch_version.TorchVersion"})


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
    unsafe = [g for g in unsafe if g not in ALLOWED_GLOBALS]
    if unsafe:
        raise UserError(f"{key} {path} is not plain tensor data (it refers to {', '.join(unsafe[:3])}); refusing "
                        "to load it, since unpickling it could run code on every worker")


def check_local_shards(input_spec: str, shards: list[ShardSpec]) -> None:
    """For local shards, at least one must exist (stops at the first that does: O(1) in the
    common case). Missing ones among existing ones become unreadable shards of the run."""
    paths = [local_path(s.url) for s in shards]
    if any(p is None for p in paths):
        return  # remote or pipe: shards are opened by the workers (their errors are per shard)
    existing = next((p for p in paths if p is not None and p.is_file()), None)
    if existing is None:
        first = paths[0]
        raise UserError(f"INPUT {input_spec}: none of its {len(shards)} shard(s) exists "
                        f"(first: {first}); check the path or brace pattern")
    check_is_tar(input_spec, existing)


def check_is_tar(input_spec: str, path: Path) -> None:
    """A file named as INPUT that is not a tar (a photo, a PDF) is refused here, not after Ray
    started: one file, its name first, its header only when the name does not say."""
    import tarfile

    from pipeline.io.shards import SHARD_SUFFIXES

    if path.name.lower().endswith(SHARD_SUFFIXES) or tarfile.is_tarfile(path):
        return
    raise UserError(f"INPUT {input_spec}: {path} is not a tar shard; label single images with "
                    f"`pseudolabel predict IMAGE --out DIR`, or pack a folder of images first: "
                    f"`pseudolabel pack DIR --out SHARDS`, then `pseudolabel run SHARDS --out OUTPUT`")


def expand_local_hint(input_spec: str, exc: UserError) -> UserError:
    """`run photos/` on a folder with neither shards nor images: say what to do next. (A folder
    of images is taken by `run` itself before this, see pipeline.io.shards.)"""
    path = local_path(input_spec)
    if path is None or not path.is_dir():
        return exc
    return UserError(f"INPUT {input_spec} is a folder with neither .tar shards nor images in it; give a folder "
                     f"of shards or of photos (`run` packs photos itself), or run `pseudolabel pack DIR --out SHARDS` "
                     f"first, then `pseudolabel run SHARDS --out OUTPUT`")
