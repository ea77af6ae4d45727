"""The conditioning model on other UNets: a 9-channel inpainting UNet (mask and masked image
concatenated to its input) and SDXL base / refiner size conditioning, each against direct
UNet calls."""

from __future__ import annotations

import pytest
import torch

from runner.diffusion.guidance import BLANK_INPAINT_LATENT, Guidance
from runner.diffusion.sampling import SampleJob, sample
from runner.handles import CondEntry, Conditioning
from tests.helpers.tiny_guidance import tiny_inpaint_checkpoint, tiny_sdxl_checkpoint

CPU = torch.device("cpu")
T = torch.tensor(300.0)


def _rand(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def inpaint(module_env):
    return tiny_inpaint_checkpoint(module_env.models.checkpoint("tiny-random"))


def _guide(ckpt, job, x, cfg=1.0):
    g = Guidance(ckpt, [job], cfg, latent_shape=tuple(x.shape), device=CPU, dtype=torch.float32)
    with torch.inference_mode():
        return g(x, T)


def _unet(ckpt, x, emb, **kw):
    with torch.inference_mode():
        return ckpt.pipe.unet(x, T, encoder_hidden_states=emb, return_dict=False, **kw)[0]


E, N = _rand(1, 77, 32, seed=1), _rand(1, 77, 32, seed=2)
X, LATENT = _rand(1, 4, 8, 8, seed=3), _rand(1, 4, 8, 8, seed=4)


def test_inpainting_unet_gets_the_noise_mask_and_the_input_latent(inpaint):
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0  # latent cells 2..5
    job = SampleJob(0, LATENT, Conditioning(E), Conditioning(N), noise_mask=mask)
    out = _guide(inpaint, job, X)
    small = torch.zeros(1, 1, 8, 8)
    small[..., 2:6, 2:6] = 1.0
    torch.testing.assert_close(
        out, _unet(inpaint, torch.cat([X, small, LATENT], 1), E), rtol=0, atol=1e-5
    )


def test_inpainting_unet_takes_the_entrys_concat_mask_and_latent_first(inpaint):
    concat_latent, concat_mask = _rand(1, 4, 8, 8, seed=5), torch.ones(1, 8, 8)
    concat_mask[:, :, :3] = 0.0
    entry = CondEntry(E, concat_latent=concat_latent, concat_mask=concat_mask)
    job = SampleJob(0, LATENT, Conditioning(entries=[entry]), Conditioning(N))
    out = _guide(inpaint, job, X)
    expected = _unet(inpaint, torch.cat([X, concat_mask[:, None], concat_latent], 1), E)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_inpainting_unet_without_a_mask_gets_ones_and_a_blank_image(inpaint):
    job = SampleJob(0, LATENT, Conditioning(E), Conditioning(N))
    out = _guide(inpaint, job, X, cfg=2.0)
    blank = torch.tensor(BLANK_INPAINT_LATENT).reshape(1, 4, 1, 1).expand(1, 4, 8, 8)
    extra = torch.cat([torch.ones(1, 1, 8, 8), blank], 1)
    cond = _unet(inpaint, torch.cat([X, extra], 1), E)
    uncond = _unet(inpaint, torch.cat([X, extra], 1), N)
    torch.testing.assert_close(out, uncond + 2.0 * (cond - uncond), rtol=0, atol=1e-5)


def test_inpainting_model_sampling_keeps_the_unmasked_latent_exactly(inpaint):
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1.0
    job = SampleJob(3, LATENT, Conditioning(E), Conditioning(N), noise_mask=mask)
    with inpaint.lock:
        (out,) = sample(
            inpaint, [job], steps=3, cfg=3.0, sampler_name="euler", scheduler_name="normal"
        )
    assert torch.equal(out[..., :4], LATENT[..., :4])
    assert torch.isfinite(out).all() and (out[..., 4:] - LATENT[..., 4:]).abs().min() > 0


@pytest.fixture(scope="module")
def xl(cache_folder):
    return tiny_sdxl_checkpoint(cache_folder)


@pytest.fixture(scope="module")
def refiner(cache_folder):
    return tiny_sdxl_checkpoint(cache_folder, refiner=True)


EX, NX = _rand(1, 77, 96, seed=6), _rand(1, 77, 96, seed=7)
PX, PN = _rand(1, 64, seed=8), _rand(1, 64, seed=9)


def _xl_pred(ckpt, emb, pooled, ids):
    added = {"text_embeds": pooled, "time_ids": torch.tensor([ids], dtype=torch.float32)}
    return _unet(ckpt, X, emb, added_cond_kwargs=added)


def test_sdxl_size_conditioning_per_entry(xl):
    """CLIPTextEncodeSDXL's (width, height, crop_w, crop_h, target_width, target_height)
    become time ids (height, width, crop_h, crop_w, target_height, target_width); an entry
    without a size gets the image's (64x64, no crop)."""
    size = (1024, 768, 16, 32, 512, 256)
    pos = Conditioning(entries=[CondEntry(EX, PX, size=size)])
    job = SampleJob(0, torch.zeros_like(X), pos, Conditioning(NX, PN))
    out = _guide(xl, job, X, cfg=4.0)
    cond = _xl_pred(xl, EX, PX, [768, 1024, 32, 16, 256, 512])
    uncond = _xl_pred(xl, NX, PN, [64, 64, 0, 0, 64, 64])
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond), rtol=0, atol=1e-5)


def test_sdxl_entries_path_equals_the_plain_path(xl):
    """A strength-0.5 entry alone averages to itself: the entries path gives what the
    plain path gives."""
    plain = SampleJob(0, torch.zeros_like(X), Conditioning(EX, PX), Conditioning(NX, PN))
    weak = Conditioning(entries=[CondEntry(EX, PX, strength=0.5)])
    entries = SampleJob(0, torch.zeros_like(X), weak, Conditioning(NX, PN))
    torch.testing.assert_close(
        _guide(xl, entries, X, 6.0), _guide(xl, plain, X, 6.0), rtol=0, atol=1e-5
    )


def test_sdxl_refiner_gets_the_aesthetic_score(refiner):
    """A refiner UNet (projection size 5 ids + pooled) gets (height, width, crop_h, crop_w,
    aesthetic_score): the entry's score, else 6 for the positive and 2.5 for the negative."""
    pos = Conditioning(entries=[CondEntry(EX, PX, aesthetic_score=7.5)])
    job = SampleJob(0, torch.zeros_like(X), pos, Conditioning(NX, PN))
    out = _guide(refiner, job, X, cfg=3.0)
    cond = _xl_pred(refiner, EX, PX, [64, 64, 0, 0, 7.5])
    uncond = _xl_pred(refiner, NX, PN, [64, 64, 0, 0, 2.5])
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond), rtol=0, atol=1e-5)
    plain = SampleJob(0, torch.zeros_like(X), Conditioning(EX, PX), Conditioning(NX, PN))
    out = _guide(refiner, plain, X, cfg=1.0)
    torch.testing.assert_close(
        out, _xl_pred(refiner, EX, PX, [64, 64, 0, 0, 6.0]), rtol=0, atol=1e-5
    )
