"""The student: recipe, confidence-aware loss, exact resume, card, engine conformance, scoring."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from output_fixture import synthetic_sample, write_output_dir  # noqa: E402

from pipeline.cli import main as cli  # noqa: E402
from pipeline.config import ConfigError, load_config  # noqa: E402
from pipeline.student.config import ConfidenceRecipe, load_student_config  # noqa: E402
from pipeline.student.loss import class_weights, confidence_loss  # noqa: E402

NAMES = ["background", "red", "green", "blue"]
TINY = ["optim.steps=6", "optim.batch_size=4", "optim.warmup_steps=2", "data.short_side=24", "data.crop=16",
        "model.width=8", "checkpoint_every=2", "threads=1"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("student")
    shards = {f"p-{s:06d}": [synthetic_sample(rng, f"s{s}_{i}", (24, 32), len(NAMES)) for i in range(6)]
              for s in range(2)}
    out = write_output_dir(root / "out", shards, NAMES)
    gt = root / "gt"
    gt.mkdir()
    for samples in shards.values():  # gt = the labels with ignored pixels filled by class 0
        for s in samples:
            Image.fromarray(np.where(s.label == 255, 0, s.label).astype(np.uint8)).save(gt / f"{s.key}.png")
    return out, gt


def test_recipe_overrides_and_errors():
    cfg = load_student_config("cpu", ["optim.steps=5", "confidence.min_confidence=0.7"])
    assert cfg.optim.steps == 5 and cfg.confidence.min_confidence == 0.7 and cfg.model.arch == "small"
    assert load_student_config("gpu").model.arch == "deeplabv3_resnet50"
    with pytest.raises(ConfigError, match="optim.lr"):
        load_student_config("cpu", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_student_config("cpu", ["optim.stepz=1"])
    with pytest.raises(ConfigError, match="preset"):
        load_student_config("tpu")
    for bad in ("predict.scales=[]", "predict.scales=[0]", "predict.scales=[1, 20]"):
        with pytest.raises(ConfigError, match="predict.scales"):
            load_student_config("cpu", [bad])


def test_loss_ignores_unsure_pixels_and_weights_the_rest():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    label = torch.tensor([[[0, 1], [2, 255]]])
    conf = torch.tensor([[[0.9, 0.2], [0.6, 1.0]]])
    recipe = ConfidenceRecipe(min_confidence=0.5, weight=True, class_balance=0.0)
    confidence_loss(logits, label, conf, recipe, 255).backward()
    grad = logits.grad.abs().sum(dim=1)[0]
    assert grad[0, 1] == 0 and grad[1, 1] == 0  # below the threshold, and the ignore value
    assert grad[0, 0] > 0 and grad[1, 0] > 0
    plain = logits.detach().clone().requires_grad_(True)
    confidence_loss(plain, label, conf, ConfidenceRecipe(0.0, False, 0.0), 255).backward()
    assert plain.grad.abs().sum(dim=1)[0, 0, 1] > 0  # without the handling every labeled pixel counts
    w = class_weights(np.array([900, 100, 0]), 0.5)
    assert w[1] > w[0] and w[2] == 1.0 and float(w[:2].mean()) == pytest.approx(1.0)


def test_train_writes_student_and_card_and_resumes_exactly(fake, tmp_path):
    from pipeline.student.checkpoint import load_student_file
    from pipeline.student.data import class_pixel_counts, pseudo_label_dataset
    from pipeline.student.trainer import TrainData, train_student

    out, _gt = fake
    cfg = load_student_config("cpu", TINY)

    def data():
        ds = pseudo_label_dataset(str(out.root), cfg.data, cfg.seed)
        info = ds.selection.info
        return TrainData(ds, info.num_classes, info.ignore_index, list(info.names), list(info.colors),
                         class_pixel_counts(str(out.root), info.num_classes), {"output": str(out.root)})

    whole = train_student(cfg, data(), tmp_path / "whole")

    def crash(step, total, loss):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_student(cfg, data(), tmp_path / "resumed", progress=crash)
    assert not (tmp_path / "resumed" / "student.pt").exists()
    resumed = train_student(cfg, data(), tmp_path / "resumed", resume=True)
    a = load_student_file(whole.student_path)["state_dict"]
    b = load_student_file(resumed.student_path)["state_dict"]
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name
    card = json.loads((tmp_path / "whole" / "card.json").read_text())
    assert card["classes"] == NAMES and card["steps"] == 6 and card["recipe"]["optim"]["steps"] == 6
    assert card["machine"]["torch"] == torch.__version__ and card["data"]["output"] == str(out.root)
    with pytest.raises(Exception, match="another recipe"):
        train_student(load_student_config("cpu", [*TINY, "optim.lr=0.1"]), data(), tmp_path / "resumed", resume=True)


def test_train_command_eval_and_student_as_stage_engine(fake, tmp_path):
    """`pseudolabel train --eval --gt` writes eval.json; the student, picked by `model.student`, labels
    shards through the real stage, and those masks score what eval.json says."""
    from pipeline.evaluation.metrics import compute_metrics, confusion_counts
    from pipeline.io.shards import expand_input
    from pipeline.io.tarfiles import iter_members
    from pipeline.evaluation.outputs import decode_label_png
    from pipeline.run.actor import default_engine
    from pipeline.run.stage import ShardLabeler
    from pipeline.student.engine import StudentEngine

    out, gt = fake
    sets = [a for o in TINY for a in ("--set", o)]
    assert cli(["train", str(out.root), "--out", str(tmp_path / "s"), *sets, "--no-progress",
                "--eval", str(out.input_dir), "--gt", str(gt)]) == 0
    report = json.loads((tmp_path / "s" / "eval.json").read_text())
    assert 0.0 <= report["miou"] <= 1.0 and report["num_images"] == 12

    cfg = load_config(overrides=[f"model.student={tmp_path / 's' / 'student.pt'}", "device=cpu", "batch_size=4",
                                 "io.decode_threads=1"])
    engine = default_engine(cfg)
    assert isinstance(engine, StudentEngine) and engine.num_classes == len(NAMES)
    assert engine.vocabulary.names == NAMES and engine.patch_size == 16
    try:
        from pipeline.io.output_dir import OutputDir as Handle
    except ImportError:
        from pipeline.io.storage import Storage as Handle
    labeler = ShardLabeler(engine, cfg, Handle(str(tmp_path / "labels")), "test")
    try:
        results = [labeler.label(s) for s in expand_input(str(out.input_dir))]
    finally:
        labeler.close()
    assert sum(r.ok for r in results) == 12  # error rows of the fixture have images too: all are labeled
    confusion = np.zeros((len(NAMES), len(NAMES) + 1), np.int64)
    for r in results:
        for name, data in iter_members(tmp_path / "labels" / "masks" / f"{r.shard}.tar"):
            if name.endswith(".label.png"):
                truth = np.array(Image.open(gt / f"{name[:-len('.label.png')]}.png")).astype(np.int64)
                confusion += confusion_counts(truth, decode_label_png(data), len(NAMES), 255, 255)
    assert compute_metrics(confusion).miou == pytest.approx(report["miou"], abs=1e-6)

    # `pseudolabel predict --student`: the student labels single images too
    image = next(iter(out.shards.values()))[0].image
    Image.fromarray(image).save(tmp_path / "one.png")
    import argparse

    import pipeline.commands.predict as predict_command

    parser = argparse.ArgumentParser()
    predict_command.add_arguments(parser)
    probs = ["--probs"] if "--probs" in parser._option_string_actions else []  # probs are opt-in there
    assert cli(["predict", str(tmp_path / "one.png"), "--out", str(tmp_path / "pred"), "--set", "device=cpu",
                *probs, "--student", str(tmp_path / "s" / "student.pt")]) == 0
    npz = np.load(tmp_path / "pred" / "one.npz")
    assert npz["pred"].shape == image.shape[:2]
    assert npz["pred"].dtype == np.uint8 and npz["confidence"].dtype == np.uint8  # as the CLIP path writes
    assert npz["probs"].shape == (len(NAMES), *image.shape[:2])
    assert np.allclose(npz["probs"].sum(0), 1.0, atol=1e-4)
    assert np.array_equal(npz["pred"], engine.predict([image])[0].pred)


def test_predict_recipe_card_legacy_override_and_resume(fake, tmp_path):
    """`predict` decides how a trained student labels: new cards carry it, cards from before it
    mean one view at the training size, an explicit recipe wins; it never blocks a resume."""
    from pipeline.student.checkpoint import load_student_file
    from pipeline.student.config import DEFAULT_PREDICT_SCALES, PredictRecipe
    from pipeline.student.data import class_pixel_counts, pseudo_label_dataset
    from pipeline.student.engine import StudentEngine, tta_probs
    from pipeline.student.trainer import TrainData, train_student

    out, _gt = fake
    cfg = load_student_config("cpu", [*TINY, "predict.scales=[1.0,2.0]", "predict.flip=true"])
    ds = pseudo_label_dataset(str(out.root), cfg.data, cfg.seed)
    info = ds.selection.info
    data = TrainData(ds, info.num_classes, info.ignore_index, list(info.names), list(info.colors),
                     class_pixel_counts(str(out.root), info.num_classes), {"output": str(out.root)})
    path = train_student(cfg, data, tmp_path / "s").student_path
    blob = load_student_file(path)
    assert blob["card"]["recipe"]["predict"] == {"scales": [1.0, 2.0], "flip": True}
    image = next(iter(out.shards.values()))[0].image
    engine = StudentEngine(blob, device="cpu")
    expected = tta_probs(engine, image[None], flip=True, scales=(1.0, 2.0)).argmax(1)[0].numpy()
    assert np.array_equal(engine.predict([image])[0].pred, expected)
    single = StudentEngine(blob, device="cpu", predict=PredictRecipe(scales=[1.0], flip=False))
    plain = single._probs(image[None], image.shape[:2]).argmax(1)[0].numpy()
    assert single.single_view and np.array_equal(single.predict([image])[0].pred, plain)
    del blob["card"]["recipe"]["predict"]  # a card written before `predict` existed
    assert StudentEngine(blob, device="cpu").single_view
    assert list(load_student_config("cpu").predict.scales) == list(DEFAULT_PREDICT_SCALES)
    # Another `predict` resumes the same training (only the card's inference part differs).
    train_student(load_student_config("cpu", TINY), data, tmp_path / "s", resume=True)


def test_fingerprint_changes_with_a_student():
    base = load_config()
    assert base.model.student is None
    assert load_config(overrides=["model.student=/x/student.pt"]).fingerprint() != base.fingerprint()


def test_both_architectures_give_logits_at_the_input_size():
    from pipeline.student.model import build_student

    for preset in ("cpu", "gpu"):
        net = build_student(load_student_config(preset).model, 5).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 3, 48, 64)).shape == (1, 5, 48, 64)
