"""Reading a `pseudolabel run` OUTPUT back for comparisons, and a faulty engine. Importable by Ray
workers as `tests.pipeline.helpers` (test modules themselves are not)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.tarfiles import iter_members


def snapshot(out: Path, names: list[str]) -> dict[str, Any]:
    """Per shard: manifest rows without `labeled_at`, and the mask tar's (member, bytes) list."""
    snap = {}
    for name in names:
        rows = pq.read_table(out / "manifest" / f"{name}.parquet").to_pylist()
        for r in rows:
            r.pop("labeled_at")
        snap[name] = {"rows": rows, "masks": list(iter_members(out / "masks" / f"{name}.tar"))}
    return snap


def assert_same_output(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["rows"] == b[name]["rows"], f"manifest of {name} differs"
        assert [m for m, _ in a[name]["masks"]] == [m for m, _ in b[name]["masks"]], f"members of {name} differ"
        for (member, x), (_, y) in zip(a[name]["masks"], b[name]["masks"]):
            assert x == y, f"{name}/{member} differs"


class _NoMasks:
    """An engine with a bug: predict returns objects without masks."""

    def __init__(self, cfg):
        from pipeline.engine import Segmenter

        self.real = Segmenter.from_config(cfg)
        self.vocabulary, self.num_classes = self.real.vocabulary, self.real.num_classes
        self.model_identity, self.patch_size = self.real.model_identity, self.real.patch_size

    def predict(self, images, return_probs=False):
        return [object() for _ in images]


def broken_engine(cfg):
    return _NoMasks(cfg)
