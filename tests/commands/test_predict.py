"""`pseudolabel predict` end to end, through the console entry point."""
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
    overlay = Image.open(tmp_path / "coffee.png")
    assert overlay.size == (336, 224) and overlay.mode == "RGB"
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
