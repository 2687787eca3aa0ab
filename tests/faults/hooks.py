"""Engine factories that fail while a worker starts, for `run_pipeline(engine_factory=...)`.
Importable by Ray workers (`tests.faults.hooks`); bind arguments with functools.partial."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional


def dies_while_loading(cfg: Any, marker: Optional[str] = None, times: int = 1) -> Any:
    """Load the real engine, except that the first `times` workers to get here exit abruptly (as
    a killed or crashed process would: no exception, no clean-up) part way through loading. Each
    death appends a line to `marker`; without a marker every worker dies."""
    from pipeline.engine import Segmenter

    if marker is None or _deaths(marker) < times:
        if marker is not None:
            with open(marker, "a") as f:
                f.write(f"{os.getpid()}\n")
        logging.getLogger("pipeline.run.actor").warning("test hook: exiting while loading the engine")
        os._exit(1)
    return Segmenter.from_config(cfg)


def _deaths(marker: str) -> int:
    path = Path(marker)
    return len(path.read_text().splitlines()) if path.exists() else 0
