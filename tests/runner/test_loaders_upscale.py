"""UpscaleModelLoader + ImageUpscaleWithModel: a tiny ESRGAN in its original key layout
(and BasicSR's, and a .pth pickle), loaded through the real loader; tiled upscaling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from runner.models.upscalers import tiled_scale, upscaler_from_state_dict
from tests.helpers.tiny_loaders import esrgan_original_keys, tiny_esrgan


def test_tiling_blends_back_to_the_untiled_result_exactly_for_a_pointwise_scaler():
    image = torch.rand(1, 3, 70, 45)

    def nearest4(x):
        return F.interpolate(x, scale_factor=4, mode="nearest")

    tiled = tiled_scale(image, nearest4, scale=4, tile=16, overlap=4)
    assert torch.allclose(tiled, nearest4(image), atol=1e-6)


def test_original_and_basicsr_layouts_load_the_same_network():
    model = tiny_esrgan()
    x = torch.rand(1, 3, 12, 10)
    for sd in (esrgan_original_keys(model), model.state_dict()):
        loaded = upscaler_from_state_dict(sd, "tiny")
        assert loaded.scale == 4
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_real_esrgan_x2_pixel_unshuffle_layout():
    model = tiny_esrgan(ups=2, unshuffle=2)
    loaded = upscaler_from_state_dict(model.state_dict(), "x2")
    assert loaded.scale == 2
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert loaded(x).shape == (1, 3, 16, 16) and torch.equal(loaded(x), model(x))


def test_not_an_upscaler_is_refused_with_reason():
    from runner.errors import ModelError

    with pytest.raises(ModelError, match="bad.*not an ESRGAN"):
        upscaler_from_state_dict({"foo": torch.zeros(1)}, "bad")


@pytest.fixture(scope="module")
def upscale_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = root / "upscale_models"
    folder.mkdir()
    model = tiny_esrgan()
    sd = {k: v.contiguous() for k, v in esrgan_original_keys(model).items()}
    save_file(sd, str(folder / "4x_tiny.safetensors"))
    torch.save({"params_ema": model.state_dict()}, folder / "RealESRGAN_tiny.pth")
    return root, model


def _workflow(name: str) -> dict:
    return {
        "1": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": name}},
        "2": {
            "class_type": "LoadImage",
            "inputs": {"image": "in.png"},
        },
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["1", 0], "image": ["2", 0]},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }


@pytest.mark.parametrize("name", ["4x_tiny.safetensors", "RealESRGAN_tiny.pth"])
def test_workflow_upscales_as_the_model_in_memory(make_env, upscale_models, name):
    from runner_testlib import write_gradient_png

    root, model = upscale_models
    env = make_env(models_dir=root)
    write_gradient_png(env.settings.input_dir / "in.png", 24, 20)
    assert name in env.models.upscale_model_names()
    result = env.run(_workflow(name))
    image = result.values["2"][0]
    out = result.values["3"][0]
    assert out.shape == (1, 80, 96, 3)
    with torch.no_grad():
        expected = model(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(out, expected, atol=1e-5)


def test_tiles_of_a_larger_image_stay_close_to_the_untiled_result(upscale_models):
    from runner.models.upscalers import upscale_image

    _, model = upscale_models
    image = torch.rand(1, 40, 52, 3)
    tiled = upscale_image(model, image, device=torch.device("cpu"), tile=24, overlap=8)
    with torch.no_grad():
        whole = model(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.02
