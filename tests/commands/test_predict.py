"""`pseudolabel predict` end to end, through the console entry point."""
import pytest
import numpy as np
from PIL import Image

from pipeline.cli import main
from tests.engine.golden_data import GOLDEN


def test_predict_writes_npz_and_overlay(tmp_path):
    rc = main([
        "predict", str(GOLDEN / "astronaut.png"), str(GOLDEN / "coffee.png"), "--out", str(tmp_path),
        "--set", f"model.pretrained={GOLDEN / 'tiny_clip_openai.pt'}", "--set", f"vocabulary.file={GOLDEN / 'vocab_a.txt'}",
        "--set", "inference.short_side=0", "--set", "inference.slide_crop=0", "--set", "inference.prob_thd=0.1", "--probs",
    ])
    assert rc == 0
    ref = np.load(GOLDEN / "naclip_resclip_whole__coffee.npz")
    out = np.load(tmp_path / "coffee.npz")
    assert out["probs"].dtype == np.float32 and out["pred"].dtype == np.uint8 and out["confidence"].dtype == np.uint8
    assert out["probs"].shape == (7, 224, 336) and out["pred"].shape == (224, 336)
    assert (out["pred"] == ref["seg_pred"]).mean() >= 0.999  # the golden "whole" case has these settings
    overlay = Image.open(tmp_path / "coffee.overlay.png")
    # the overlay at the image's size, then the legend band below it
    assert overlay.size[0] == 336 and overlay.size[1] > 224 and overlay.mode == "RGB"
    assert (tmp_path / "astronaut.npz").is_file()


def test_predict_leaves_probabilities_out_unless_asked(tmp_path):
    rc = main(["predict", str(GOLDEN / "coffee.png"), "--out", str(tmp_path),
               "--set", f"model.pretrained={GOLDEN / 'tiny_clip_openai.pt'}", "--set", f"vocabulary.file={GOLDEN / 'vocab_a.txt'}",
               "--set", "inference.short_side=0", "--set", "inference.slide_crop=0"])
    assert rc == 0
    out = np.load(tmp_path / "coffee.npz")
    assert sorted(out.files) == ["confidence", "pred"]
    assert out["confidence"].shape == out["pred"].shape == (224, 336)


def test_predict_reports_bad_config_as_user_error(tmp_path, capsys):
    rc = main(["predict", str(GOLDEN / "astronaut.png"), "--out", str(tmp_path), "--set", "method.base=nope"])
    assert rc == 2
    assert "method.base" in capsys.readouterr().err


TINY = ["--set", f"model.pretrained={GOLDEN / 'tiny_clip_openai.pt'}", "--set", f"vocabulary.file={GOLDEN / 'vocab_a.txt'}",
        "--set", "inference.short_side=0", "--set", "inference.slide_crop=0"]


def test_predict_out_dot_leaves_the_input_unchanged(tmp_path, monkeypatch):
    import shutil

    image = tmp_path / "coffee.png"
    shutil.copy(GOLDEN / "coffee.png", image)
    before = image.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "coffee.png", "--out", ".", *TINY]) == 0
    assert image.read_bytes() == before
    assert (tmp_path / "coffee.overlay.png").is_file() and (tmp_path / "coffee.npz").is_file()


def test_an_output_landing_on_an_input_is_refused_before_the_model_loads(tmp_path, capsys):
    import shutil

    shutil.copy(GOLDEN / "coffee.png", tmp_path / "coffee.png")
    shutil.copy(GOLDEN / "coffee.png", tmp_path / "coffee.overlay.png")  # an earlier overlay given as input
    before = (tmp_path / "coffee.overlay.png").read_bytes()
    rc = main(["predict", str(tmp_path / "coffee.overlay.png"), str(tmp_path / "coffee.png"), "--out", str(tmp_path),
               *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "would overwrite the input image" in err
    assert (tmp_path / "coffee.overlay.png").read_bytes() == before


def test_a_bad_image_is_reported_and_the_others_are_labeled(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    missing = tmp_path / "missing.png"
    rc = main(["predict", str(missing), str(bad), str(GOLDEN / "coffee.png"), "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"cannot read image {missing}" in err and f"cannot read image {bad}" in err
    assert "2 of 3 image(s) failed" in err
    assert (tmp_path / "o" / "coffee.npz").is_file() and not (tmp_path / "o" / "broken.npz").exists()


def test_no_readable_input_fails_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import pipeline.engine

    monkeypatch.setattr(pipeline.engine.Segmenter, "from_config", lambda cfg: pytest.fail("model loaded"))
    rc = main(["predict", str(tmp_path / "typo.png"), "--out", str(tmp_path / "o"), *TINY])
    assert rc == 2 and "none of the 1 input image(s) can be read" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
