"""Content fingerprint: everything that changes the labels, hashed by content, never by path.

`Identity.values` maps a dotted key to a canonical JSON value: the vocabulary as parsed (classes,
synonyms, background, order), the prompt templates' text, the weights (the checkpoint's sha256;
for a tag such as `openai` or `random`, the tag and the architecture), the model options, every
method and inference setting that changes labels, the precision, `labels.*`,
`io.image_extensions` and `io.jpeg_draft` (when on). Its hash is the `fingerprint` written to
dataset.json and to every completion record. Where things came from (vocabulary file, template
file, checkpoint path) is kept in `sources`: recorded, not compared, so the same weights under
another path spelling are the same identity, and the same path holding other weights is not.

The driver builds one with `resolve_identity(cfg)` before starting Ray (reads the vocabulary and
template files, hashes the checkpoint); each actor builds its own from what it loaded
(`loaded_identity`), and the two must agree before the actor gets a shard.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pipeline.config import Config, ModelConfig
from pipeline.errors import UserError

IDENTITY_VERSION = 2
FINGERPRINT_PREFIX = "c2-"  # old fingerprints (config hashes with paths in them) are 16 bare hex digits
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
RANDOM_TAGS = ("random", "none")
# Settings that change how fast labels are made, not the labels (left out of the identity).
PERFORMANCE_KEYS = frozenset({"inference.max_crops_per_forward", "inference.compile", "inference.pamr_kernel",
                              "inference.post_band_pixels", "inference.compile_trunk"})
_ABSENT = "(absent)"
STUDENT_VOCABULARY = "(the classes stored in the student file)"


class IdentityMismatch(UserError):
    """Two identities differ (an OUTPUT vs this run, or the driver vs what a worker loaded)."""


@dataclass(frozen=True)
class Difference:
    key: str
    theirs: Any
    mine: Any

    def describe(self, theirs_label: str, mine_label: str) -> str:
        return f"{self.key}: {theirs_label} {_render(self.theirs, self.mine)}, {mine_label} {_render(self.mine, self.theirs)}"


@dataclass(frozen=True)
class Identity:
    values: dict[str, Any]  # dotted key -> canonical JSON value; compared
    sources: dict[str, Optional[str]] = field(default_factory=dict)  # where from; recorded only

    @property
    def fingerprint(self) -> str:
        return FINGERPRINT_PREFIX + _digest(self.values)[:24]

    @property
    def weights(self) -> str:
        return str(self.values.get("model.weights"))

    def differences(self, other: "Identity") -> list[Difference]:
        """Every key whose value differs, `other` being "theirs" (sorted by key)."""
        keys = sorted(set(self.values) | set(other.values))
        return [Difference(k, other.values.get(k, _ABSENT), self.values.get(k, _ABSENT)) for k in keys
                if other.values.get(k, _ABSENT) != self.values.get(k, _ABSENT)]

    def to_dict(self) -> dict[str, Any]:
        return {"version": IDENTITY_VERSION, "fingerprint": self.fingerprint, "values": self.values,
                "sources": self.sources}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Identity":
        return cls(dict(doc.get("values") or {}), dict(doc.get("sources") or {}))


def mismatch_message(diffs: Sequence[Difference], what: str, theirs_label: str, mine_label: str,
                     advice: str) -> str:
    """One line: what differs, every differing key with both values, what to do."""
    listed = "; ".join(d.describe(theirs_label, mine_label) for d in diffs)
    return f"{what}: {len(diffs)} setting(s) differ: {listed}. {advice}"


# -- building ---------------------------------------------------------------------------------

def resolve_identity(cfg: Config) -> Identity:
    """The identity this config labels under, from the files as they are now (driver side)."""
    from pipeline.vocabulary import load_templates, load_vocabulary, resolve_vocabulary_path

    student = getattr(cfg.model, "student", None)
    if student:  # a student file carries its own classes: its hash covers them
        weights = f"sha256:{checkpoint_sha256(_existing_file(Path(student).expanduser(), 'model.student'))}"
        return build_identity(cfg, STUDENT_VOCABULARY, [], weights, {"model.student": str(student)})
    weights, checkpoint = resolve_weights(cfg.model)  # first: a mistyped path fails before any import
    vocab = load_vocabulary(cfg.vocabulary)
    templates = template_texts(load_templates(cfg.vocabulary.templates))
    sources = {"vocabulary.file": str(resolve_vocabulary_path(cfg.vocabulary.file)) if cfg.vocabulary.file else None,
               "vocabulary.templates": cfg.vocabulary.templates, "model.pretrained": checkpoint or cfg.model.pretrained}
    return build_identity(cfg, vocab.synonyms, templates, weights, sources)


def loaded_identity(cfg: Config, engine: Any) -> Identity:
    """The identity of an engine as it was loaded (worker side): its vocabulary, its templates,
    the hash of the weights it read."""
    from pipeline.vocabulary import load_templates

    ident = dict(getattr(engine, "model_identity", {}) or {})
    if getattr(cfg.model, "student", None):
        return build_identity(cfg, STUDENT_VOCABULARY, [], f"sha256:{ident.get('checkpoint_sha256')}",
                              {"model.student": ident.get("pretrained")})
    texts = getattr(engine, "template_texts", None)
    if texts is None:  # an engine that does not say which templates it used: what the config names
        texts = template_texts(load_templates(cfg.vocabulary.templates))
    sha = ident.get("checkpoint_sha256")
    if sha:
        weights = f"sha256:{sha}"
    else:
        weights = _tag_weights(cfg.model, str(ident.get("pretrained", cfg.model.pretrained)))
    sources = {"model.pretrained": ident.get("pretrained"), "vocabulary.templates": cfg.vocabulary.templates}
    return build_identity(cfg, engine.vocabulary.synonyms, list(texts), weights, sources)


def build_identity(cfg: Config, synonyms: Sequence[Sequence[str]] | str, templates: Sequence[str], weights: str,
                   sources: Optional[dict[str, Optional[str]]] = None) -> Identity:
    values: dict[str, Any] = {
        "vocabulary": synonyms if isinstance(synonyms, str) else [list(s) for s in synonyms],
        "vocabulary.templates": list(templates),
        "model.weights": weights,
        "model.name": cfg.model.name,
        "model.format": cfg.model.format,
        "precision": cfg.precision,
        "io.image_extensions": list(cfg.io.image_extensions),
    }
    if cfg.io.jpeg_draft:  # it changes pixels, so labels; off: absent, the fingerprint from before the key
        values["io.jpeg_draft"] = True
    for section in ("method", "inference", "labels"):
        values.update(_flatten(dataclasses.asdict(getattr(cfg, section)), f"{section}."))
    for key in PERFORMANCE_KEYS:
        values.pop(key, None)
    return Identity(json.loads(json.dumps(values)), dict(sources or {}))  # JSON round trip: canonical types


def template_texts(templates: Sequence[Any]) -> list[str]:
    """The text of each prompt template (callables as pipeline.vocabulary makes them)."""
    return [t("{}") if callable(t) else str(t) for t in templates]


def resolve_weights(model: ModelConfig) -> tuple[str, Optional[str]]:
    """(`sha256:<hex>` of a local checkpoint or a tag identity, the checkpoint's path or None).
    A path that does not exist is a `UserError` naming it (the same rule as the loader's)."""
    if model.pretrained in RANDOM_TAGS:
        return _tag_weights(model, "random"), None
    path = Path(model.pretrained).expanduser()
    if path.suffix in CHECKPOINT_SUFFIXES or path.exists():
        return f"sha256:{checkpoint_sha256(_existing_file(path, 'model.pretrained'))}", str(path.resolve())
    return _tag_weights(model, model.pretrained), None


def _existing_file(path: Path, key: str) -> Path:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist or is not a file ({key} is a checkpoint path"
                        f"{' or an open_clip tag such as openai' if key == 'model.pretrained' else ''})")
    return path


def _tag_weights(model: ModelConfig, tag: str) -> str:
    return f"tag:{'random' if tag in RANDOM_TAGS else tag}:{model.name}"


# -- checkpoint hashing, once per file version per process -------------------------------------

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def checkpoint_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, cached by (real path, size, mtime): a checkpoint is read once per run."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        key = (real, st.st_size, st.st_mtime_ns)
        with _SHA_LOCK:
            if key in _SHA_CACHE:
                return _SHA_CACHE[key]
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


# -- helpers ----------------------------------------------------------------------------------

def _flatten(d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _render(value: Any, other: Any, limit: int = 80) -> str:  # 80: a whole "sha256:HEX" fits
    """A value short enough for a one-line message; long lists say where they first differ."""
    text = json.dumps(value)
    if len(text) <= limit:
        return text
    if isinstance(value, list):
        where = ""
        if isinstance(other, list):
            first = next((i for i, (a, b) in enumerate(zip(value, other)) if a != b), min(len(value), len(other)))
            item = json.dumps(value[first]) if first < len(value) else "(end)"
            where = f", entry {first} {item[:40]}"
        return f"[{len(value)} entries, sha256 {_digest(value)[:12]}{where}]"
    return f"{text[:limit]}... (sha256 {_digest(value)[:12]})"
