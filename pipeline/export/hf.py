"""A Hugging Face `datasets` layout: Parquet files with `Image` features and a dataset card.

    DEST/README.md                       YAML header: one config, a data_files entry per split
    DEST/data/{train,validation}-NNNNN.parquet   columns key (string), image, label (Image features:
                                          struct<bytes, path>: the image as the labeler saw it, RGB,
                                          `pipeline.export.images`, and the palette PNG), original_path
    DEST/id2label.json                   {"0": "sky", ...}, the convention of HF segmentation models
    DEST/keys.csv                        key, split, original path, source shard, mean confidence

`datasets.load_dataset(DEST)` returns a DatasetDict whose `image` / `label` decode to PIL images;
`np.array(row["label"])` holds the class indices (255 = ignore). The Parquet schema carries the
`huggingface` metadata `datasets` itself writes, so the features are Images without a cast; this
module writes it with pyarrow alone (`datasets` is not a dependency).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.export.layouts import ExportSummary, KeysFile, palette_png, prepare
from pipeline.export.samples import ExportSample
from pipeline.io.atomic import atomic_local_path

HF_SPLITS = {"train": "train", "val": "validation"}
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_FEATURES = {"key": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"}, "label": {"_type": "Image"},
             "original_path": {"dtype": "string", "_type": "Value"}}
SCHEMA = pa.schema([("key", pa.string()), ("image", _IMAGE), ("label", _IMAGE), ("original_path", pa.string())],
                   metadata={"huggingface": json.dumps({"info": {"features": _FEATURES}})})


FILE_BYTES = 256 * 2**20  # a Parquet file is written once its rows hold this many image bytes


class _SplitWriter:
    def __init__(self, dest: Path, split: str, rows_per_file: int):
        self.dest, self.split, self.rows_per_file = dest, split, rows_per_file
        self.rows: list[dict] = []
        self.bytes = 0  # held in memory: 1000 re-encoded 12 MP photos would be ~4 GB
        self.files = 0
        self.count = 0

    def add(self, s: ExportSample, image: bytes, suffix: str, label_png: bytes) -> None:
        self.rows.append({"key": s.key, "image": {"bytes": image, "path": f"{s.key}{suffix}"},
                          "label": {"bytes": label_png, "path": f"{s.key}.png"}, "original_path": s.original_path})
        self.count += 1
        self.bytes += len(image) + len(label_png)
        if len(self.rows) >= self.rows_per_file or self.bytes >= FILE_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        path = self.dest / "data" / f"{self.split}-{self.files:05d}.parquet"
        with atomic_local_path(path, fsync=False) as tmp:  # random name, created exclusively
            pq.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA), tmp)
        self.files += 1
        self.rows = []
        self.bytes = 0


def write_hf(dest: Path, samples: Iterable[ExportSample], names: list[str], colors: list[tuple[int, int, int]],
             rows_per_file: int = 1000, summary: Optional[ExportSummary] = None,
             image_format: str = "jpg") -> ExportSummary:
    summary = summary or ExportSummary(str(dest), "hf")
    writers: dict[str, _SplitWriter] = {}
    keys = KeysFile(dest / "keys.csv")
    try:
        for s in samples:
            image = prepare(s, image_format, summary)
            if image is None:
                continue
            split = HF_SPLITS[s.split]
            writer = writers.setdefault(split, _SplitWriter(dest, split, rows_per_file))
            writer.add(s, image.data, image.suffix, palette_png(s.label, colors))
            keys.add(s, f"data/{split}-*.parquet", f"data/{split}-*.parquet")
    finally:
        keys.close()
    summary.image_suffixes = [f".{image_format}"]
    for w in writers.values():
        w.flush()
        summary.samples[w.split] = w.count
    (dest / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}, indent=2) + "\n")
    (dest / "README.md").write_text(_card(list(writers), names))
    return summary


def _card(splits: list[str], names: list[str]) -> str:
    files = "".join(f"  - split: {s}\n    path: data/{s}-*.parquet\n" for s in splits)
    classes = ", ".join(names)
    return (
        "---\nconfigs:\n- config_name: default\n  data_files:\n" + files + "---\n\n"
        "# Pseudo-labeled segmentation data (`pseudolabel export --format hf`)\n\n"
        "Columns: `key`, `image` (RGB, the pixels the labels were made on: EXIF orientation applied), `label` "
        "(palette PNG of the image's size: pixel value = class index, 255 = ignore), `original_path`. "
        "Classes (index order, also in `id2label.json`): " + classes + "\n"
    )
