"""The model manager: names in ComfyUI's folder layout, single files and diffusers folders
through the whole workflow, the memory budget, hub ids, unsafe files and speed options."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from runner.errors import ModelError, UnsafeFileError
from runner.images import tensor_to_pils  # noqa: F401 - imported to check the module loads
from runner.models.manager import ModelManager
from runner.models.tiny import tiny_model_dir
from runner.settings import EngineSettings
from runner.templates import GenerationRequest
from tests.helpers.sd_layout import write_original_layout


def _image(env, model: str, seed: int = 3) -> np.ndarray:
    from PIL import Image

    request = GenerationRequest(
        prompt="a red barn", negative="fog", seed=seed, steps=3, width=64, height=64, model=model
    )
    result = env.run(env.build_workflow(request))
    with Image.open(result.images[0]) as im:
        return np.asarray(im.convert("RGB")).copy()


@pytest.fixture
def models_dir(tmp_path, cache_folder):
    """A ComfyUI-style models folder holding the tiny model as a single file (with its
    companion config folder) and as a diffusers folder."""
    from diffusers import StableDiffusionPipeline

    root = tmp_path / "comfy" / "models"
    checkpoints = root / "checkpoints"
    checkpoints.mkdir(parents=True)
    tiny = tiny_model_dir(cache_folder)
    pipe = StableDiffusionPipeline.from_pretrained(tiny, safety_checker=None, local_files_only=True)
    write_original_layout(pipe, checkpoints / "sd15-tiny.safetensors")
    shutil.copytree(tiny, checkpoints / "sd15-tiny.config")
    shutil.copytree(tiny, checkpoints / "sub" / "tiny-diffusers")
    (checkpoints / "old.ckpt").write_bytes(b"not unpickled")
    return root


def test_single_file_and_folder_in_comfyui_layout_give_the_builtin_image(make_env, models_dir):
    env = make_env(models_dir=models_dir)
    names = env.models.checkpoint_names()
    assert names[0] == "tiny-random"
    assert "sd15-tiny.safetensors" in names and "sub/tiny-diffusers" in names
    # Pickles are allowed (restricted unpickler) but this one is not a PyTorch file at all.
    assert "old.ckpt" not in names
    assert any(m.name == "old.ckpt" for m in env.models.skipped_models())
    builtin = _image(env, "tiny-random")
    single = _image(env, "sd15-tiny.safetensors")
    folder = _image(env, "sub/tiny-diffusers")
    assert np.array_equal(builtin, single)
    assert np.array_equal(builtin, folder)
    loaded = {c.name: c for c in env.models.loaded()}
    assert loaded["sd15-tiny.safetensors"].family == "sd1"


def test_memory_budget_evicts_least_recently_used(models_dir, cache_folder, tmp_path):
    probe = ModelManager(
        EngineSettings(data_dir=tmp_path, cache_folder=cache_folder, models_dir=models_dir)
    )
    size = probe.checkpoint("tiny-random").size_bytes
    budget_gb = size * 1.5 / 1024**3  # room for one tiny model, not two
    manager = ModelManager(
        EngineSettings(
            data_dir=tmp_path,
            cache_folder=cache_folder,
            models_dir=models_dir,
            model_cache_gb=budget_gb,
        )
    )
    manager.checkpoint("tiny-random")
    manager.checkpoint("sub/tiny-diffusers")
    assert [c.name for c in manager.loaded()] == ["sub/tiny-diffusers"]
    big = ModelManager(
        EngineSettings(
            data_dir=tmp_path, cache_folder=cache_folder, models_dir=models_dir, model_cache_gb=1.0
        )
    )
    big.checkpoint("tiny-random")
    big.checkpoint("sub/tiny-diffusers")
    big.checkpoint("tiny-random")  # touched again: now the most recently used
    assert [c.name for c in big.loaded()] == ["sub/tiny-diffusers", "tiny-random"]


def test_names_that_are_unsafe_or_escape_the_folder(settings):
    manager = ModelManager(settings.model_copy(update={"allow_pickle_weights": False}))
    for name in ("model.ckpt", "x.pt", "y.pth", "pytorch_model.bin", "z.pkl"):
        with pytest.raises(UnsafeFileError, match="pickle"):
            manager.resolve_checkpoint(name)
    allowed = ModelManager(settings)  # allow_pickle_weights: looked up like any file
    with pytest.raises(ModelError, match="no checkpoint named 'model.ckpt'"):
        allowed.resolve_checkpoint("model.ckpt")
    with pytest.raises(UnsafeFileError, match="pickle"):
        allowed.resolve_checkpoint("z.pkl")
    for name in ("../secret.safetensors", "/etc/passwd", "a/../../b"):
        with pytest.raises(ModelError, match="plain name"):
            manager.resolve_checkpoint(name)
    with pytest.raises(ModelError, match="no checkpoint named 'missing.safetensors'.*tiny-random"):
        manager.resolve_checkpoint("missing.safetensors")
    with pytest.raises(ModelError, match="no LoRA named 'nope'"):
        manager.lora_path("nope")


def test_hub_ids_need_the_setting(settings):
    with pytest.raises(ModelError, match="allow_hub_downloads"):
        ModelManager(settings).resolve_checkpoint("stabilityai/sdxl-turbo")
    online = ModelManager(settings.model_copy(update={"allow_hub_downloads": True}))
    assert online.resolve_checkpoint("stabilityai/sdxl-turbo") == ("hub", "stabilityai/sdxl-turbo")


def test_speed_options_from_configuration(make_env, caplog, monkeypatch):
    base = _image(make_env(), "tiny-random")
    plain_attention = _image(make_env(attention="default"), "tiny-random")
    assert np.abs(base.astype(int) - plain_attention.astype(int)).max() <= 2
    tiled_env = make_env(vae_tiling="on")
    assert tiled_env.models.checkpoint("tiny-random").pipe.vae.use_tiling
    assert np.array_equal(_image(tiled_env, "tiny-random"), base)  # 64 px fits in one tile
    with caplog.at_level(logging.WARNING):
        low = make_env(low_vram=True)
        assert np.array_equal(_image(low, "tiny-random"), base)
    assert "low_vram needs a CUDA GPU" in caplog.text
    compiled = make_env(compile=True).models.checkpoint("tiny-random")
    assert isinstance(compiled.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)


def test_device_and_dtype_choice(settings):
    from runner.models.device import pick_device, pick_dtype

    assert pick_device(settings).type == "cpu"  # no GPU on the test machines
    assert pick_dtype(settings, torch.device("cpu")) == torch.float32
    assert pick_dtype(settings, torch.device("cuda")) == torch.float16
    assert (
        pick_dtype(settings.model_copy(update={"dtype": "bfloat16"}), torch.device("cuda"))
        == torch.bfloat16
    )
    assert (
        pick_dtype(settings.model_copy(update={"dtype": "float16"}), torch.device("cpu"))
        == torch.float32
    )
