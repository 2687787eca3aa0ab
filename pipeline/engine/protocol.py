"""What the run layer needs of an engine, as typed protocols (structural: no base class to inherit).

`pipeline.engine.Segmenter` (ResCLIP) and `pipeline.student.engine.StudentEngine` satisfy them, and
so does any test double with the same attributes. The stage (`pipeline.run.stage.ShardLabeler`)
needs `LabelEngine`; the actor, which also writes what the engine is into dataset.json, needs
`DescribedEngine`. An engine factory that returns something else fails at start-up with a
TypeError naming what is missing, not deep inside the first shard. `io.jpeg_draft` needs a
`FullSizeEngine` (the Segmenter; the student and the test doubles are not, and decode exactly).
An engine whose `batches_by_shape` is true (the Segmenter in whole-image mode) gets its
batches regrouped by `inference_size` from the stage.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np


class Prediction(Protocol):
    """One image's output."""

    pred: np.ndarray  # (H, W) integer class index at the input size
    confidence: np.ndarray  # (H, W) probability of `pred`: float in 0..1, or uint8 round(255 p)


class VocabularyLike(Protocol):
    names: Sequence[str]  # class index -> display name
    synonyms: Sequence[Sequence[str]]
    colors: Sequence[Sequence[int]]  # class index -> RGB


@runtime_checkable
class LabelEngine(Protocol):
    """Enough to label a shard."""

    @property
    def num_classes(self) -> int: ...

    @property
    def patch_size(self) -> int | tuple[int, int]:
        """An image needs at least one whole patch per side (smaller ones become `too_small` rows)."""
        ...

    def predict(self, images: Sequence[np.ndarray], return_probs: bool = False) -> Sequence[Prediction]:
        """uint8 RGB arrays (H, W, 3) of any sizes -> one prediction each, at the input size."""
        ...


@runtime_checkable
class FullSizeEngine(LabelEngine, Protocol):
    """A `LabelEngine` that says the size it infers at and labels an image decoded smaller than
    that image's full size (JPEG draft mode) at the full size."""

    def inference_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) an image of (height, width) is inferred at; a decode no smaller loses nothing."""
        ...

    def predict(self, images: Sequence[np.ndarray], return_probs: bool = False,
                out_sizes: Optional[Sequence[tuple[int, int]]] = None) -> Sequence[Prediction]:
        """As `LabelEngine.predict`, each prediction at `out_sizes[i]` (H, W) when given, inferred at
        `inference_size(H, W)` whatever the size of `images[i]`."""
        ...


@runtime_checkable
class DescribedEngine(LabelEngine, Protocol):
    """A `LabelEngine` that can say what it is (dataset.json's vocabulary and model identity)."""

    @property
    def vocabulary(self) -> VocabularyLike: ...

    @property
    def model_identity(self) -> Mapping[str, Any]: ...


def engine_device(engine: LabelEngine) -> Optional[Any]:
    """The torch device an engine runs on, when it says (sizes the decode pool); None otherwise.

    Optional on purpose: a CPU-only engine (or a test double) has no device to report."""
    return getattr(engine, "device", None)


def check_engine(engine: object, protocol: type = LabelEngine) -> None:
    """TypeError naming the missing members when `engine` does not satisfy `protocol`."""
    if isinstance(engine, protocol):
        return
    wanted = [n for n in ("num_classes", "patch_size", "predict", "vocabulary", "model_identity")
              if n in dir(protocol)]
    missing = [n for n in wanted if not hasattr(engine, n)]
    raise TypeError(f"engine {type(engine).__name__} is not a {protocol.__name__}: it lacks {', '.join(missing)} "
                    "(see pipeline/engine/protocol.py)")
