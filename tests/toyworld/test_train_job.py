"""The toy-CLIP training job on a tiny configuration: format, crop embedding, one step, resume."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import build_model_from_openai_state_dict

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("train_toy_clip", ROOT / "jobs" / "train_toy_clip.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_toy_clip"] = module
    spec.loader.exec_module(module)
    return module


def tiny(job, **kw):
    base = dict(vision_width=64, vision_layers=2, text_width=64, text_layers=1, embed_dim=32, pool=6,
                n_full=2, n_mid=3, n_small=4, eval_scenes=2, log_every=1, eval_every=2, save_every=2, steps=2)
    return job.TrainConfig(**{**base, **kw})


def test_saved_weights_load_as_an_openai_checkpoint(job, tmp_path):
    model = job.build_model(tiny(job)).eval()
    job.save_weights(tmp_path / "w.pt", model)
    sd = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    loaded = build_model_from_openai_state_dict(sd).float().eval()
    model = model.half().float()  # compare at the precision that was saved
    x = torch.randn(1, 3, 224, 224)
    tokens = open_clip.tokenize(["a photo of sky."], context_length=loaded.context_length)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(x), model.encode_image(x), atol=1e-5)
        assert torch.allclose(loaded.encode_text(tokens), model.encode_text(tokens), atol=1e-5)
    assert loaded.context_length == 32 and loaded.visual.transformer.resblocks[0].attn.num_heads == 1


def test_crop_embedding_of_the_whole_grid_is_encode_image(job):
    model = job.build_model(tiny(job)).eval()
    x = torch.randn(2, 3, 224, 224)
    zeros = torch.zeros(2, dtype=torch.int64)
    with torch.no_grad():
        full, attn_only = job.encode_views(model, x, zeros, zeros, attn_only=True)
        assert torch.allclose(full, model.encode_image(x), atol=1e-5)
        assert attn_only.shape == full.shape


def test_crops_use_their_own_positional_embeddings(job):
    model = job.build_model(tiny(job)).eval()
    with torch.no_grad():
        model.visual.positional_embedding.normal_()
        x = torch.randn(1, 3, 224, 224)
        crop = x[:, :, 32:96, 48:112]  # 4 x 4 patches at patch (2, 3)
        a = job.embed_patches(model, crop, torch.tensor([2]), torch.tensor([3]))
        b = model.visual.ln_pre(torch.cat([
            (model.visual.class_embedding + model.visual.positional_embedding[0]).view(1, 1, -1),
            model.visual.conv1(x).flatten(2).transpose(1, 2)
            + model.visual.positional_embedding[1:]], 1))
        grid = b[0, 1:].view(14, 14, -1)[2:6, 3:7].reshape(16, -1)
        assert torch.allclose(a[0, 1:], grid, atol=1e-5) and torch.allclose(a[0, 0], b[0, 0], atol=1e-5)


def test_multi_positive_loss_treats_equal_class_sets_as_positives(job):
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0]]), dim=-1)
    keys = torch.tensor([1, 1, 2])
    good = job.multi_positive_clip_loss(img, img, keys, torch.tensor(50.0))
    swapped = job.multi_positive_clip_loss(img, img[[2, 2, 0]], keys, torch.tensor(50.0))
    assert good < np.log(2) + 1e-3 < swapped


def test_two_steps_then_resume(job, tmp_path):
    cfg = tiny(job)
    best = job.train(cfg, tmp_path, None)
    assert (tmp_path / "toyclip-step2.pt").is_file() and (tmp_path / "state.pt").is_file()
    assert 0.0 <= best <= 1.0
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # what --resume reads (plain data)
    cfg2 = job.TrainConfig(**{**state["config"], "steps": 3})
    job.train(cfg2, tmp_path, state)
    assert (tmp_path / "toyclip-step3.pt").is_file()
