"""Vocabularies: classes with synonyms, prompt templates and the class palette.

File format (the one of the authors' `cls_*.txt`): one class per line, synonyms separated by ", ".
A YAML list of such strings (or of lists of synonyms) is accepted too. Every synonym is a separate
text query; a class's probability is the max over its queries.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from pipeline.resources import conf_dir
from pipeline.config import VocabularyConfig
from pipeline.errors import UserError

CONF_VOCAB_DIR = conf_dir() / "vocabularies"


@dataclass(frozen=True)
class Vocabulary:
    synonyms: tuple[tuple[str, ...], ...]  # class index -> its query words

    @property
    def names(self) -> list[str]:
        return [s[0] for s in self.synonyms]

    @property
    def queries(self) -> list[str]:
        return [q for group in self.synonyms for q in group]

    @property
    def query_class(self) -> list[int]:
        """Class index of each entry of `queries`."""
        return [c for c, group in enumerate(self.synonyms) for _ in group]

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return palette(len(self.synonyms))

    def __len__(self) -> int:
        return len(self.synonyms)


def parse_entries(entries: Sequence[str | Sequence[str]], source: str) -> Vocabulary:
    groups = []
    for i, entry in enumerate(entries):
        words = entry.split(", ") if isinstance(entry, str) else list(entry)
        words = tuple(w.strip() for w in words if str(w).strip())
        if not words:
            raise UserError(f"vocabulary {source}: entry {i + 1} is empty")
        groups.append(words)
    if not groups:
        raise UserError(f"vocabulary {source} has no classes")
    return Vocabulary(tuple(groups))


def read_vocabulary_file(path: str | Path) -> Vocabulary:
    path = resolve_vocabulary_path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        entries = yaml.safe_load(text)
        if not isinstance(entries, list):
            raise UserError(f"vocabulary {path}: a YAML vocabulary must be a list of classes")
        return parse_entries(entries, str(path))
    lines = [line.rstrip("\n") for line in text.splitlines()]
    return parse_entries([line for line in lines if line.strip()], str(path))


def resolve_vocabulary_path(path: str | Path) -> Path:
    """A path as given, else a bare name looked up in conf/vocabularies/ (with .txt optional)."""
    p = Path(path).expanduser()
    for candidate in (p, CONF_VOCAB_DIR / p, CONF_VOCAB_DIR / f"{p}.txt"):
        if candidate.is_file():
            return candidate
    raise UserError(f"vocabulary file {path} not found (also looked in {CONF_VOCAB_DIR})")


def load_vocabulary(cfg: VocabularyConfig) -> Vocabulary:
    if cfg.file and cfg.classes:
        raise UserError("set vocabulary.file or vocabulary.classes, not both")
    if cfg.file:
        vocab = read_vocabulary_file(cfg.file)
    elif cfg.classes:
        vocab = parse_entries(cfg.classes, "vocabulary.classes")
    else:
        raise UserError("no vocabulary: set vocabulary.file (e.g. --set vocabulary.file=voc20) or vocabulary.classes")
    if cfg.background:
        background = parse_entries([cfg.background], "vocabulary.background").synonyms
        vocab = Vocabulary(background + vocab.synonyms)
    return vocab


def palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours: golden-ratio hue steps at two saturation/value levels."""
    colors = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.65, 0.95) if i % 2 == 0 else (0.85, 0.75)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def load_templates(name: str) -> list[Callable[[str], str]]:
    """Prompt templates: a registered name, or a text file with one `{}` template per line."""
    if name == "openai_imagenet":
        # The 80 prompts of OpenAI's ImageNet zero-shot evaluation, as shipped with open_clip.
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    if name == "single":
        return [lambda c: f"a photo of a {c}."]
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"vocabulary.templates: {name!r} is neither openai_imagenet, single, nor a file")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [line for line in lines if "{}" not in line]
    if bad or not lines:
        raise UserError(f"template file {path}: every line needs a {{}} placeholder (bad: {bad[:1]})")
    return [lambda c, t=t: t.format(c) for t in lines]
