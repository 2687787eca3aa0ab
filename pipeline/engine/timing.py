"""Optional per-section wall-clock accounting, for profiles and the benchmark.

Disabled (the default) it costs one attribute check per section. Enabled on CUDA, each section
synchronises the device so that its time is the GPU time of its kernels, not their launch time.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import torch


class SectionTimer:
    def __init__(self, enabled: bool = False, device: torch.device | None = None):
        self.enabled = enabled
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @property
    def sync(self) -> bool:
        """Decided when a section runs: the Segmenter builds its timer disabled, and profiles and
        `bench` switch it on later, when a flag computed once would still say "no sync"."""
        return self.enabled and self.device is not None and self.device.type == "cuda"

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def shares(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1.0
        return {k: v / total for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}
