"""Per-shape tables bounded by bytes, not by entry count.

The PAMR pattern and SFR's path tables are built once per image or grid shape. Their sizes differ
by two orders of magnitude (a 224 crop's path tables take ~5 MB, a 336x2048 panorama's whole-image
ones ~2.4 GB), so a count-bounded LRU either thrashes on a corpus of many photo shapes or holds tens
of GB once a few panoramas pass. This LRU keeps the most recent shapes within a byte budget; a
table larger than the whole budget is built, returned and not kept.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, TypeVar

import torch

T = TypeVar("T")


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors in `value`: a tensor, a dataclass, or tuples / lists of them."""
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    return 0


@dataclass
class CacheInfo:
    hits: int
    misses: int
    entries: int
    bytes: int
    budget: int


class ShapeCache:
    """An LRU of built tables keyed by the builder's arguments, bounded by `budget` bytes."""

    def __init__(self, build: Callable[..., Any], budget: int):
        self.build = build
        self.budget = budget
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = self.hits = self.misses = 0
        self._lock = threading.Lock()  # the stage's threads never build these, but a test may
        functools.update_wrapper(self, build)

    def __call__(self, *key: Hashable) -> Any:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key][0]
            self.misses += 1
        value = self.build(*key)
        size = tensor_bytes(value)
        if size <= self.budget:
            with self._lock:
                self._entries[key] = (value, size)
                self._bytes += size
                while self._bytes > self.budget:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._bytes -= dropped
        return value

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, len(self._entries), self._bytes, self.budget)

    def cache_clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = self.hits = self.misses = 0


def shape_cache(budget_mb: int) -> Callable[[Callable[..., T]], ShapeCache]:
    """Decorator: `@shape_cache(512)` keeps at most 512 MiB of the function's results."""
    return lambda build: ShapeCache(build, budget_mb << 20)
