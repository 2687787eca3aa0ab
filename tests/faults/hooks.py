"""Faults for runs on a real Ray: engine factories that fail while a worker starts
(`run_pipeline(engine_factory=...)`, arguments bound with functools.partial) and fault factories
(`fault_factory=...`). Importable by Ray workers as `tests.faults.hooks`."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


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


def transport_error() -> BaseException:
    """What aiohttp raises for an answer it refuses: it carries the headers as a multidict, which
    pickle (and so Ray) cannot serialise."""
    import aiohttp
    from aiohttp.client_reqrep import RequestInfo
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    headers = CIMultiDictProxy(CIMultiDict({"x-amz-request-id": "fault"}))
    url = URL("http://127.0.0.1/bucket/out/masks/x.tar")
    return aiohttp.ClientResponseError(RequestInfo(url, "PUT", headers, url), (), status=400,
                                       message="Bad Request", headers=headers)


@dataclass(frozen=True)
class RaiseTransportError:
    """Fault factory for `run_pipeline(fault_factory=...)`: the worker labeling `shard` raises
    `transport_error()` from its first progress report (inside the stage, as a failed upload would)."""

    shard: str

    def __call__(self) -> Callable[[Any], None]:
        return self._on_progress

    def _on_progress(self, p: Any) -> None:
        if p.shard == self.shard:
            raise transport_error()
