"""Pickle-based weights in the operator's models folders: read with PyTorch's restricted
unpickler, refused (and never run) when they need more than tensors, off by a setting;
uploads stay safetensors-only."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from runner.errors import ModelError, UnsafeFileError
from runner.models.pickle_weights import load_pickle_weights
from tests.helpers.tiny_loaders import write_malicious_pickle


def test_tensor_only_pickle_loads_and_logs(tmp_path, caplog):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"a": torch.arange(3.0)}, "epoch": 2}, path)
    with caplog.at_level(logging.INFO, logger="runner.models.pickle_weights"):
        tensors = load_pickle_weights(path)
    assert list(tensors) == ["a"] and torch.equal(tensors["a"], torch.arange(3.0))
    assert any(
        "w.pth" in r.getMessage() and "weights_only" in r.getMessage() for r in caplog.records
    )


def test_pickle_with_a_callable_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = write_malicious_pickle(tmp_path / "evil.ckpt", marker, {"a": torch.zeros(2)})
    with pytest.raises(UnsafeFileError, match=r"evil\.ckpt.*needs more than tensors.*system"):
        load_pickle_weights(path)
    assert not marker.exists()


def test_not_a_pickle_is_a_model_error(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"hello world")
    with pytest.raises(ModelError, match="not a PyTorch weights file"):
        load_pickle_weights(path)


@pytest.fixture
def ckpt_models(tmp_path, cache_folder):
    """models/checkpoints with the tiny model as a .ckpt (tensors only, in the original
    layout, under Lightning's state_dict) and a malicious .ckpt."""
    import shutil

    from diffusers import StableDiffusionPipeline

    from runner.models.tiny import tiny_model_dir
    from tests.helpers.sd_layout import original_state_dict

    root = tmp_path / "models"
    checkpoints = root / "checkpoints"
    checkpoints.mkdir(parents=True)
    tiny = tiny_model_dir(cache_folder)
    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None, local_files_only=True)
    sd = {k: v.contiguous() for k, v in original_state_dict(pipe).items()}
    torch.save({"state_dict": sd, "global_step": 10}, checkpoints / "sd15-tiny.ckpt")
    shutil.copytree(tiny, checkpoints / "sd15-tiny.config")
    write_malicious_pickle(checkpoints / "evil.ckpt", tmp_path / "ran", sd)
    return root, tmp_path / "ran"


def _image(env, model: str) -> np.ndarray:
    from runner.templates import GenerationRequest

    request = GenerationRequest(prompt="a barn", seed=3, steps=2, width=64, height=64, model=model)
    result = env.run(env.build_workflow(request))
    return result.values["8"][0].numpy()


def test_ckpt_checkpoint_loads_and_gives_the_builtin_image(make_env, ckpt_models):
    root, marker = ckpt_models
    env = make_env(models_dir=root)
    names = env.models.checkpoint_names()
    assert "sd15-tiny.ckpt" in names
    assert np.array_equal(_image(env, "sd15-tiny.ckpt"), _image(env, "tiny-random"))
    assert env.models.family("sd15-tiny.ckpt") == "sd1"
    assert not marker.exists()


def test_malicious_ckpt_checkpoint_refused_with_reason(make_env, ckpt_models):
    from runner.errors import EaselError

    root, marker = ckpt_models
    env = make_env(models_dir=root)
    with pytest.raises(EaselError, match="needs more than tensors"):
        _image(env, "evil.ckpt")
    assert not marker.exists()


def test_pickles_off_refuses_by_name_and_says_so(make_env, ckpt_models):
    root, _ = ckpt_models
    env = make_env(models_dir=root, allow_pickle_weights=False)
    assert "sd15-tiny.ckpt" not in env.models.checkpoint_names()
    assert any(p.name == "sd15-tiny.ckpt" for p in env.models.unsafe_files())
    with pytest.raises(UnsafeFileError, match="allow_pickle_weights"):
        env.models.resolve_checkpoint("sd15-tiny.ckpt")


def test_ckpt_name_when_only_safetensors_exists_says_so(make_env, tmp_path):
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "x.safetensors").write_bytes(b"")
    env = make_env(models_dir=root)
    with pytest.raises(
        ModelError, match=r"no checkpoint named 'x\.ckpt'; but x\.safetensors exists"
    ):
        env.models.resolve_checkpoint("x.ckpt")


def test_uploads_stay_safetensors_only():
    from runner.files import refuse_pickle

    with pytest.raises(UnsafeFileError):
        refuse_pickle("lora.ckpt", hint="Upload the .safetensors version of this LoRA instead.")


def test_lora_pickles_refused_even_when_pickles_allowed(make_env, tmp_path):
    root = tmp_path / "models"
    (root / "loras").mkdir(parents=True)
    torch.save({"a": torch.zeros(1)}, root / "loras" / "style.pt")
    env = make_env(models_dir=root)
    with pytest.raises(UnsafeFileError):
        env.models.lora_path("style.pt")
    assert [p.name for p in env.models.unsafe_files()] == ["style.pt"]
