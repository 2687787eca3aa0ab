"""Start-up of the training loader as the output grows: selection + first batch at N shards.

    python jobs/bench_scale.py [--shards 200,1000,2000,10000] [--rows 20] [--repeats 2]

Builds a synthetic OUTPUT per N in a temporary folder (N manifests of `--rows` rows, dataset.json;
real image and mask tars for the first shard only, the one the first batch reads), then times
`PseudoLabelDataset(...)` (manifests read and filtered, shards grouped) plus `next(iter(loader))`.
Prints a table with the growth factor against the smallest N: linear start-up grows like N.
Synthetic manifests, a shared 2-core machine: read the ratios, not the absolute seconds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

CLASSES = 4
SIZE = (16, 24)  # (H, W) of every synthetic image


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def build(root: Path, shards: int, rows: int) -> None:
    from pipeline.io.schema import manifest_schema
    from pipeline.io.tarfiles import write_tar

    schema = manifest_schema()
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    (root / "out" / "manifest").mkdir(parents=True)
    (root / "out" / "masks").mkdir()
    (root / "in").mkdir()

    def one(i: int) -> None:
        name = f"shard-{i:06d}"
        table = []
        for j in range(rows):
            key = f"{name}-{j:04d}"
            table.append({f.name: None for f in schema} | dict(
                key=key, sample_index=j, source_shard=str(root / "in" / f"{name}.tar"), image_member="png",
                status="ok", width=SIZE[1], height=SIZE[0], mask_shard=f"masks/{name}.tar",
                label_member=f"{key}.label.png", conf_member=f"{key}.conf.png", mean_confidence=0.5 + j / (4 * rows),
                ignored_pixels=0, classes=[j % CLASSES], class_pixels=[SIZE[0] * SIZE[1]], labeled_at=now))
        pq.write_table(pa.Table.from_pylist(table, schema=schema), root / "out" / "manifest" / f"{name}.parquet")
        if i == 0:
            image = _png(np.zeros((*SIZE, 3), np.uint8))
            label = _png(np.zeros(SIZE, np.uint8))
            write_tar(root / "in" / f"{name}.tar", [(f"{name}-{j:04d}.png", image) for j in range(rows)])
            write_tar(root / "out" / "masks" / f"{name}.tar",
                      [m for j in range(rows) for m in ((f"{name}-{j:04d}.label.png", label),
                                                         (f"{name}-{j:04d}.conf.png", label))])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(shards)))
    (root / "out" / "dataset.json").write_text(json.dumps({
        "schema_version": 1, "num_classes": CLASSES, "ignore_index": 255, "label_dtype": "uint8",
        "vocabulary": [{"index": c, "name": f"c{c}", "synonyms": [f"c{c}"], "color": [c, c, c]}
                       for c in range(CLASSES)]}))


def startup(out: Path) -> float:
    from pipeline.training import PseudoLabelDataset, SampleFilter, make_dataloader
    from pipeline.training.transforms import RandomResizedCropFlip

    t0 = time.perf_counter()
    ds = PseudoLabelDataset(str(out), SampleFilter(min_mean_confidence=0.55, required_classes=[0, 1, 2]),
                            transform=RandomResizedCropFlip((16, 16)), shuffle_shards=False)
    batch = next(iter(make_dataloader(ds, batch_size=4, num_workers=0, pin_memory=False)))
    assert batch[0].shape[0] == 4
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="200,1000,2000,10000")
    parser.add_argument("--rows", type=int, default=20, help="manifest rows per shard")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.shards.split(",")]
    print(f"training loader start-up (selection + first batch), {args.rows} rows per shard, "
          f"best of {args.repeats}")
    print(f"{'shards':>8} {'seconds':>9} {'x time':>8} {'x shards':>9}")
    base = None
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp), n, args.rows)
            best = min(startup(Path(tmp) / "out") for _ in range(args.repeats))
        base = base or (best, n)
        print(f"{n:>8} {best:>9.2f} {best / base[0]:>8.1f} {n / base[1]:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
