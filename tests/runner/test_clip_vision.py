"""CLIPVisionLoader + CLIPVisionEncode: a tiny CLIP image encoder saved as one file (HF
keys) and as a folder, loaded through the real loader; ComfyUI's preprocessing checked
against computations written out with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.errors import ModelError
from runner.models import clip_vision
from tests.helpers.tiny_vision import save_clip_vision_file, tiny_clip_vision

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def _expected_pixels(image: np.ndarray) -> np.ndarray:
    """[b, h, w, 3] in 0..1 -> quantised to 8 bits, normalised, channels first."""
    q = np.clip(np.round(image * 255.0), 0, 255) / 255.0
    return ((q - MEAN) / STD).transpose(0, 3, 1, 2)


def test_an_image_of_the_input_size_is_only_quantised_and_normalised():
    image = torch.rand(2, 32, 32, 3)
    out = clip_vision.preprocess(image, 32, crop=True)
    assert np.allclose(out.numpy(), _expected_pixels(image.numpy()), atol=1e-5)


def test_center_crop_keeps_the_middle_square_of_a_wide_image():
    # 32 high, 64 wide: the short side is already 32, so no resampling; the crop is the
    # middle 32 columns.
    image = torch.rand(1, 32, 64, 3)
    out = clip_vision.preprocess(image, 32, crop=True)
    expected = _expected_pixels(image.numpy()[:, :, 16:48])
    assert out.shape == (1, 3, 32, 32)
    assert np.allclose(out.numpy(), expected, atol=1e-4)


def test_crop_none_squashes_the_whole_image_instead():
    image = torch.rand(1, 32, 64, 3)
    squashed = clip_vision.preprocess(image, 32, crop=False)
    assert squashed.shape == (1, 3, 32, 32)
    assert not torch.allclose(squashed, clip_vision.preprocess(image, 32, crop=True))


def test_a_non_image_is_refused_with_its_shape():
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        clip_vision.preprocess(torch.rand(32, 32), 32)


def test_config_is_read_off_the_shapes():
    model = tiny_clip_vision()
    config = clip_vision.vision_config_from_state_dict(model.state_dict())
    for name in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "projection_dim",
        "hidden_act",
    ):
        assert getattr(config, name) == getattr(model.config, name), name


@pytest.fixture(scope="module")
def vision_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    model = tiny_clip_vision(seed=3)
    save_clip_vision_file(model, root / "clip_vision" / "tiny_vit.safetensors")
    model.save_pretrained(root / "clip_vision" / "tiny_folder")
    # ComfyUI's files sometimes nest the keys under one more prefix.
    from safetensors.torch import save_file

    nested = {f"clip_vision.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(nested, str(root / "clip_vision" / "nested.safetensors"))
    save_file({"foo.weight": torch.zeros(2)}, str(root / "clip_vision" / "broken.safetensors"))
    return root, model


@pytest.mark.parametrize("name", ["tiny_vit.safetensors", "tiny_vit", "tiny_folder", "nested"])
def test_each_layout_encodes_as_the_model_in_memory(make_env, vision_models, name):
    root, model = vision_models
    env = make_env(models_dir=root)
    assert {"tiny_vit.safetensors", "tiny_folder"} <= set(clip_vision.clip_vision_names(env.models))
    handle = clip_vision.load_named(env.models, name)
    image = torch.rand(2, 40, 48, 3)
    out = handle.encode(image, crop=True)
    pixels = torch.tensor(_center_crop_resized(image), dtype=torch.float32)
    with torch.no_grad():
        direct = model(pixel_values=pixels, output_hidden_states=True)
    assert out.image_embeds.shape == (2, 32)
    assert torch.allclose(out.image_embeds, direct.image_embeds, atol=1e-5)
    assert torch.allclose(out["last_hidden_state"], direct.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.penultimate_hidden_states, direct.hidden_states[-2], atol=1e-5)


def _center_crop_resized(image: torch.Tensor) -> np.ndarray:
    # The short side (40) to 32: 40x48 -> 32x38 (round(48 * 0.8) = 38), then columns 3..35.
    x = torch.nn.functional.interpolate(
        image.movedim(-1, 1), size=(32, 38), mode="bicubic", antialias=True
    )
    x = x[:, :, :, 3:35].movedim(1, -1).numpy()
    return _expected_pixels(x)


def test_a_file_that_is_not_an_encoder_is_refused_with_reason(make_env, vision_models):
    root, _ = vision_models
    env = make_env(models_dir=root)
    with pytest.raises(ModelError, match="not a CLIP vision encoder"):
        clip_vision.load_named(env.models, "broken.safetensors")
    with pytest.raises(ModelError, match="no CLIP vision model named 'nope'.*tiny_vit"):
        clip_vision.load_named(env.models, "nope")


def test_loader_node_checks_the_name_before_anything_loads(make_env, vision_models):
    root, _ = vision_models
    env = make_env(models_dir=root)
    (name_input,) = env.node_types["CLIPVisionLoader"].inputs
    assert name_input.check("tiny_vit.safetensors", env) is None
    assert "missing.safetensors" in name_input.check("missing.safetensors", env)
    assert "tiny_folder" in name_input.allowed(env)
