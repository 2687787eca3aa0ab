"""`evaluate_output` and `pseudolabel eval` on output directories built with tests/output_fixture.py."""
import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from output_fixture import FakeSample, write_output_dir
from pipeline.cli import main as cli_main
from pipeline.evaluation import evaluate_output
from pipeline.io.tarfiles import write_tar

pytestmark = pytest.mark.timeout(60)

NAMES = ["background", "cat", "dog", "bird"]  # "bird" is in neither gt nor predictions
IGN = 255
H, W = 8, 10


def _pred(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, size=(H, W))
    label[rng.random((H, W)) < 0.1] = IGN
    conf = np.where(np.arange(W)[None, :] < W // 2, 0.9, 0.3) * np.ones((H, 1))  # left half sure, right half not
    return label, conf


def _gt_from(label, seed):
    """Ground truth = prediction with some pixels changed, ignored labels filled, a VOC-like border."""
    rng = np.random.default_rng(100 + seed)
    gt = np.where(label == IGN, rng.integers(0, 3, size=label.shape), label)
    flip = rng.random(label.shape) < 0.25
    gt[flip] = rng.integers(0, 3, size=int(flip.sum()))
    gt[0, :] = IGN  # boundary pixels, as in VOC's SegmentationClass
    return gt.astype(np.uint8)


def _reference_confusion(pairs, num_classes, conf_threshold=None):
    """Independent pixel loop: rows gt, columns prediction + ignore column."""
    cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for gt, pred, conf in pairs:
        for g, p, c in zip(gt.ravel(), pred.ravel(), conf.ravel()):
            if g == IGN:
                continue
            if p == IGN or (conf_threshold is not None and round(255 * c) / 255 < conf_threshold):
                p = num_classes
            cm[g, p] += 1
    return cm


@pytest.fixture
def scene(tmp_path):
    """Two shards; s1 has a failed sample; sample a2 has no gt; the failed sample has one."""
    preds = {key: _pred(i) for i, key in enumerate(["a0", "a1", "a2", "b0"])}
    image = np.full((H, W, 3), 90, dtype=np.uint8)
    shards = {
        "s0": [FakeSample(k, image, preds[k][0], preds[k][1]) for k in ("a0", "a1", "a2")],
        "s1": [FakeSample("b0", image, *preds["b0"]), FakeSample("bx", None, error="DecodeError: broken jpeg")],
    }
    out = write_output_dir(tmp_path / "out", shards, NAMES)
    gts = {k: _gt_from(preds[k][0], i) for i, k in enumerate(["a0", "a1", "b0"])}
    gts["bx"] = np.zeros((H, W), dtype=np.uint8)
    scored = [(gts[k], preds[k][0], preds[k][1]) for k in ("a0", "a1", "b0")]
    return out, preds, gts, scored


def _voc_folder(folder, gts):
    folder.mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192]  # index 255: VOC's border colour
    for key, gt in gts.items():
        img = Image.frombytes("P", (W, H), gt.tobytes())
        img.putpalette(palette)
        img.save(folder / f"{key}.png")
    return folder


def test_png_folder_matches_pixel_loop_reference(scene, tmp_path):
    out, _preds, gts, scored = scene
    gt_dir = _voc_folder(tmp_path / "SegmentationClass", gts)
    assert Image.open(gt_dir / "a0.png").mode == "P"
    result = evaluate_output(out.root, gt_dir)
    expected = _reference_confusion(scored, 4)
    np.testing.assert_array_equal(result.confusion, expected)
    tp = np.diag(expected[:, :4])
    gt_px, pred_px = expected.sum(1), expected[:, :4].sum(0)
    iou = tp[:3] / (gt_px[:3] + pred_px[:3] - tp[:3])
    d = result.to_dict()
    assert d["per_class_iou"]["bird"] is None
    assert [d["per_class_iou"][n] for n in NAMES[:3]] == pytest.approx(list(iou), abs=1e-6)
    assert d["miou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert d["pixel_accuracy"] == pytest.approx(tp.sum() / expected.sum(), abs=1e-6)
    assert d["coverage"] == pytest.approx(1 - expected[:, 4].sum() / expected.sum(), abs=1e-6)
    assert d["fwiou"] == pytest.approx(float(np.sum(gt_px[:3] / expected.sum() * iou)), abs=1e-6)
    assert result.num_images == 3
    assert result.missing_gt == 1  # a2
    assert result.missing_prediction == 1 and result.failed_with_gt == 1  # bx


def test_sweep_rethresholds_with_stored_confidence(scene, tmp_path):
    out, _preds, gts, scored = scene
    result = evaluate_output(out.root, _voc_folder(tmp_path / "gt", gts), sweep_thresholds=[0.5, 0.0, 0.95])
    assert [p.threshold for p in result.sweep] == [0.0, 0.5, 0.95]
    ref = _reference_confusion(scored, 4, 0.5)
    at_half = result.sweep[1].metrics
    assert at_half.coverage == pytest.approx(1 - ref[:, 4].sum() / ref.sum())
    assert at_half.covered_accuracy == pytest.approx(np.trace(ref[:, :4]) / (ref.sum() - ref[:, 4].sum()))
    assert result.sweep[0].metrics.miou == pytest.approx(result.metrics.miou)  # t = 0 changes nothing
    assert result.sweep[2].metrics.coverage == 0.0  # no pixel is that sure
    coverages = [p.metrics.coverage for p in result.sweep]
    assert coverages == sorted(coverages, reverse=True)
    assert 0.3 < at_half.coverage < 0.6  # about the left half, minus ignored pixels


def test_tar_ground_truth_with_class_map(scene, tmp_path):
    out, _preds, gts, scored = scene
    raw_ids = {0: 10, 1: 20, 2: 30, IGN: IGN}
    gt_tars = tmp_path / "gt_tars"
    gt_tars.mkdir()
    members = {}
    for key, gt in gts.items():
        raw = np.vectorize(raw_ids.get)(gt).astype(np.uint8)
        if key == "a0":
            raw[1, :3] = 99  # an id the class map does not list: not scored, counted
        members[key] = raw
    for name, keys in (("gt-000", ["a0", "a1"]), ("gt-001", ["b0", "bx"])):
        entries = []
        for key in keys:
            entries.append((f"{key}.jpg", b"not a mask"))
            buf = io.BytesIO()
            Image.fromarray(members[key]).save(buf, format="PNG")
            entries.append((f"{key}.label.png", buf.getvalue()))
        write_tar(gt_tars / f"{name}.tar", entries)
    cmap = tmp_path / "map.yaml"
    cmap.write_text(yaml.safe_dump({10: "background", 20: "cat", 30: 2, 40: None}))
    expected_pairs = list(scored)
    a0_gt = gts["a0"].copy()
    a0_gt[1, :3] = IGN
    expected_pairs[0] = (a0_gt, scored[0][1], scored[0][2])
    expected = _reference_confusion(expected_pairs, 4)
    for spec in (gt_tars, str(gt_tars / "gt-{000..001}.tar"), str(gt_tars / "*.tar"),
                 [gt_tars / "gt-000.tar", gt_tars / "gt-001.tar"]):
        result = evaluate_output(out.root, spec, class_map=cmap)
        np.testing.assert_array_equal(result.confusion, expected)
        assert result.unmapped_gt_pixels == 3
        assert result.unmapped_gt_ids == [99]


def test_cli_eval_prints_table_and_writes_json(scene, tmp_path, capsys):
    out, _preds, gts, _scored = scene
    gt_dir = _voc_folder(tmp_path / "gt", gts)
    json_path = tmp_path / "res" / "eval.json"
    rc = cli_main(["eval", str(out.root), "--gt", str(gt_dir), "--json", str(json_path), "--save",
                   "--sweep-min-confidence", "0,0.5,0.8"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "cat" in printed and "min conf" in printed
    data = json.loads(json_path.read_text())
    for key in ("miou", "per_class_iou", "pixel_accuracy", "fwiou", "coverage", "confusion", "sweep"):
        assert key in data
    assert len(data["confusion"]) == 4 and len(data["confusion"][0]) == 5
    assert [p["threshold"] for p in data["sweep"]] == [0.0, 0.5, 0.8]
    saved = json.loads((out.root / "eval.json").read_text())
    assert saved["miou"] == data["miou"]


def test_cli_eval_errors_are_user_errors(scene, tmp_path, capsys):
    out, _preds, gts, _scored = scene
    bad = {k: v.copy() for k, v in gts.items()}
    bad["a0"][2, 2] = 7  # neither a class nor 255
    rc = cli_main(["eval", str(out.root), "--gt", str(_voc_folder(tmp_path / "bad", bad))])
    assert rc == 2
    assert "--class-map" in capsys.readouterr().err
    small = {k: v[:4] for k, v in gts.items()}
    folder = tmp_path / "small"
    folder.mkdir()
    for k, v in small.items():
        Image.fromarray(v).save(folder / f"{k}.png")
    assert cli_main(["eval", str(out.root), "--gt", str(folder)]) == 2
    assert "original image size" in capsys.readouterr().err
    assert cli_main(["eval", str(out.root), "--gt", str(tmp_path / "nowhere.tar")]) == 2
