"""LoadImage's MASK as ComfyUI gives it: ``1 - alpha`` at the image's size for an image
with alpha, and ``[1, 64, 64]`` zeros for one without (whatever its size). Every mask
consumer then resizes that placeholder to what it masks: a workflow that wires it into
each of them with a 40x48 image / 64x96 latent runs, and masks nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def env(module_env):
    from runner_testlib import write_gradient_png

    write_gradient_png(module_env.settings.input_dir / "rgb.png", 48, 40)
    rgba = np.zeros((40, 48, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(module_env.settings.input_dir / "rgba.png")
    return module_env


def test_an_image_without_alpha_gives_comfyuis_64x64_zero_mask(env):
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rgb.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    image, mask = env.run(wf).values["1"]
    assert image.shape == (1, 40, 48, 3)
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
    assert torch.count_nonzero(mask) == 0


def test_an_image_with_alpha_gives_one_minus_alpha_at_its_size(env):
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rgba.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    _, mask = env.run(wf).values["1"]
    alpha = np.asarray(Image.open(env.settings.input_dir / "rgba.png"))[..., 3] / 255.0
    assert mask.shape == (1, 40, 48)
    assert np.allclose(mask[0].numpy(), 1.0 - alpha, atol=1e-6)


def _sampler(model, positive, negative, latent, seed=5):
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "seed": seed,
            "steps": 2,
            "cfg": 4.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "positive": positive,
            "negative": negative,
            "latent_image": latent,
            "denoise": 1.0,
        },
    }


def test_every_mask_consumer_resizes_the_placeholder(env):
    m = ["1", 1]  # the [1, 64, 64] placeholder
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "rgb.png"}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 96, "height": 64, "batch_size": 1},
        },
        "10": {
            "class_type": "VAEEncodeForInpaint",
            "inputs": {"pixels": ["1", 0], "vae": ["4", 2], "mask": m, "grow_mask_by": 6},
        },
        "11": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": m}},
        "12": {
            "class_type": "InpaintModelConditioning",
            "inputs": {
                "positive": ["6", 0],
                "negative": ["7", 0],
                "vae": ["4", 2],
                "pixels": ["1", 0],
                "mask": m,
                "noise_mask": True,
            },
        },
        "13": {
            "class_type": "ConditioningSetMask",
            "inputs": {
                "conditioning": ["6", 0],
                "mask": m,
                "strength": 1.0,
                "set_cond_area": "default",
            },
        },
        "14": {
            "class_type": "LatentCompositeMasked",
            "inputs": {
                "destination": ["5", 0],
                "source": ["10", 0],
                "x": 0,
                "y": 0,
                "resize_source": False,
                "mask": m,
            },
        },
        "15": {
            "class_type": "ImageCompositeMasked",
            "inputs": {
                "destination": ["1", 0],
                "source": ["1", 0],
                "x": 8,
                "y": 8,
                "resize_source": False,
                "mask": m,
            },
        },
        "20": _sampler(["4", 0], ["6", 0], ["7", 0], ["10", 0]),
        "21": _sampler(["4", 0], ["6", 0], ["7", 0], ["11", 0]),
        "22": _sampler(["4", 0], ["12", 0], ["12", 1], ["12", 2]),
        "23": _sampler(["4", 0], ["13", 0], ["7", 0], ["5", 0]),
        "24": _sampler(["4", 0], ["6", 0], ["7", 0], ["14", 0]),
    }
    for i, node_id in enumerate(("20", "21", "22", "23", "24")):
        wf[f"3{i}"] = {
            "class_type": "VAEDecode",
            "inputs": {"samples": [node_id, 0], "vae": ["4", 2]},
        }
        wf[f"4{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"3{i}", 0]}}
    wf["50"] = {"class_type": "PreviewImage", "inputs": {"images": ["15", 0]}}
    result = env.run(wf)
    values = result.values
    inpaint = values["10"][0]
    assert tuple(inpaint["noise_mask"].shape[-2:]) == (40, 48)
    assert torch.count_nonzero(inpaint["noise_mask"]) == 0
    # A zero mask: ImageCompositeMasked changes nothing, LatentCompositeMasked keeps the
    # destination, the noise-masked sampler keeps its input latent.
    assert torch.equal(values["15"][0], values["1"][0])
    assert torch.equal(values["14"][0]["samples"], values["5"][0]["samples"])
    assert values["21"][0]["samples"].shape == (1, 4, 8, 12)
    assert torch.allclose(values["21"][0]["samples"], values["5"][0]["samples"])
    assert values["22"][0]["samples"].shape[-2:] == (5, 6)
    assert values["23"][0]["samples"].shape == (1, 4, 8, 12)
