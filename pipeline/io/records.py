"""The one record that travels through a shard's stage: read -> decode -> infer -> encode -> write.

Each step fills its fields and drops the bulky ones it consumed (`data`, `rgb`), so a batch in
flight holds at most one copy of each image.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

OK = "ok"
ERROR = "error"


class SampleError(Exception):
    """A sample that cannot be labeled; becomes an `error` row `"KIND: message"`, never stops a shard."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass
class SampleResult:
    key: str  # WebDataset __key__
    sample_index: int  # 0-based position in its input shard
    source_shard: str  # input shard URL as given
    image_member: Optional[str] = None  # extension of the image member used; None when there was none
    data: Optional[bytes] = field(default=None, repr=False)  # encoded image (dropped after decoding)
    rgb: Optional[np.ndarray] = field(default=None, repr=False)  # (H, W, 3) uint8 (dropped after inference)
    source_mode: Optional[str] = None  # Pillow mode before conversion to RGB
    error: Optional[SampleError] = None
    width: Optional[int] = None
    height: Optional[int] = None
    label_png: Optional[bytes] = field(default=None, repr=False)
    conf_png: Optional[bytes] = field(default=None, repr=False)
    mean_confidence: Optional[float] = None
    ignored_pixels: Optional[int] = None
    classes: Optional[list[int]] = None
    class_pixels: Optional[list[int]] = None
    labeled_at: Optional[dt.datetime] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def fail(self, error: SampleError) -> None:
        self.error = error
        self.data = None
        self.rgb = None

    def label_member(self) -> str:
        return f"{self.key}.label.png"

    def conf_member(self) -> str:
        return f"{self.key}.conf.png"

    def to_row(self, mask_shard: str) -> dict[str, Any]:
        """One manifest row (schemas/manifest-v1.json)."""
        ok = self.ok
        return {
            "key": self.key,
            "sample_index": self.sample_index,
            "source_shard": self.source_shard,
            "image_member": self.image_member,
            "status": OK if ok else ERROR,
            "error": None if ok else str(self.error),
            "width": self.width,
            "height": self.height,
            "mask_shard": mask_shard if ok else None,
            "label_member": self.label_member() if ok else None,
            "conf_member": self.conf_member() if ok else None,
            "mean_confidence": self.mean_confidence if ok else None,
            "ignored_pixels": self.ignored_pixels if ok else None,
            "classes": self.classes if ok else None,
            "class_pixels": self.class_pixels if ok else None,
            "labeled_at": self.labeled_at or dt.datetime.now(dt.timezone.utc),
        }
