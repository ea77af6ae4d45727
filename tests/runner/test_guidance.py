"""ComfyUI's conditioning model in the sampling loop (runner.diffusion.guidance), on the tiny
SD1 model: each expected value is computed here another way, from separate UNet calls and
weights written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from runner.diffusion.guidance import Guidance, is_active, timestep_bounds
from runner.diffusion.sampling import SampleJob, sample
from runner.handles import Area, CondEntry, Conditioning

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd1(module_env):
    return module_env.models.checkpoint("tiny-random")


def _emb(seed: int, tokens: int = 77) -> torch.Tensor:
    return torch.randn((1, tokens, 32), generator=torch.Generator().manual_seed(seed))


def _x(seed: int, size: int = 8, batch: int = 1) -> torch.Tensor:
    return torch.randn((batch, 4, size, size), generator=torch.Generator().manual_seed(seed))


def _unet(ckpt, x, t, emb, **kw):
    with torch.inference_mode():
        return ckpt.pipe.unet(x, t, encoder_hidden_states=emb, return_dict=False, **kw)[0]


def _guide(ckpt, positive, negative, x, t, cfg=1.0, **job):
    g = Guidance(
        ckpt,
        [SampleJob(0, torch.zeros_like(x), positive, negative, **job)],
        cfg,
        latent_shape=tuple(x.shape),
        device=CPU,
        dtype=torch.float32,
    )
    with torch.inference_mode():
        return g(x, t), g


T = torch.tensor(500.0)
A, B, C, N = (CondEntry(_emb(s)) for s in (1, 2, 3, 4))


def _ramp(size: int, rr: int, start: bool, end: bool) -> torch.Tensor:
    """Feathering weights written out: (k + 1) / rr on the k-th cell from an inner edge."""
    w = torch.ones(size)
    for k in range(rr):
        if start:
            w[k] *= (k + 1) / rr
        if end:
            w[size - 1 - k] *= (k + 1) / rr
    return w


def test_an_area_entry_changes_only_its_area_with_feathered_inner_edges(sd1):
    """Positive [A, B in a 16x16 area in the middle of a 32x32 latent], negative [N]: the
    negative gets N in B's area too (ComfyUI's create_cond_with_same_area_if_none)."""
    x = _x(0, 32)
    b = B.replace(area=Area(16, 16, 8, 8))
    out, _ = _guide(sd1, Conditioning(entries=[A, b]), Conditioning(entries=[N]), x, T, cfg=5.0)
    crop = x[:, :, 8:24, 8:24]
    pa, pb = _unet(sd1, x, T, A.embeds), _unet(sd1, crop, T, B.embeds)
    pn, pn_crop = _unet(sd1, x, T, N.embeds), _unet(sd1, crop, T, N.embeds)
    ramp = _ramp(16, 4, True, True)
    w = (ramp[:, None] * ramp[None, :])[None, None]
    cond, uncond = pa.clone(), pn.clone()
    cond[:, :, 8:24, 8:24] = (pa[:, :, 8:24, 8:24] + w * pb) / (1 + w)
    uncond[:, :, 8:24, 8:24] = (pn[:, :, 8:24, 8:24] + w * pn_crop) / (1 + w)
    expected = uncond + 5.0 * (cond - uncond)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    plain, _ = _guide(sd1, Conditioning(A.embeds), Conditioning(N.embeds), x, T, cfg=5.0)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:24, 8:24] = False
    torch.testing.assert_close(out[..., outside], plain[..., outside], rtol=0, atol=1e-5)
    assert (out[..., 8:24, 8:24] - plain[..., 8:24, 8:24]).abs().min() > 0


def test_overlapping_areas_are_averaged_by_strength(sd1):
    """Two areas covering columns 0-5 and 2-7 of an 8x8 latent, strengths 0.3 and 1.7 (no
    feathering: the areas' inner edges are 6 wide, so the ramp is one cell of weight 1)."""
    x = _x(1)
    left = B.replace(area=Area(8, 6, 0, 0), strength=0.3)
    right = C.replace(area=Area(8, 6, 0, 2), strength=1.7)
    out, _ = _guide(sd1, Conditioning(entries=[left, right]), Conditioning(N.embeds), x, T)
    p1 = _unet(sd1, x[..., 0:6], T, B.embeds)
    p2 = _unet(sd1, x[..., 2:8], T, C.embeds)
    expected = torch.zeros_like(out)
    expected[..., 0:2] = p1[..., 0:2]
    expected[..., 6:8] = p2[..., 4:6]
    expected[..., 2:6] = (0.3 * p1[..., 2:6] + 1.7 * p2[..., 0:4]) / 2.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_same_size_areas_share_one_unet_call_and_match_separate_calls(sd1):
    """[A, B left half, C right half] against [N]: A and N in one call, the four half-image
    inputs (B, C and N mirrored into both halves) in another; the result equals the
    combination of eight separate calls."""
    x = _x(2, 16)
    calls = []
    hook = sd1.pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        b, c = B.replace(area=Area(16, 8, 0, 0)), C.replace(area=Area(16, 8, 0, 8))
        out, _ = _guide(sd1, Conditioning(entries=[A, b, c]), Conditioning(N.embeds), x, T, cfg=3.0)
    finally:
        hook.remove()
    assert sorted(calls) == [2, 4]
    ramp_l = _ramp(8, 2, False, True)[None, :]  # the left area's right edge is inside
    ramp_r = _ramp(8, 2, True, False)[None, :]
    sides = []
    for full, halves in ((A, (B, C)), (N, (N, N))):
        p = _unet(sd1, x, T, full.embeds)
        pl = _unet(sd1, x[..., :8], T, halves[0].embeds)
        pr = _unet(sd1, x[..., 8:], T, halves[1].embeds)
        side = p.clone()
        side[..., :8] = (p[..., :8] + ramp_l * pl) / (1 + ramp_l)
        side[..., 8:] = (p[..., 8:] + ramp_r * pr) / (1 + ramp_r)
        sides.append(side)
    cond, uncond = sides
    torch.testing.assert_close(out, uncond + 3.0 * (cond - uncond), rtol=0, atol=1e-5)


def test_a_rectangular_mask_with_bounds_is_its_area_without_feathering(sd1):
    """ConditioningSetMask with set_cond_area "mask bounds": the entry runs on the mask's
    bounding box, weighted by the mask (here 1, so no ramp) times strength."""
    x = _x(3, 32)
    mask = torch.zeros(1, 256, 256)
    mask[:, 64:192, 96:224] = 1.0  # latent rows 8..23, columns 12..27
    masked = B.replace(mask=mask, set_area_to_bounds=True, mask_strength=0.5)
    out, _ = _guide(sd1, Conditioning(entries=[A, masked]), Conditioning(N.embeds), x, T)
    pa, pb = _unet(sd1, x, T, A.embeds), _unet(sd1, x[:, :, 8:24, 12:28], T, B.embeds)
    expected = pa.clone()
    expected[:, :, 8:24, 12:28] = (pa[:, :, 8:24, 12:28] + 0.5 * pb) / 1.5
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # The same rectangle as an area is feathered over 4 cells at its inner edges.
    area = B.replace(area=Area(16, 16, 8, 12), strength=0.5)
    out_area, _ = _guide(sd1, Conditioning(entries=[A, area]), Conditioning(N.embeds), x, T)
    w = 0.5 * _ramp(16, 4, True, True)[:, None] * _ramp(16, 4, True, True)[None, :]
    expected[:, :, 8:24, 12:28] = (pa[:, :, 8:24, 12:28] + w * pb) / (1 + w)
    torch.testing.assert_close(out_area, expected, rtol=0, atol=1e-5)


def test_a_mask_without_bounds_weights_a_full_image_prediction(sd1):
    """A soft mask at the latent size, no area: the entry predicts the whole image and is
    weighted by mask * mask_strength * strength."""
    x = _x(4)
    mask = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    entry = B.replace(mask=mask, mask_strength=0.8, strength=1.5)
    out, _ = _guide(sd1, Conditioning(entries=[A, entry]), Conditioning(N.embeds), x, T)
    pa, pb = _unet(sd1, x, T, A.embeds), _unet(sd1, x, T, B.embeds)
    w = (mask * 0.8 * 1.5)[:, None]
    torch.testing.assert_close(out, (pa + w * pb) / (1 + w), rtol=0, atol=1e-5)


def test_cfg_below_one_computes_the_negative_and_cfg_one_skips_it(sd1):
    x = _x(5)
    pos, neg = Conditioning(A.embeds), Conditioning(N.embeds)
    calls = []
    hook = sd1.pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        half, _ = _guide(sd1, pos, neg, x, T, cfg=0.5)
        one, _ = _guide(sd1, pos, neg, x, T, cfg=1.0)
    finally:
        hook.remove()
    assert calls == [2, 1]
    pa, pn = _unet(sd1, x, T, A.embeds), _unet(sd1, x, T, N.embeds)
    torch.testing.assert_close(half, pn + 0.5 * (pa - pn), rtol=0, atol=1e-5)
    torch.testing.assert_close(one, pa, rtol=0, atol=1e-6)
    assert not torch.allclose(half, one, atol=1e-3)


def test_timestep_bounds_match_comfyui_sigma_comparison(sd1):
    """ComfyUI keeps an entry while sigma(end) <= sigma <= sigma(start), sigma(p) being the
    log-linear interpolated training sigma at timestep (1 - p) * 999; check the step
    timesteps of a real schedule against that, for several ranges."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(
        sd1.pipe.scheduler.config, timestep_spacing="linspace"
    )
    sched.set_timesteps(7)
    alphas = sched.alphas_cumprod
    log_sigmas = (((1 - alphas) / alphas) ** 0.5).log()

    def sigma(t: float) -> float:
        lo = min(int(math.floor(t)), 998)
        w = t - lo
        return float(((1 - w) * log_sigmas[lo] + w * log_sigmas[lo + 1]).exp())

    def comfy_active(start, end, t):
        s_start = 1e9 if start <= 0 else (0.0 if start >= 1 else sigma((1 - start) * 999))
        s_end = 1e9 if end <= 0 else (0.0 if end >= 1 else sigma((1 - end) * 999))
        return s_end <= sigma(float(t)) <= s_start

    for start, end in [(0, 1), (0, 0.3), (0.3, 1), (0.2, 0.6), (0.6, 0.2), (1, 1), (0, 0)]:
        bounds = timestep_bounds(start, end)
        for t in sched.timesteps:
            assert is_active(bounds, float(t)) == comfy_active(start, end, t), (
                start,
                end,
                float(t),
            )


def _run(ckpt, positive, negative, **kw):
    kw = {"steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler_name": "normal", **kw}
    job = SampleJob(7, torch.zeros(1, 4, 8, 8), positive, negative, kw.pop("noise_mask", None))
    latent = kw.pop("latent", None)
    if latent is not None:
        job.latent = latent
    with ckpt.lock:
        ckpt.activate_loras()
        return sample(ckpt, [job], **kw)[0]


def test_a_timestep_range_outside_the_steps_run_is_no_entry(sd1):
    """Steps 0-2 of 4 run timesteps 999 and 666; an entry active from 50 % on (t <= 499.5)
    never acts there."""
    late = B.replace(start_percent=0.5, end_percent=1.0)
    alone = _run(sd1, Conditioning(A.embeds), Conditioning(N.embeds), start_step=0, end_step=2)
    both = _run(
        sd1, Conditioning(entries=[A, late]), Conditioning(N.embeds), start_step=0, end_step=2
    )
    torch.testing.assert_close(both, alone, rtol=0, atol=1e-5)


def test_a_split_timestep_range_equals_two_sampler_passes(sd1):
    """A for the first half of the schedule and B for the second is what two passes give:
    steps 0-2 with A (leftover noise kept), then steps 2-4 with B, no noise added."""
    first, second = A.replace(end_percent=0.5), B.replace(start_percent=0.5)
    neg = Conditioning(N.embeds)
    split = _run(sd1, Conditioning(entries=[first, second]), neg, start_step=0, end_step=4)
    half = _run(
        sd1, Conditioning(A.embeds), neg, start_step=0, end_step=2, force_full_denoise=False
    )
    expected = _run(
        sd1, Conditioning(B.embeds), neg, start_step=2, end_step=4, add_noise=False, latent=half
    )
    torch.testing.assert_close(split, expected, rtol=0, atol=1e-5)


def test_a_noise_mask_of_zeros_leaves_the_latent_unchanged_and_half_a_mask_half(sd1):
    latent = _x(6)
    pos, neg = Conditioning(A.embeds), Conditioning(N.embeds)
    kept = _run(sd1, pos, neg, latent=latent, noise_mask=torch.zeros(1, 1, 8, 8))
    assert torch.equal(kept, latent)
    mask = torch.zeros(1, 1, 64, 64)  # at pixel size: resized to the latent
    mask[..., 32:] = 1.0
    half = _run(sd1, pos, neg, latent=latent, noise_mask=mask)
    assert torch.equal(half[..., :4], latent[..., :4])
    assert (half[..., 4:] - latent[..., 4:]).abs().min() > 0
    assert torch.isfinite(half).all()


def test_two_jobs_with_different_entries_in_one_loop_match_each_alone(sd1):
    """Job batching: a plain job and an area job share the loop; each gets what it gets alone."""
    pos_a = Conditioning(entries=[A, B.replace(area=Area(4, 8, 0, 0))])
    pos_b = Conditioning(C.embeds)
    neg = Conditioning(N.embeds)
    kw = {"steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler_name": "normal"}
    jobs = [
        SampleJob(11, torch.zeros(1, 4, 8, 8), pos_a, neg),
        SampleJob(12, torch.zeros(2, 4, 8, 8), pos_b, neg),
    ]
    with sd1.lock:
        sd1.activate_loras()
        together = sample(sd1, jobs, **kw)
        alone = [sample(sd1, [j], **kw)[0] for j in jobs]
    for a, b in zip(together, alone, strict=True):
        # A different batch composition changes the UNet's float rounding (latents ~10).
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_the_batching_key_keeps_plain_calls_together_and_splits_what_differs(sd1):
    """runner.jobs batching: plain calls with different prompts share a loop as before;
    entry structure, a noise mask and the model's prediction override each split it."""
    from runner.diffusion.batched import SamplerCall, _group_key
    from runner.handles import ModelHandle

    model = ModelHandle(sd1)
    kwargs = {"seed": 1, "steps": 2, "cfg": 5.0}

    def key(positive, model=model, noise_mask=None, seed=1):
        call = SamplerCall(
            None,
            model,
            positive,
            Conditioning(N.embeds),
            torch.zeros(1, 4, 8, 8),
            {**kwargs, "seed": seed},
            noise_mask,
        )
        return _group_key(call)

    plain = key(Conditioning(A.embeds))
    assert key(Conditioning(B.embeds), seed=2) == plain
    area = Conditioning(entries=[A, B.replace(area=Area(4, 4, 0, 0))])
    assert key(area) != plain
    assert key(area) == key(Conditioning(entries=[C, B.replace(area=Area(4, 4, 0, 0))]))
    assert key(Conditioning(entries=[A, B.replace(area=Area(4, 8, 0, 0))])) != key(area)
    assert key(Conditioning(A.embeds), noise_mask=torch.ones(1, 1, 8, 8)) != plain
    assert key(Conditioning(A.embeds), model=ModelHandle(sd1, prediction="v_prediction")) != plain


@pytest.mark.parametrize("sampler", ["euler_ancestral", "heun", "dpmpp_2m", "ddim", "lcm"])
def test_inpainting_in_the_loop_works_with_every_scheduler_family(sd1, sampler):
    """The unmasked half is re-noised with each scheduler's own add_noise at every step and
    is exactly the input at the end; the masked half is sampled."""
    latent = _x(8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1.0
    out = _run(
        sd1,
        Conditioning(A.embeds),
        Conditioning(N.embeds),
        latent=latent,
        noise_mask=mask,
        sampler_name=sampler,
        steps=3,
    )
    assert torch.equal(out[..., :4], latent[..., :4])
    assert torch.isfinite(out).all() and (out[..., 4:] - latent[..., 4:]).abs().min() > 0


def test_the_models_prediction_override_reaches_the_scheduler(sd1):
    """ModelSamplingDiscrete's prediction type and zsnr change the schedule's arithmetic;
    lcm sampling needs the lcm sampler."""
    pos, neg = Conditioning(A.embeds), Conditioning(N.embeds)
    eps = _run(sd1, pos, neg, steps=2)
    assert torch.equal(_run(sd1, pos, neg, steps=2, prediction="eps"), eps)
    v = _run(sd1, pos, neg, steps=2, prediction="v_prediction")
    assert not torch.allclose(v, eps, atol=1e-3)
    assert torch.isfinite(_run(sd1, pos, neg, steps=2, prediction="v_prediction", zsnr=True)).all()
    # lcm sampling with another sampler runs on easel's sigma path, as ComfyUI allows it.
    assert torch.isfinite(_run(sd1, pos, neg, steps=2, prediction="lcm")).all()
    with pytest.raises(ValueError, match="'eps2'"):
        _run(sd1, pos, neg, steps=2, prediction="eps2")
