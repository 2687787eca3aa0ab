"""Self-training rounds (issue 23): class-balanced selection, relabeling, the mean-teacher term, the
`gpu` student, and `pseudolabel selftrain` end to end through the CLI on tiny data."""
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
from pipeline.student.config import ConfidenceRecipe, load_student_config  # noqa: E402

NAMES = ["background", "red", "green", "blue"]
TINY = ["optim.steps=2", "optim.batch_size=4", "optim.warmup_steps=1", "data.short_side=24", "data.crop=16",
        "model.width=8", "checkpoint_every=1", "threads=1"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    rng = np.random.default_rng(23)
    root = tmp_path_factory.mktemp("selftrain")
    shards = {f"p-{s:06d}": [synthetic_sample(rng, f"s{s}_{i}", (24, 32), len(NAMES)) for i in range(4)]
              for s in range(2)}
    out = write_output_dir(root / "out", shards, NAMES)
    gt = root / "gt"
    gt.mkdir()
    for samples in shards.values():
        for s in samples:
            Image.fromarray(np.where(s.label == 255, 0, s.label).astype(np.uint8)).save(gt / f"{s.key}.png")
    return out, gt


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_class_thresholds_keep_each_classes_top_share():
    from pipeline.student.loss import selected
    from pipeline.student.selection import ConfidenceHistogram, class_thresholds, kept_share

    rng = np.random.default_rng(0)
    # Class 0: 200 pixels with confidences spread over 0.5..1; class 1: 50 pixels all low (0.2..0.4);
    # a global cut at 0.5 would drop all of class 1, the per-class cut keeps its best 30% too.
    conf0 = rng.permutation(np.linspace(128, 255, 200).round().astype(np.uint8))
    conf1 = rng.permutation(np.linspace(51, 102, 50).round().astype(np.uint8))
    label = np.concatenate([np.zeros(200, np.int64), np.ones(50, np.int64), np.full(10, 255)])
    conf = np.concatenate([conf0, conf1, np.zeros(10, np.uint8)])
    hist = ConfidenceHistogram(3)
    hist.add(label, conf, 255)
    assert hist.class_pixels.tolist() == [200, 50, 0]
    thresholds = class_thresholds(hist, 0.3)
    assert thresholds[2] == 0.0
    share = kept_share(hist, thresholds)
    assert 0.3 <= share[0] <= 0.3 + 2 / 200 and 0.3 <= share[1] <= 0.3 + 2 / 50  # at least p, ties at most +1 level
    # The loss keeps exactly those pixels: its own comparison, on the float confidences it sees.
    keep = selected(torch.from_numpy(label)[None], torch.from_numpy(conf.astype(np.float32) / 255.0)[None],
                    ConfidenceRecipe(0.0, False, 0.0), 255, torch.from_numpy(thresholds))[0].numpy()
    for c in (0, 1):
        top = np.sort(conf[label == c])[::-1][: int(np.ceil(0.3 * (label == c).sum()))]
        assert keep[label == c].sum() == round(share[c] * (label == c).sum())
        assert conf[(label == c) & keep].min() <= top.min()  # every one of the top 30% is kept
        assert conf[(label == c) & ~keep].max() < conf[(label == c) & keep].min()  # and only the most confident
    assert not keep[label == 255].any()
    with pytest.raises(ValueError, match="top_p"):
        class_thresholds(hist, 0.0)


def test_mix_with_teacher_and_flip_tta(fake, tmp_path):
    from pipeline.student.relabel import mix_teacher, to_masks, tta_probs

    student = torch.softmax(torch.randn(2, 4, 3, 5), dim=1)
    label = np.array([[[1, 2, 255, 0, 3]] * 3] * 2)
    conf = np.full(label.shape, 200, np.uint8)
    mixed = mix_teacher(student, label, conf, 0.5, 255)
    assert torch.allclose(mixed.sum(1), torch.ones(2, 3, 5), atol=1e-6)
    teacher_only, _ = to_masks(mix_teacher(student, label, conf, 1.0, 255))
    labeled = label != 255
    assert np.array_equal(teacher_only[labeled], label[labeled])  # weight 1: the teacher's labels
    assert np.array_equal(to_masks(mixed * 0 + student)[0], student.argmax(1).numpy())

    class Mirror(torch.nn.Module):  # a "network" that prefers class 0 on the left: not flip-equivariant
        def forward(self, x):
            ramp = torch.linspace(-3, 3, x.shape[-1]).expand(x.shape[0], 1, *x.shape[-2:])
            return torch.cat([-ramp, ramp], dim=1)

    class Engine:
        model, device, short_side, patch_size = Mirror(), torch.device("cpu"), 0, 1

    image = np.zeros((1, 4, 6, 3), np.uint8)
    plain = tta_probs(Engine(), image, flip=False)
    both = tta_probs(Engine(), image, flip=True)
    assert torch.allclose(both, (plain + plain.flip(-1)) / 2, atol=1e-6)  # the mirror's view, mirrored back
    Engine.short_side = 4  # multi-scale: each view at its own size, brought back to the image's
    multi = tta_probs(Engine(), image, flip=True, scales=(1.0, 2.0))
    assert multi.shape == (1, 2, 4, 6) and torch.allclose(multi.sum(1), torch.ones(1, 4, 6), atol=1e-5)


def test_consistency_teaches_ignored_pixels_and_resumes_exactly(fake, tmp_path):
    from pipeline.student.consistency import MeanTeacher, strong_view
    from pipeline.student.data import pseudo_label_dataset
    from pipeline.student.model import build_student
    from pipeline.student.trainer import TrainData, train_student

    cfg = load_student_config("cpu", [*TINY, "consistency.weight=1", "consistency.threshold=0"])
    net = build_student(cfg.model, 4)
    mt = MeanTeacher(net, cfg.consistency, seed=0)
    images = torch.rand(2, 3, 16, 16)
    view, boxes = strong_view(images, cfg.consistency, torch.Generator().manual_seed(1))
    assert view.shape == (2, 3, 12, 12) and len(boxes) == 2 and 0 <= float(view.min()) and float(view.max()) <= 1
    loss = mt.loss(net, images, step=5)  # no label at all: the term alone gives gradients
    loss.backward()
    assert float(loss.detach()) > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(p.grad is None for p in mt.model.parameters())  # the mean teacher is not trained by backprop

    out, _gt = fake
    steps = [*TINY, "optim.steps=4", "consistency.weight=1", "consistency.threshold=0"]
    c = load_student_config("cpu", steps)

    def data():
        ds = pseudo_label_dataset(str(out.root), c.data, c.seed)
        info = ds.selection.info
        return TrainData(ds, info.num_classes, info.ignore_index, list(info.names), list(info.colors))

    whole = train_student(c, data(), tmp_path / "whole")

    def crash(step, total, loss):  # checkpoint_every=1: the crash leaves the step-2 checkpoint
        if step == 2:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_student(c, data(), tmp_path / "part", progress=crash)
    assert "mean_teacher" in torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    resumed = train_student(c, data(), tmp_path / "part", resume=True)
    a = torch.load(whole.student_path, weights_only=False)["state_dict"]
    b = torch.load(resumed.student_path, weights_only=False)["state_dict"]
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_selftrain_rounds_resume_and_eval_keys(fake, tmp_path, capsys):
    """Through the CLI: rounds written, a finished round skipped on re-run, eval.json with the keys
    of `pseudolabel eval --json`, labels of round 2 made by round 1's student."""
    from pipeline.student.checkpoint import load_student_file
    from pipeline.student.engine import StudentEngine
    from pipeline.student.evaluate import score_engine

    out, gt = fake
    dest = tmp_path / "st"
    args = ["selftrain", str(out.root), "--out", str(dest), "--no-progress",
            *_sets(TINY), "--eval", str(out.input_dir), "--gt", str(gt)]
    assert cli([*args, "--rounds", "2"]) == 0
    for k in (1, 2):
        r = dest / f"round-{k}"
        assert (r / "student.pt").exists() and (r / "card.json").exists() and (r / "eval.json").exists()
        card = json.loads((r / "card.json").read_text())
        assert card["data"]["round"] == k and len(card["class_min_confidence"]) == len(NAMES)
    labels = json.loads((dest / "round-2" / "labels" / "labels.json").read_text())
    assert labels["samples"] == 8 and labels["student"]["pretrained"].endswith("round-1/student.pt")
    assert np.asarray(labels["histogram"]).sum() == 8 * 24 * 32  # the student labels every pixel
    first = (dest / "round-1" / "student.pt").stat().st_mtime_ns, (dest / "round-2" / "student.pt").stat().st_mtime_ns

    capsys.readouterr()
    assert cli([*args, "--rounds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "round 1/3: done before" in printed and "round 2/3: done before" in printed
    assert ((dest / "round-1" / "student.pt").stat().st_mtime_ns,
            (dest / "round-2" / "student.pt").stat().st_mtime_ns) == first
    assert (dest / "round-3" / "student.pt").exists()
    summary = json.loads((dest / "selftrain.json").read_text())
    assert summary["recipe"]["confidence"]["class_top_p"] == 0.8  # selftrain's default selection
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["rounds"][2]["miou"] == json.loads((dest / "eval.json").read_text())["miou"]

    assert cli(["eval", str(out.root), "--gt", str(gt), "--json", str(tmp_path / "teacher.json")]) == 0
    assert set(json.loads((dest / "eval.json").read_text())) == set(json.loads((tmp_path / "teacher.json").read_text()))

    # Another recipe in the same folder is refused in one line, not silently mixed.
    assert cli([*args, "--rounds", "1", "--set", "optim.lr=0.1"]) == 2
    assert "another recipe" in capsys.readouterr().err
    # How the students label is not part of the recipe a finished round must match: the round is
    # reused, its student file takes the new `predict`, and it is scored the new way.
    capsys.readouterr()
    weights = load_student_file(dest / "round-1" / "student.pt")["state_dict"]
    assert cli([*args, "--rounds", "1", "--set", "predict.scales=[1.0]"]) == 0
    assert "round 1/1: done before" in capsys.readouterr().out
    blob = load_student_file(dest / "round-1" / "student.pt")
    assert blob["card"]["recipe"]["predict"]["scales"] == [1.0]
    assert all(torch.equal(weights[n], blob["state_dict"][n]) for n in weights)
    engine = StudentEngine.from_file(dest / "round-1" / "student.pt")
    rescored = score_engine(engine, str(out.input_dir), str(gt)).miou
    assert json.loads((dest / "round-1" / "eval.json").read_text())["miou"] == pytest.approx(rescored, abs=1e-6)


def test_selftrain_defaults_one_round_labeling_at_the_chosen_scale(fake, tmp_path):
    from pipeline.student.config import DEFAULT_PREDICT_SCALES

    out, _gt = fake
    dest = tmp_path / "st"
    assert cli(["selftrain", str(out.root), "--out", str(dest), "--no-progress", *_sets(TINY)]) == 0
    assert sorted(p.name for p in dest.glob("round-*")) == ["round-1"]  # one round, chosen on validation
    card = json.loads((dest / "round-1" / "card.json").read_text())
    assert card["recipe"]["predict"] == {"scales": list(DEFAULT_PREDICT_SCALES), "flip": False}


def test_selftrain_user_errors(fake, tmp_path, capsys):
    out, gt = fake
    assert cli(["selftrain", str(out.root), "--out", str(tmp_path / "x"), "--eval", str(out.input_dir)]) == 2
    assert "--gt" in capsys.readouterr().err
    for bad in (["--teacher-weight", "2"], ["--tta-scales", "1,x"], ["--rounds", "0"]):
        with pytest.raises(SystemExit) as exc:
            cli(["selftrain", str(out.root), "--out", str(tmp_path / "x"), *bad])
        assert exc.value.code == 2


def _one_step(device: str) -> float:
    from pipeline.student.model import build_student, normalize
    from pipeline.student.trainer import lr_at

    cfg = load_student_config("gpu", ["optim.warmup_steps=1"])
    net = build_student(cfg.model, 5).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr_at(cfg, 0))
    x = torch.rand(2, 3, 32, 32, device=device)
    y = torch.randint(0, 5, (2, 32, 32), device=device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=device != "cpu"):
        logits = net(normalize(x))
    assert logits.shape == (2, 5, 32, 32)
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_gpu_preset_one_training_step_on_cpu():
    """The `gpu` preset's network (DeepLabV3-ResNet50, trained from scratch) takes a step on a tiny image."""
    assert load_student_config("gpu").model.arch == "deeplabv3_resnet50"
    assert np.isfinite(_one_step("cpu"))


@pytest.mark.gpu
def test_gpu_preset_one_training_step_on_cuda():
    import os

    assert np.isfinite(_one_step(os.environ.get("PSEUDOLABEL_GPU_TEST_DEVICE", "cuda")))
