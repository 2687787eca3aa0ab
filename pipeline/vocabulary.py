"""Vocabularies: classes with synonyms, prompt templates and the class palette.

File format (the one of the authors' `cls_*.txt`): one class per line, synonyms separated by ", ".
A YAML list of such strings (or of lists of synonyms) is accepted too. Every synonym is a separate
text query; a class's probability is the max over its queries.

Checked on load, each error one line naming the file and the line: UTF-8 text (a byte-order mark
is dropped), every entry a name or a list of names, no class twice (CLIP's tokenizer ignores case:
`dog` and `Dog` are one class), no word in two classes unless `vocabulary.shared_synonyms`.
"""
from __future__ import annotations

import codecs
import colorsys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from pipeline.resources import conf_dir
from pipeline.config import VocabularyConfig
from pipeline.errors import UserError

CONF_VOCAB_DIR = conf_dir() / "vocabularies"


@dataclass(frozen=True)
class Vocabulary:
    synonyms: tuple[tuple[str, ...], ...]  # class index -> its query words
    # class index -> where it was written ("line 7", "entry 3"), for messages; not part of equality
    origins: tuple[str, ...] = field(default=(), compare=False)

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

    def origin(self, index: int) -> str:
        return self.origins[index] if index < len(self.origins) else f"entry {index + 1}"

    def __len__(self) -> int:
        return len(self.synonyms)


def parse_entries(entries: Sequence[Any], source: str, origins: Optional[Sequence[str]] = None) -> Vocabulary:
    """Classes from entries (a "a, b" string or a list of synonyms each); `origins` says where each
    entry was written (default "entry N"). A duplicate class name is refused: it could never win
    the argmax against its twin."""
    origins = list(origins) if origins is not None else [f"entry {i + 1}" for i in range(len(entries))]
    groups = []
    for entry, where in zip(entries, origins):
        groups.append(_entry_words(entry, source, where))
    if not groups:
        raise UserError(f"vocabulary {source} has no classes")
    vocab = Vocabulary(tuple(groups), tuple(origins))
    _refuse_duplicate_names(vocab, source)
    return vocab


def _entry_words(entry: Any, source: str, where: str) -> tuple[str, ...]:
    if isinstance(entry, str):
        words: list[Any] = entry.split(", ")
    elif isinstance(entry, (list, tuple)) and all(isinstance(w, str) for w in entry):
        words = list(entry)
    else:
        raise UserError(f"vocabulary {source}: {where} is {entry!r}, not a class name or a list of synonyms "
                        f"(quote numbers and other values: '{entry}')")
    kept = tuple(w.strip() for w in words if w.strip())
    if not kept:
        raise UserError(f"vocabulary {source}: {where} is empty")
    return kept


def _key(word: str) -> str:
    """Words CLIP cannot tell apart: its tokenizer lowercases and splits on whitespace."""
    return " ".join(word.casefold().split())


def _refuse_duplicate_names(vocab: Vocabulary, source: str) -> None:
    first: dict[str, int] = {}
    for i, name in enumerate(vocab.names):
        j = first.setdefault(_key(name), i)
        if j != i:
            twin = vocab.names[j]
            same = f"class {name!r}" if twin == name else f"class {twin!r} and {name!r} (the same to CLIP)"
            raise UserError(f"vocabulary {source}: {same} on {vocab.origin(j)} and again on "
                            f"{vocab.origin(i)}; a class twice can never win the argmax: merge the two")


def refuse_shared_synonyms(vocab: Vocabulary, source: str) -> None:
    """A word in two classes splits its pixels by noise between them: refused, with both places."""
    owner: dict[str, int] = {}
    for c, group in enumerate(vocab.synonyms):
        for word in group:
            other = owner.setdefault(_key(word), c)
            if other != c:
                raise UserError(
                    f"vocabulary {source}: {word!r} is in class {vocab.names[other]!r} ({vocab.origin(other)}) "
                    f"and in class {vocab.names[c]!r} ({vocab.origin(c)}); keep it in one class "
                    "(or set vocabulary.shared_synonyms=true to keep such a list as it is)")


def read_vocabulary_file(path: str | Path) -> Vocabulary:
    path = resolve_vocabulary_path(path)
    text = _read_text(path)
    if path.suffix in (".yaml", ".yml"):
        return _parse_yaml(text, str(path))
    numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return parse_entries([line for _, line in numbered], str(path), [f"line {n}" for n, _ in numbered])


def _read_text(path: Path) -> str:
    """UTF-8 (a byte-order mark, as Windows editors write, is dropped); anything else is one line
    naming the file and the line, never a traceback."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read vocabulary {path}: {exc.strerror or exc}") from exc
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"vocabulary {path}: line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                        f"column {column}); save the file as UTF-8") from exc


def _parse_yaml(text: str, source: str) -> Vocabulary:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes keep their line numbers
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise UserError(f"vocabulary {source}:{where} not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    if not isinstance(entries, list) or not isinstance(node, yaml.SequenceNode):
        raise UserError(f"vocabulary {source}: a YAML vocabulary must be a list of classes")
    origins = [f"line {item.start_mark.line + 1}" for item in node.value]
    return parse_entries(entries, source, origins)


def resolve_vocabulary_path(path: str | Path) -> Path:
    """A path as given, else a bare name looked up in conf/vocabularies/ (with .txt optional)."""
    p = Path(path).expanduser()
    for candidate in (p, CONF_VOCAB_DIR / p, CONF_VOCAB_DIR / f"{p}.txt"):
        if candidate.is_file():
            return candidate
    raise UserError(f"vocabulary file {path} not found; known names: {', '.join(known_vocabularies())} "
                    f"(in {CONF_VOCAB_DIR}), or give a path")


def known_vocabularies() -> list[str]:
    return sorted(p.stem for p in CONF_VOCAB_DIR.glob("*.txt"))


def load_vocabulary(cfg: VocabularyConfig) -> Vocabulary:
    if cfg.file and cfg.classes:
        raise UserError("set vocabulary.file or vocabulary.classes, not both")
    if cfg.file:
        vocab = read_vocabulary_file(cfg.file)
        source = str(resolve_vocabulary_path(cfg.file))
    elif cfg.classes:
        vocab, source = parse_entries(cfg.classes, "vocabulary.classes"), "vocabulary.classes"
    else:
        raise UserError("no vocabulary: set vocabulary.file (e.g. --set vocabulary.file=voc20) or vocabulary.classes")
    if cfg.background:
        background = parse_entries([cfg.background], "vocabulary.background")
        vocab = Vocabulary(background.synonyms + vocab.synonyms, ("vocabulary.background",) + vocab.origins)
        _refuse_duplicate_names(vocab, source)
    if not getattr(cfg, "shared_synonyms", False):
        refuse_shared_synonyms(vocab, source)
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
