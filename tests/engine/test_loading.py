import json

import open_clip
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.engine import loading
from pipeline.engine.loading import load_clip
from pipeline.errors import ModelLoadError


def test_offline_tag_fails_fast_with_one_line(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(ModelLoadError) as err:
        load_clip(ModelConfig(name="ViT-B-16", pretrained="openai", cache_dir="/nonexistent-cache"))
    message = str(err.value)
    assert "\n" not in message
    assert "ViT-B-16/openai" in message and "model.pretrained=" in message


def test_unknown_tag_and_missing_file_are_clear():
    with pytest.raises(ModelLoadError, match="neither a file nor a tag"):
        load_clip(ModelConfig(name="ViT-B-16", pretrained="no-such-tag"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_clip(ModelConfig(pretrained="/nonexistent/weights.pt"))


def test_open_clip_state_dict_needs_and_uses_model_name(tmp_path):
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }
    (tmp_path / "TinyTest-ViT.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    model = open_clip.create_model("TinyTest-ViT")
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    loaded = load_clip(ModelConfig(name="TinyTest-ViT", pretrained=str(tmp_path / "tiny.pt")))
    image = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.model.encode_image(image), model.eval().encode_image(image))
    assert loaded.identity["checkpoint_sha256"]
    with pytest.raises(ModelLoadError, match="set model.name"):
        load_clip(ModelConfig(name="not-a-model", pretrained=str(tmp_path / "tiny.pt"), format="open_clip"))
    with pytest.raises(ModelLoadError, match="does not fit ViT-B-32"):
        load_clip(ModelConfig(name="ViT-B-32", pretrained=str(tmp_path / "tiny.pt"), format="open_clip"))
