"""How much of the shard stage's wall time the engine (and the GPU) waits, for jobs/gpu_check.py.

One shard of JPEGs is labeled end to end by the real stage (read, decode pool, inference, PNG
encode, tar + Parquet write). On a GPU a thread samples NVML's utilisation every 50 ms (pynvml,
when installed) and idle_share = 1 - mean utilisation: what better overlap (more decode threads, a
deeper prefetch) could still win. Time inside `predict` is no measure of that on CUDA, where
`predict` only queues kernels and returns (a saturated GPU would read idle): it is reported as
`engine_busy_s`, and used for idle_share only where NVML is absent (a CPU device, where `predict`
does the work), with `idle_source` saying which.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np


class _TimedEngine:
    """Forwards to the engine; adds up seconds spent in predict."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.busy = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def predict(self, images: Sequence[np.ndarray], return_probs: bool = True, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:  # kwargs: out_sizes, max_side (the stage's stored size), as the engine takes them
            return self._engine.predict(images, return_probs=return_probs, **kwargs)
        finally:
            self.busy += time.perf_counter() - t0
            self.calls += 1


def _nvml_sampler(stop: threading.Event, samples: list[int]) -> Optional[threading.Thread]:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML (CPU, or no bindings): utilisation stays unknown
        return None

    def loop() -> None:
        while not stop.wait(0.05):
            samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    thread = threading.Thread(target=loop, daemon=True, name="nvml-sampler")
    thread.start()
    return thread


def idle_share(nvml_samples: Sequence[int], busy_s: float, wall_s: float) -> tuple[float, str]:
    """(share of the run the device sat idle, where the number comes from): NVML's utilisation
    (percent of time a kernel ran) when sampled, else the share of wall time outside `predict`."""
    if nvml_samples:
        return max(0.0, 1 - float(np.mean(nvml_samples)) / 100), "nvml"
    return max(0.0, 1 - busy_s / wall_s) if wall_s > 0 else 0.0, "predict_time"


def measure_idle(cfg: Any, images: Sequence[np.ndarray]) -> dict[str, Any]:
    from pipeline.benchmark import write_jpeg_shard
    from pipeline.engine import Segmenter
    from pipeline.io.shards import ShardSpec
    from pipeline.io.output_dir import OutputDir
    from pipeline.run.stage import ShardLabeler, decode_threads

    engine = _TimedEngine(Segmenter.from_config(cfg))
    engine.predict(list(images[:1]), return_probs=False)  # warm-up: compiles and caches outside the timing
    engine.busy, engine.calls = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        shard = write_jpeg_shard(Path(tmp) / "idle-000000.tar", images)
        labeler = ShardLabeler(engine, cfg, OutputDir(str(Path(tmp) / "out")))
        stop, samples = threading.Event(), []
        sampler = _nvml_sampler(stop, samples)
        try:
            t0 = time.perf_counter()
            result = labeler.label(ShardSpec(name="idle-000000", url=str(shard)))
            wall = time.perf_counter() - t0
        finally:
            stop.set()
            if sampler is not None:
                sampler.join()
            labeler.close()
    if result.ok != len(images):
        raise RuntimeError(f"idle probe labeled {result.ok} of {len(images)} images")
    idle, source = idle_share(samples, engine.busy, wall)
    return {
        "images": len(images), "batch_size": cfg.batch_size, "wall_s": wall, "images_per_s": len(images) / wall,
        "engine_busy_s": engine.busy, "engine_calls": engine.calls, "idle_share": idle, "idle_source": source,
        "decode_threads": decode_threads(cfg, engine.device),
        "nvml_utilisation_mean": float(np.mean(samples)) if samples else None, "nvml_samples": len(samples),
    }
