"""LatentUpscale, ImageScale (every method, lanczos, center crop), KSamplerAdvanced (start
and end steps, no added noise, leftover noise) and CLIPSetLastLayer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from runner_testlib import image_of, latent_of, txt2img_workflow

from plugins.core.image import IMAGE_UPSCALE_METHODS


class Ctx:
    """The part of a NodeContext the scaling nodes use."""

    def __init__(self, env):
        self.env = env


def call(env, class_type, **inputs):
    return env.node_types[class_type].function(Ctx(env), **inputs)


def stripes(width=100, height=50):
    """An image whose columns are all different, to see what a crop keeps."""
    x = torch.linspace(0, 1, width).view(1, 1, width, 1).expand(1, height, width, 1)
    y = torch.linspace(0, 1, height).view(1, height, 1, 1).expand(1, height, width, 1)
    return torch.cat([x, y, 1 - x], dim=-1).contiguous()


# ImageScale -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", IMAGE_UPSCALE_METHODS)
@pytest.mark.parametrize("crop", ["disabled", "center"])
def test_image_scale_every_method(module_env, method, crop):
    (out,) = call(
        module_env,
        "ImageScale",
        image=stripes(),
        upscale_method=method,
        width=48,
        height=40,
        crop=crop,
    )
    assert tuple(out.shape) == (1, 40, 48, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_image_scale_zero_keeps_the_aspect_ratio(module_env):
    (out,) = call(
        module_env,
        "ImageScale",
        image=stripes(100, 50),
        upscale_method="bilinear",
        width=40,
        height=0,
        crop="disabled",
    )
    assert tuple(out.shape) == (1, 20, 40, 3)
    (same,) = call(
        module_env,
        "ImageScale",
        image=stripes(100, 50),
        upscale_method="area",
        width=0,
        height=0,
        crop="disabled",
    )
    assert tuple(same.shape) == (1, 50, 100, 3)


def test_center_crop_keeps_the_middle(module_env):
    image = stripes(100, 50)
    (out,) = call(
        module_env,
        "ImageScale",
        image=image,
        upscale_method="nearest-exact",
        width=50,
        height=50,
        crop="center",
    )
    assert torch.equal(out, image[:, :, 25:75, :])
    (tall,) = call(
        module_env,
        "ImageScale",
        image=image.transpose(1, 2),
        upscale_method="nearest-exact",
        width=50,
        height=50,
        crop="center",
    )
    assert torch.equal(tall, image.transpose(1, 2)[:, 25:75, :, :])


def test_lanczos_matches_pil(module_env):
    image = stripes(64, 48)
    (out,) = call(
        module_env,
        "ImageScale",
        image=image,
        upscale_method="lanczos",
        width=100,
        height=30,
        crop="disabled",
    )
    pil = Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).resize(
        (100, 30), Image.Resampling.LANCZOS
    )
    np.testing.assert_allclose(out[0].numpy(), np.asarray(pil) / 255.0, atol=1e-6)


def test_lanczos_with_center_crop(module_env):
    (out,) = call(
        module_env,
        "ImageScale",
        image=stripes(100, 50),
        upscale_method="lanczos",
        width=32,
        height=32,
        crop="center",
    )
    assert tuple(out.shape) == (1, 32, 32, 3)
    red = out[0, :, :, 0]
    assert (
        0.2 < float(red[:, 0].mean()) < 0.3 and 0.7 < float(red[:, -1].mean()) < 0.8
    )  # columns 25..75 of 100


def test_image_scale_by_respects_the_limits(make_env):
    from runner.errors import NodeExecutionError

    env = make_env(max_width=128, max_height=128)
    (out,) = call(
        env, "ImageScaleBy", image=stripes(64, 32), upscale_method="bicubic", scale_by=2.0
    )
    assert tuple(out.shape) == (1, 64, 128, 3)
    workflow = {
        "1": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "2": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["1", 0], "upscale_method": "area", "scale_by": 4},
        },
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["3", 2]}},
        "5": {
            "class_type": "SaveImage",
            "inputs": {"images": ["4", 0], "filename_prefix": "ComfyUI"},
        },
    }
    with pytest.raises(NodeExecutionError) as caught:
        env.run(workflow)
    assert caught.value.node_id == "2" and "128" in caught.value.message


# LatentUpscale ------------------------------------------------------------------------------


def test_latent_upscale_sizes(module_env):
    latent = {"samples": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))}
    (out,) = call(
        module_env,
        "LatentUpscale",
        samples=latent,
        upscale_method="bilinear",
        width=128,
        height=96,
        crop="disabled",
    )
    assert tuple(out["samples"].shape) == (2, 4, 12, 16)
    (keep,) = call(
        module_env,
        "LatentUpscale",
        samples=latent,
        upscale_method="area",
        width=0,
        height=128,
        crop="disabled",
    )
    assert tuple(keep["samples"].shape) == (2, 4, 16, 16)
    (crop,) = call(
        module_env,
        "LatentUpscale",
        samples=latent,
        upscale_method="nearest-exact",
        width=128,
        height=64,
        crop="center",
    )
    # ComfyUI raises each side to at least 64 px; 128x64 crops the 8x8 latent to rows 2..6.
    expected = F.interpolate(latent["samples"][:, :, 2:6, :], size=(8, 16), mode="nearest-exact")
    assert torch.equal(crop["samples"], expected)
    assert latent["samples"].shape == (2, 4, 8, 8)  # the input is not changed


def test_hires_fix_workflow(module_env):
    """txt2img at 64 px, latent upscale to 128, a second KSampler at denoise 0.5, decode."""
    workflow = txt2img_workflow(module_env, steps=2)
    workflow["20"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["3", 0],
            "upscale_method": "nearest-exact",
            "width": 128,
            "height": 128,
            "crop": "disabled",
        },
    }
    second = copy.deepcopy(workflow["3"])
    second["inputs"].update(latent_image=["20", 0], denoise=0.5, seed=6)
    workflow["21"] = second
    workflow["8"]["inputs"]["samples"] = ["21", 0]
    events = []
    result = module_env.run(workflow, on_event=events.append)
    assert image_of(result).shape == (1, 128, 128, 3)
    assert [(e.node_id, e.step) for e in events if e.type == "progress"] == [
        ("3", 1),
        ("3", 2),
        ("21", 1),
        ("21", 2),
    ]


# KSamplerAdvanced ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(module_env):
    return txt2img_workflow(module_env, steps=4, seed=21)


def advanced(base, node_id="3", latent=("5", 0), into=None, **inputs):
    """``base`` (or ``into``) with a KSamplerAdvanced ``node_id`` set up like base's KSampler."""
    workflow = copy.deepcopy(into or base)
    k = base["3"]["inputs"]
    workflow[node_id] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "model": k["model"],
            "positive": k["positive"],
            "negative": k["negative"],
            "latent_image": list(latent),
            "add_noise": "enable",
            "noise_seed": k["seed"],
            "steps": k["steps"],
            "cfg": k["cfg"],
            "sampler_name": k["sampler_name"],
            "scheduler": k["scheduler"],
            "start_at_step": 0,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
            **inputs,
        },
    }
    return workflow


def test_advanced_full_range_equals_ksampler(module_env, base):
    plain = latent_of(module_env.run(base))
    full = latent_of(module_env.run(advanced(base)))
    assert np.array_equal(plain, full)


def test_two_passes_with_leftover_noise_equal_one(module_env, base):
    plain = latent_of(module_env.run(base))
    workflow = advanced(base, end_at_step=2, return_with_leftover_noise="enable")
    second = advanced(
        base, node_id="22", latent=("3", 0), into=workflow, add_noise="disable", start_at_step=2
    )
    second["8"]["inputs"]["samples"] = ["22", 0]
    events = []
    result = module_env.run(second, on_event=events.append)
    np.testing.assert_allclose(latent_of(result, "22"), plain, rtol=0, atol=1e-4)
    assert [(e.node_id, e.step, e.total) for e in events if e.type == "progress"] == [
        ("3", 1, 2),
        ("3", 2, 2),
        ("22", 1, 2),
        ("22", 2, 2),
    ]


def test_leftover_noise_is_returned_only_when_asked(module_env, base):
    noisy = latent_of(
        module_env.run(advanced(base, end_at_step=2, return_with_leftover_noise="enable"))
    )
    denoised = latent_of(
        module_env.run(advanced(base, end_at_step=2, return_with_leftover_noise="disable"))
    )
    assert not np.allclose(noisy, denoised)
    assert np.isfinite(noisy).all() and np.isfinite(denoised).all()


def test_add_noise_disable_samples_the_latent_as_it_is(module_env, base):
    with_noise = latent_of(module_env.run(advanced(base)))
    without = module_env.run(advanced(base, add_noise="disable"))
    assert not np.allclose(latent_of(without), with_noise)
    # From a zero latent with no noise, the seed does not matter (for a deterministic sampler).
    other_seed = module_env.run(advanced(base, add_noise="disable", noise_seed=999))
    assert np.array_equal(latent_of(other_seed), latent_of(without))


def test_start_at_or_after_end_returns_the_input(module_env, base):
    for start, end in ((3, 3), (5, 10000), (3, 1)):
        result = module_env.run(advanced(base, start_at_step=start, end_at_step=end))
        assert np.array_equal(latent_of(result), latent_of(result, "5"))


def test_advanced_progress_counts_the_steps_run(module_env, base):
    events = []
    module_env.run(
        advanced(base, noise_seed=77, start_at_step=1, end_at_step=3), on_event=events.append
    )
    assert [(e.step, e.total) for e in events if e.type == "progress"] == [(1, 2), (2, 2)]


# CLIPSetLastLayer ---------------------------------------------------------------------------


def with_clip_skip(base, layer):
    workflow = copy.deepcopy(base)
    workflow["20"] = {
        "class_type": "CLIPSetLastLayer",
        "inputs": {"clip": ["4", 1], "stop_at_clip_layer": layer},
    }
    workflow["6"]["inputs"]["clip"] = ["20", 0]
    return workflow


def test_clip_set_last_layer(module_env, base):
    plain = module_env.run(base).values["6"][0].embeds
    last = module_env.run(with_clip_skip(base, -1)).values["6"][0].embeds
    penultimate_result = module_env.run(with_clip_skip(base, -2))
    penultimate = penultimate_result.values["6"][0].embeds
    assert torch.equal(last, plain)
    assert not torch.allclose(penultimate, plain)
    # What diffusers' encode_prompt(clip_skip=1) computes: the penultimate hidden state through
    # the final layer norm.
    pipe = module_env.models.checkpoint("tiny-random").pipe
    ids = pipe.tokenizer(
        base["6"]["inputs"]["text"],
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.inference_mode():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = pipe.text_encoder.final_layer_norm(hidden)
    torch.testing.assert_close(penultimate, expected.float(), rtol=0, atol=1e-6)
    assert not np.array_equal(image_of(penultimate_result), image_of(module_env.run(base)))


def test_clip_set_last_layer_range_is_validated(module_env, base):
    from runner.validation import validate

    for value, kind in ((0, "value_bigger_than_max"), (-25, "value_smaller_than_min")):
        issues = validate(with_clip_skip(base, value), module_env.node_types, module_env).issues
        assert [(i.type, i.node_id, i.input_name) for i in issues] == [
            (kind, "20", "stop_at_clip_layer")
        ]


def test_repeat_latent_batch_respects_max_batch_in_total(make_env):
    from runner.errors import NodeExecutionError

    env = make_env(max_batch=4)
    workflow = txt2img_workflow(env, steps=2, batch_size=2)
    workflow["20"] = {
        "class_type": "RepeatLatentBatch",
        "inputs": {"samples": ["5", 0], "amount": 2},
    }
    workflow["3"]["inputs"]["latent_image"] = ["20", 0]
    assert len(env.run(workflow).images) == 4
    workflow["21"] = {
        "class_type": "RepeatLatentBatch",
        "inputs": {"samples": ["20", 0], "amount": 3},
    }
    workflow["3"]["inputs"]["latent_image"] = ["21", 0]
    with pytest.raises(NodeExecutionError) as caught:
        env.run(workflow)
    assert caught.value.node_id == "21" and "max_batch" in caught.value.message
