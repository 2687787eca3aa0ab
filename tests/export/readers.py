"""Each export format read back by its framework's own reader (or, for CVAT, the documented layout
read the way CVAT's importer does). Every loader returns {key: (image RGB array, label array)}."""
from __future__ import annotations

import csv
import io
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def voc(root: Path, image_set: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """torchvision.datasets.VOCSegmentation over ROOT/VOCdevkit/VOC2012 (where the export went)."""
    from torchvision.datasets import VOCSegmentation

    ds = VOCSegmentation(str(root), year="2012", image_set=image_set, download=False)
    keys = [line.strip() for line in (Path(ds.root) / "VOCdevkit/VOC2012/ImageSets/Segmentation"
                                      / f"{image_set}.txt").read_text().splitlines()]
    out = {}
    for i, key in enumerate(keys):
        img, target = ds[i]
        assert img.mode == "RGB" and target.mode == "P", (key, img.mode, target.mode)
        out[key] = (np.array(img), np.array(target))
    assert len(out) == len(ds)
    return out


def _mmcv_without_compiled_ops() -> None:
    """mmcv-lite ships no compiled ops; `mmseg.utils` imports `mmcv.ops.point_sample` at import time
    for its mask-classification heads only. A module whose one function refuses to run lets the
    dataset and transforms import; nothing the loader runs touches it."""
    if "mmcv.ops" in sys.modules:
        return
    try:
        import mmcv.ops  # noqa: F401  (full mmcv: the real one)
    except (ImportError, ModuleNotFoundError):
        ops = types.ModuleType("mmcv.ops")

        def point_sample(*_args, **_kwargs):
            raise RuntimeError("mmcv-lite has no compiled ops (point_sample)")

        ops.point_sample = point_sample
        sys.modules["mmcv.ops"] = ops


def mmseg(dest: Path, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mmsegmentation's BaseSegDataset with LoadImageFromFile + LoadAnnotations, as a config would."""
    import json

    _mmcv_without_compiled_ops()
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    meta = json.loads((dest / "metainfo.json").read_text())
    assert isinstance(meta["img_suffix"], str)
    ds = BaseSegDataset(
        data_root=str(dest), data_prefix=dict(img_path=f"img_dir/{split}", seg_map_path=f"ann_dir/{split}"),
        ann_file=f"splits/{split}.txt", img_suffix=meta["img_suffix"], seg_map_suffix=meta["seg_map_suffix"],
        metainfo=dict(classes=tuple(meta["classes"]), palette=meta["palette"]),
        # transform objects, not registry dicts: `register_all_modules` would import mmseg.models,
        # whose losses need mmcv's compiled ops
        pipeline=[LoadImageFromFile(), LoadAnnotations()], serialize_data=False)
    out = {}
    prefix = str(dest / "img_dir" / split) + "/"
    for i in range(len(ds)):
        item = ds[i]
        key = item["img_path"][len(prefix):-len(meta["img_suffix"])]
        out[key] = (item["img"][..., ::-1].copy(), item["gt_seg_map"])  # mmcv decodes to BGR
    return out


def hf(dest: Path, cache: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """datasets.load_dataset(DEST): {split: {key: (image, label)}}."""
    import datasets

    loaded = datasets.load_dataset(str(dest), cache_dir=str(cache))
    out = {}
    for split, rows in loaded.items():
        assert isinstance(rows.features["image"], datasets.Image)
        got = {}
        for row in rows:
            assert row["image"].mode == "RGB", (row["key"], row["image"].mode)
            got[row["key"]] = (np.array(row["image"]), np.array(row["label"]))
        out[split] = got
    return out


def cvat(dest: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The "Segmentation mask 1.1" zip read as CVAT's importer does: labelmap.txt's colours, the
    item list in ImageSets/Segmentation/default.txt, each SegmentationClass/NAME.png's colours ->
    label indices (every colour must be declared); the images from DEST/images. Keys via keys.csv."""
    with zipfile.ZipFile(dest / "segmentation_mask_1.1.zip") as zf:
        labelmap = [line.split(":") for line in zf.read("labelmap.txt").decode().splitlines()
                    if line and not line.startswith("#")]
        colors = {tuple(int(v) for v in fields[1].split(",")): i for i, fields in enumerate(labelmap)}
        assert len(colors) == len(labelmap), "labelmap colours must be unique"
        assert labelmap[0][0] == "background" and labelmap[0][1] == "0,0,0"
        names = zf.read("ImageSets/Segmentation/default.txt").decode().split()
        keys = {row["name"]: row for row in csv.DictReader(io.StringIO((dest / "keys.csv").read_text()))}
        out = {}
        for name in names:
            rgb = np.array(Image.open(io.BytesIO(zf.read(f"SegmentationClass/{name}.png"))).convert("RGB"))
            flat = rgb.reshape(-1, 3)
            uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
            undeclared = [tuple(c) for c in uniq if tuple(int(v) for v in c) not in colors]
            assert not undeclared, f"{name}: colours not in labelmap.txt: {undeclared[:3]}"
            lut = np.array([colors[tuple(int(v) for v in c)] for c in uniq])
            label = lut[inverse.reshape(-1)].reshape(rgb.shape[:2])
            image = np.array(Image.open(dest / keys[name]["image"]))
            out[keys[name]["key"]] = (image, label)
    return out
