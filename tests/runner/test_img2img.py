"""img2img: LoadImage -> VAEEncode -> KSampler with denoise < 1, with ComfyUI's semantics
(``steps`` sampling steps always run) and diffusers' img2img arithmetic underneath."""

from __future__ import annotations

import numpy as np
import pytest
from runner_testlib import image_of, latent_of, write_gradient_png

from runner.templates import GenerationRequest


@pytest.fixture(scope="module")
def img_env(module_env):
    write_gradient_png(module_env.settings.input_dir / "init.png")
    write_gradient_png(module_env.settings.input_dir / "wide.png", width=96, height=64)
    return module_env


def img2img_workflow(env, denoise: float, steps: int = 4, seed: int = 3, image: str = "init.png"):
    """LoadImage -> VAEEncode -> KSampler(denoise) -> VAEDecode -> SaveImage, built by hand."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a watercolour fox", "clip": ["4", 1]},
        },
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": image}},
        "12": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 6.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": denoise,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["12", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "i2i"}},
    }


def test_load_image_gives_comfyui_image_and_mask(img_env):
    result = img_env.run(img2img_workflow(img_env, 0.5))
    image, mask = result.values["10"]
    assert tuple(image.shape) == (1, 64, 64, 3) and tuple(mask.shape) == (1, 64, 64)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(mask.abs().max()) == 0.0  # opaque PNG: nothing masked
    assert tuple(result.values["12"][0]["samples"].shape) == (1, 4, 8, 8)


def test_denoise_zero_keeps_the_encoded_latent(img_env):
    result = img_env.run(img2img_workflow(img_env, 0.0))
    assert np.array_equal(latent_of(result), latent_of(result, "12"))


def test_the_output_moves_away_from_the_init_image_as_denoise_grows(img_env):
    distances = []
    for denoise in (0.0, 0.25, 0.5, 0.75, 1.0):
        result = img_env.run(img2img_workflow(img_env, denoise))
        distances.append(float(np.abs(latent_of(result) - latent_of(result, "12")).mean()))
    assert distances[0] == 0.0
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False)), distances


def test_small_denoise_stays_close_in_pixels(img_env):
    roundtrip = image_of(img_env.run(img2img_workflow(img_env, 0.0)))
    small = image_of(img_env.run(img2img_workflow(img_env, 0.05)))
    large = image_of(img_env.run(img2img_workflow(img_env, 1.0)))
    assert np.abs(small - roundtrip).mean() < np.abs(large - roundtrip).mean()


@pytest.mark.parametrize(("steps", "denoise"), [(20, 0.5), (6, 0.3), (4, 1.0)])
def test_steps_sampling_steps_run_whatever_the_denoise(img_env, steps, denoise):
    """ComfyUI's semantics: 20 steps at denoise 0.5 runs 20 sampling steps (of a 40-step
    schedule), where diffusers' strength would run 10."""
    events = []
    workflow = img2img_workflow(img_env, denoise, steps=steps, seed=1000 + steps)  # not cached
    img_env.run(workflow, on_event=events.append)
    progress = [(e.step, e.total) for e in events if e.type == "progress"]
    assert progress == [(i, steps) for i in range(1, steps + 1)]


def test_ksampler_denoise_matches_diffusers_img2img(img_env):
    """KSampler at denoise d with k steps computes what StableDiffusionImg2ImgPipeline computes
    at strength d with k / d steps, from the same latents and noise."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    steps, denoise, seed = 2, 0.5, 9
    result = img_env.run(img2img_workflow(img_env, denoise, steps=steps, seed=seed))
    init_latents = result.values["12"][0]["samples"]

    loaded = img_env.models.checkpoint("tiny-random").pipe
    reference = StableDiffusionImg2ImgPipeline(**loaded.components)
    reference.scheduler = EulerDiscreteScheduler.from_config(
        loaded.scheduler.config, timestep_spacing="linspace"
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(
        prompt="a watercolour fox",
        negative_prompt=None,
        image=init_latents.clone(),  # 4 channels: used as latents as they are
        strength=denoise,
        num_inference_steps=int(steps / denoise),
        guidance_scale=6.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    ).images
    np.testing.assert_allclose(latent_of(result), theirs.numpy(), rtol=0, atol=1e-5)


def test_img2img_template_runs_and_records_the_strength(img_env):
    from runner.images import read_png_text

    request = GenerationRequest(
        prompt="a fox", seed=1, steps=3, width=64, height=64, init_image="wide.png", strength=0.6
    )
    workflow = img_env.build_workflow(request)
    assert workflow["3"]["inputs"]["denoise"] == 0.6
    result = img_env.run(workflow)
    assert tuple(result.values["11"][0].shape) == (1, 64, 64, 3)  # scaled and center-cropped
    assert tuple(result.values["10"][0].shape) == (1, 64, 96, 3)
    parameters = read_png_text(result.images[0])["parameters"]
    assert "Denoising strength: 0.6" in parameters


def test_img2img_batch_repeats_the_init_latent(img_env):
    request = GenerationRequest(
        prompt="a fox",
        seed=1,
        steps=2,
        width=64,
        height=64,
        init_image="init.png",
        strength=0.5,
        batch_size=2,
    )
    result = img_env.run(img_env.build_workflow(request))
    assert tuple(result.values["13"][0]["samples"].shape) == (2, 4, 8, 8)
    images = image_of(result)
    assert images.shape[0] == 2 and np.abs(images[0] - images[1]).mean() > 1e-4
    assert len(result.images) == 2


def test_img2img_template_refuses_strength_zero(img_env):
    from runner.errors import TemplateError

    request = GenerationRequest(prompt="a fox", seed=1, init_image="init.png", strength=0.0)
    with pytest.raises(TemplateError, match="strength"):
        img_env.build_workflow(request)


def test_a_tiny_denoise_fails_fast_with_a_readable_message(img_env):
    from runner.errors import NodeExecutionError

    with pytest.raises(NodeExecutionError) as caught:
        img_env.run(img2img_workflow(img_env, 1e-9, steps=20))
    assert caught.value.node_id == "3"
    assert "denoise" in caught.value.message and "schedule" in caught.value.message
    img_env.run(img2img_workflow(img_env, 0.5, steps=2))  # and the next job runs


def test_load_image_masks_transparent_pixels_and_accepts_grayscale(img_env):
    from PIL import Image

    rgba = Image.new("RGBA", (16, 8), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (8, 0, 16, 8))  # right half fully transparent
    rgba.save(img_env.settings.input_dir / "half.png")
    Image.new("L", (16, 8), 128).save(img_env.settings.input_dir / "gray.png")
    node = img_env.node_types["LoadImage"]

    class Ctx:
        env = img_env

    image, mask = node.function(Ctx(), image="half.png")
    assert tuple(image.shape) == (1, 8, 16, 3) and tuple(mask.shape) == (1, 8, 16)
    assert float(mask[0, :, :8].max()) == 0.0 and float(mask[0, :, 8:].min()) == 1.0
    gray, gray_mask = node.function(Ctx(), image="gray.png")
    assert tuple(gray.shape) == (1, 8, 16, 3) and float(gray_mask.max()) == 0.0
    assert abs(float(gray.mean()) - 128 / 255) < 1e-6
