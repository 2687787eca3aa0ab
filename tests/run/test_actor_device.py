"""The device part of the actor: under Ray an actor sees only its assigned GPU, as cuda:0, and a
fractional GPU caps the allocator. Ray's assignment and torch's CUDA calls are faked on CPU."""
import pytest
import torch

from pipeline.config import load_config
from pipeline.run import actor as actor_module
from pipeline.run.actor import actor_device, configure_device, memory_fraction


@pytest.mark.parametrize("device,visible,expected", [
    ("cuda:3", 1, "cuda:0"),  # the user's GPU 3 is this actor's only GPU
    ("cuda:0", 1, "cuda:0"),
    ("cuda:1", 2, "cuda:1"),  # an actor holding two GPUs sees 0 and 1
    ("cuda:2", 2, "cuda:0"),
    ("cuda", 1, "cuda"),
    ("auto", 1, "auto"),
    ("cpu", 1, "cpu"),
    ("cuda:3", 0, "cuda:3"),  # outside a Ray GPU actor nothing is remapped
])
def test_cuda_n_maps_to_the_actor_s_own_gpu(device, visible, expected):
    assert actor_device(device, visible) == expected


def test_memory_fraction_only_for_shared_gpus():
    assert memory_fraction(0.5) == 0.5 and memory_fraction(0.25) == 0.25
    assert memory_fraction(1.0) is None and memory_fraction(2.0) is None


def test_configure_device_in_a_fractional_gpu_actor(monkeypatch):
    calls = []
    monkeypatch.setattr(actor_module, "_ray_gpu_ids", lambda: ["3"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    cfg = configure_device(load_config(overrides=["device=cuda:3", "ray.gpus_per_actor=0.5"]))
    assert cfg.device == "cuda:0" and calls == [(0.5, 0)]
    calls.clear()
    whole = configure_device(load_config(overrides=["device=cuda", "ray.gpus_per_actor=1"]))
    assert whole.device == "cuda" and calls == []


def test_configure_device_outside_ray_changes_nothing(monkeypatch):
    monkeypatch.setattr(actor_module, "_ray_gpu_ids", lambda: [])
    cfg = load_config(overrides=["device=cuda:2", "ray.gpus_per_actor=0.5"])
    assert configure_device(cfg) is cfg
