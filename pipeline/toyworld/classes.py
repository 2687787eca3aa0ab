"""The toy world's classes: name, kind (stuff or thing) and display colour, in label-index order.

The order here *is* the label index used in masks, in `conf/vocabularies/toyworld.txt` and by the
toy CLIP's captions; append new classes at the end so existing masks and checkpoints stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ToyClass:
    name: str  # the word used in captions and in the vocabulary file
    kind: Literal["stuff", "thing"]  # stuff fills regions; things are shapes placed on top
    color: tuple[int, int, int]  # display colour for label visualisations (not the rendered colour)


CLASSES: tuple[ToyClass, ...] = (
    ToyClass("sky", "stuff", (70, 130, 180)),
    ToyClass("grass", "stuff", (0, 160, 0)),
    ToyClass("sand", "stuff", (230, 200, 110)),
    ToyClass("water", "stuff", (0, 60, 200)),
    ToyClass("brick", "stuff", (170, 60, 40)),
    ToyClass("snow", "stuff", (235, 235, 250)),
    ToyClass("wood", "stuff", (120, 80, 30)),
    ToyClass("road", "stuff", (90, 90, 90)),
    ToyClass("ball", "thing", (255, 0, 0)),
    ToyClass("star", "thing", (255, 230, 0)),
    ToyClass("fish", "thing", (255, 130, 0)),
    ToyClass("kite", "thing", (150, 40, 200)),
    ToyClass("flower", "thing", (255, 100, 180)),
    ToyClass("house", "thing", (0, 200, 200)),
)

NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
NUM_CLASSES = len(CLASSES)
STUFF: tuple[int, ...] = tuple(i for i, c in enumerate(CLASSES) if c.kind == "stuff")
THINGS: tuple[int, ...] = tuple(i for i, c in enumerate(CLASSES) if c.kind == "thing")
PALETTE: tuple[tuple[int, int, int], ...] = tuple(c.color for c in CLASSES)


def class_index(name: str) -> int:
    try:
        return NAMES.index(name)
    except ValueError:
        raise KeyError(f"{name!r} is not a toy-world class; known: {', '.join(NAMES)}") from None


def vocabulary_text() -> str:
    """The vocabulary file's content: one class per line, in label-index order."""
    return "".join(f"{name}\n" for name in NAMES)


def write_vocabulary(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(vocabulary_text())
    return path


def colorize(label, palette=PALETTE):
    """(H, W) class indices -> (H, W, 3) uint8 RGB using the palette (unknown indices are black)."""
    import numpy as np

    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.asarray(label).clip(0, 255).astype(np.uint8)]
