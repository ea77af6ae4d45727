"""Inpainting: VAEEncodeForInpaint, SetLatentNoiseMask, InpaintModelConditioning and
ImagePadForOutpaint against independent computations; 9-channel inpainting checkpoints
(diffusers folder and single file) through the real loader; an inpaint workflow."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from runner import Conditioning, VaeHandle
from runner.models.tokenizer import clip_tokenizer_dir
from tests.helpers.tiny_inpaint import (
    make_tiny_inpaint_pipeline,
    save_inpaint_folder,
    save_inpaint_single_file,
)


class Ctx:
    def __init__(self, env):
        self.env = env


def call(env, class_type, **inputs):
    return env.node_types[class_type].function(Ctx(env), **inputs)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vae(module_env):
    return VaeHandle(module_env.models.checkpoint("tiny-random"))


def encode_ref(vae: VaeHandle, pixels: np.ndarray) -> torch.Tensor:
    """The VAE's encoding of ``[B, H, W, 3]`` pixels, straight through diffusers."""
    module = vae.checkpoint.pipe.vae
    x = torch.from_numpy(pixels).float().permute(0, 3, 1, 2) * 2 - 1
    with torch.inference_mode():
        dist = module.encode(x, return_dict=False)[0]
    return dist.mode() * module.config.scaling_factor


def grow_ref(mask: np.ndarray, by: int) -> np.ndarray:
    """1 where any pixel of the box rows i-a..i+b, cols j-a..j+b is 1, a = ceil((by-1)/2)."""
    if by == 0:
        return mask
    a = -(-(by - 1) // 2)
    b = by - 1 - a
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            box = mask[max(0, i - a) : i + b + 1, max(0, j - a) : j + b + 1]
            out[i, j] = 1.0 if box.max() >= 1 else 0.0
    return out


@pytest.mark.parametrize("grow", [0, 5, 6])
def test_vae_encode_for_inpaint(module_env, vae, grow):
    pixels = rand(1, 67, 70, 3, seed=1)
    mask = torch.zeros(67, 70)
    mask[20:30, 33:41] = 1.0
    mask[50, 10] = 0.6  # rounds to 1
    mask[51, 11] = 0.4  # rounds to 0
    (out,) = call(
        module_env, "VAEEncodeForInpaint", pixels=pixels, vae=vae, mask=mask, grow_mask_by=grow
    )
    # 67x70 -> 64x64 from offset (1, 3)
    px = pixels.numpy()[:, 1:65, 3:67].copy()
    m = np.round(mask.numpy()[1:65, 3:67])
    px[0][m == 1] = 0.5
    torch.testing.assert_close(out["samples"], encode_ref(vae, px), atol=1e-4, rtol=0)
    assert out["noise_mask"].shape == (1, 1, 64, 64)
    np.testing.assert_array_equal(out["noise_mask"][0, 0].numpy(), grow_ref(m, grow))


def test_set_latent_noise_mask(module_env):
    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [0, 1]}
    (out,) = call(module_env, "SetLatentNoiseMask", samples=latent, mask=torch.ones(3, 5))
    assert out["noise_mask"].shape == (1, 1, 3, 5) and out["batch_index"] == [0, 1]
    assert "noise_mask" not in latent
    with pytest.raises(ValueError, match="2 dimensions"):
        call(module_env, "SetLatentNoiseMask", samples=latent, mask=torch.ones(4))


@pytest.mark.parametrize("noise_mask", [True, False])
def test_inpaint_model_conditioning(module_env, vae, noise_mask):
    pixels = rand(1, 64, 64, 3, seed=2)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:16, 8:24] = 1.0  # at half the size: resized bilinearly to 64x64
    e1 = torch.randn(1, 77, 32)
    positive = Conditioning(e1) + Conditioning(e1 * 2)
    negative = Conditioning(torch.zeros(1, 77, 32))
    pos, neg, latent = call(
        module_env,
        "InpaintModelConditioning",
        positive=positive,
        negative=negative,
        vae=vae,
        pixels=pixels,
        mask=mask,
        noise_mask=noise_mask,
    )
    full_mask = torch.nn.functional.interpolate(mask[:, None], size=(64, 64), mode="bilinear")
    px = pixels.numpy().copy()
    px[0][full_mask[0, 0].round().numpy() == 1] = 0.5
    concat = encode_ref(vae, px)
    assert len(pos) == 2 and len(neg) == 1
    for entry in list(pos) + list(neg):
        torch.testing.assert_close(entry.concat_latent, concat, atol=1e-4, rtol=0)
        torch.testing.assert_close(entry.concat_mask, full_mask)
    torch.testing.assert_close(pos.entries[1].embeds, e1 * 2)  # embeddings untouched
    torch.testing.assert_close(
        latent["samples"], encode_ref(vae, pixels.numpy()), atol=1e-4, rtol=0
    )
    assert ("noise_mask" in latent) is noise_mask
    assert positive.entries[0].concat_latent is None  # the input is not changed


def pad_ref(image: np.ndarray, left, top, right, bottom, feathering):
    b, h, w, c = image.shape
    out = np.full((b, h + top + bottom, w + left + right, c), 0.5)
    out[:, top : top + h, left : left + w] = image
    mask = np.ones((h + top + bottom, w + left + right))
    inner = np.zeros((h, w))
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        for i in range(h):
            for j in range(w):
                d = min(
                    i if top else h, h - i if bottom else h, j if left else w, w - j if right else w
                )
                if d < feathering:
                    inner[i, j] = ((feathering - d) / feathering) ** 2
    mask[top : top + h, left : left + w] = inner
    return out, mask[None]


@pytest.mark.parametrize(
    "sides", [(8, 0, 16, 0, 5), (0, 8, 0, 8, 3), (8, 8, 8, 8, 0), (16, 0, 0, 0, 20)]
)
def test_image_pad_for_outpaint(module_env, sides):
    image = rand(2, 12, 14, 3, seed=3)
    left, top, right, bottom, feathering = sides
    out, mask = call(
        module_env,
        "ImagePadForOutpaint",
        image=image,
        left=left,
        top=top,
        right=right,
        bottom=bottom,
        feathering=feathering,
    )
    ref_img, ref_mask = pad_ref(image.numpy(), *sides)
    np.testing.assert_allclose(out.numpy(), ref_img, atol=1e-6)
    np.testing.assert_allclose(mask.numpy(), ref_mask, atol=1e-6)


# 9-channel checkpoints -----------------------------------------------------------------


@pytest.fixture(scope="module")
def inpaint_pipe(cache_folder):
    return make_tiny_inpaint_pipeline(clip_tokenizer_dir(cache_folder))


@pytest.mark.parametrize("layout", ["folder", "single file"])
def test_nine_channel_checkpoint_loads(make_env, inpaint_pipe, cache_folder, layout):
    env = make_env()
    root = env.settings.models_root / "checkpoints"
    if layout == "folder":
        save_inpaint_folder(inpaint_pipe, root / "tiny-inpaint")
        name = "tiny-inpaint"
    else:
        path = root / "tiny-inpaint.safetensors"
        save_inpaint_single_file(inpaint_pipe, path, clip_tokenizer_dir(cache_folder))
        assert (
            '"in_channels": 4'
            in path.with_suffix(".config").joinpath("unet", "config.json").read_text()
        )
        name = "tiny-inpaint.safetensors"
    assert env.models.check_checkpoint_name(name) is None
    assert env.models.family(name) == "sd1"
    ckpt = env.models.checkpoint(name)
    unet = ckpt.pipe.unet
    assert unet.config.in_channels == 9
    assert ckpt.pipe.vae.config.in_channels == 3  # the VAE keeps its own
    want = inpaint_pipe.unet.state_dict()
    got = unet.state_dict()
    for key in ("conv_in.weight", "conv_out.weight", "down_blocks.0.attentions.0.proj_in.weight"):
        torch.testing.assert_close(got[key].float(), want[key].float())
    x = torch.randn(1, 9, 8, 8)
    text = torch.randn(1, 77, 32)
    with torch.inference_mode():
        a = unet(x, 10, encoder_hidden_states=text).sample
        b = inpaint_pipe.unet(x, 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# Workflow -------------------------------------------------------------------------------


def _inputs(env):
    folder = env.settings.input_dir
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], -1).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "photo.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "black.png")
    return "photo.png", "black.png"


def inpaint_workflow(photo: str, mask: str, steps: int = 2) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": mask, "channel": "red"}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
        "5": {
            "class_type": "VAEEncodeForInpaint",
            "inputs": {"pixels": ["1", 0], "vae": ["4", 2], "mask": ["2", 0], "grow_mask_by": 6},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 1,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "inp"}},
    }


def test_inpaint_workflow_runs(env):
    photo, black = _inputs(env)
    result = env.run(inpaint_workflow(photo, black))
    assert result.values["5"][0]["noise_mask"].shape == (1, 1, 64, 64)
    assert result.values["8"][0].shape == (1, 64, 64, 3)


def _unchanged_check(env):
    photo, black = _inputs(env)
    result = env.run(inpaint_workflow(photo, black))
    roundtrip = {
        "1": {"class_type": "LoadImage", "inputs": {"image": photo}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-random"}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    expected = env.run(roundtrip).values["8"][0]
    torch.testing.assert_close(result.values["8"][0], expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_all_black_mask_leaves_the_image_unchanged(env):
    """A zero mask: nothing greyed, a zero noise_mask, so the sampler must keep the encoded
    image: the result is the image through VAE encode + decode."""
    _unchanged_check(env)
