"""The denoising loop behind KSampler and KSamplerAdvanced.

It is the loop of diffusers' Stable Diffusion pipelines (scale the input, predict noise
for the unconditional and conditional halves, apply classifier-free guidance, step the
scheduler), with ComfyUI's semantics for what goes in:

* the initial noise is drawn on the CPU from ``seed`` for the whole batch, so a seed gives
  the same image on any device;
* ``denoise < 1`` builds a schedule of ``int(steps / denoise)`` steps and runs the last
  ``steps`` of them (diffusers' img2img ``strength`` would run ``int(steps * strength)``);
* KSamplerAdvanced's start/end steps and leftover noise.

With a zero latent and ``denoise = 1`` it computes exactly what ``StableDiffusionPipeline``
computes from the same latents, which the tests check pixel for pixel.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from runner.diffusion.samplers import make_scheduler

# ComfyUI's latent -> RGB approximations, for step previews.
_LATENT_RGB = {
    "sd": (
        [
            [0.3512, 0.2297, 0.3227],
            [0.3250, 0.4974, 0.2350],
            [-0.2829, 0.1762, 0.2721],
            [-0.2120, -0.2616, -0.7177],
        ],
        [0.0, 0.0, 0.0],
    ),
    "sdxl": (
        [
            [0.3651, 0.4232, 0.4341],
            [-0.2533, -0.0042, 0.1068],
            [0.1076, 0.1111, -0.0362],
            [-0.3165, -0.2492, -0.2188],
        ],
        [0.1084, -0.0175, -0.0011],
    ),
}


MAX_SCHEDULE = 100_000
"""The longest schedule KSampler builds for ``denoise < 1`` (``steps / denoise`` steps)."""


@dataclass
class Conditioning:
    """A prompt encoded by a text encoder: per-token embeddings (and SDXL's pooled vector)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Unit Gaussian noise for a whole batch, drawn on the CPU from ``seed`` as ComfyUI does."""
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")


def latent_preview(latents: torch.Tensor, family: str, size: int = 128):
    """A small RGB preview of the first latent in the batch (no VAE needed)."""
    from PIL import Image

    factors, bias = _LATENT_RGB["sdxl" if family == "sdxl" else "sd"]
    lat = latents[0].float().cpu()
    rgb = torch.einsum(
        "chw,cr->hwr", lat / 0.18215 if family != "sdxl" else lat / 0.13025, torch.tensor(factors)
    ) + torch.tensor(bias)
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    image = Image.fromarray(rgb)
    image.thumbnail((size, size))
    return image


def _repeat(t: torch.Tensor, batch: int) -> torch.Tensor:
    return t if t.shape[0] == batch else t[:1].repeat(batch, *([1] * (t.dim() - 1)))


def _unet_conditioning(checkpoint, positive, negative, batch, latent_shape, do_cfg, device, dtype):
    """``(encoder_hidden_states, added_cond_kwargs)`` for a batch: prompt embeddings
    (unconditional half first under CFG, as diffusers orders them) and SDXL's pooled
    embeddings and size ids."""
    cond = _repeat(positive.embeds, batch).to(device, dtype)
    uncond = _repeat(negative.embeds, batch).to(device, dtype)
    if do_cfg and cond.shape[1] != uncond.shape[1]:
        # Long prompts are 77-token chunks: repeat both sides to a common length, as ComfyUI does.
        common = math.lcm(cond.shape[1], uncond.shape[1])
        cond = cond.repeat(1, common // cond.shape[1], 1)
        uncond = uncond.repeat(1, common // uncond.shape[1], 1)
    embeds = torch.cat([uncond, cond]) if do_cfg else cond
    if not checkpoint.is_xl:
        return embeds, None
    height, width = latent_shape[-2] * 8, latent_shape[-1] * 8
    time_ids = torch.tensor(
        [[height, width, 0, 0, height, width]], device=device, dtype=dtype
    ).repeat(batch, 1)
    pooled = _repeat(positive.pooled, batch).to(device, dtype)
    if do_cfg:
        pooled = torch.cat([_repeat(negative.pooled, batch).to(device, dtype), pooled])
        time_ids = torch.cat([time_ids, time_ids])
    return embeds, {"text_embeds": pooled, "time_ids": time_ids}


def _guided_noise(unet, model_in, t, embeds, added, do_cfg: bool, cfg: float) -> torch.Tensor:
    """One UNet call and classifier-free guidance, as diffusers' pipelines combine them."""
    noise_pred = unet(
        model_in, t, encoder_hidden_states=embeds, added_cond_kwargs=added, return_dict=False
    )[0]
    if not do_cfg:
        return noise_pred
    noise_uncond, noise_cond = noise_pred.chunk(2)
    return noise_uncond + cfg * (noise_cond - noise_uncond)


def sample(
    checkpoint,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler_name: str,
    positive: Conditioning,
    negative: Conditioning,
    latent: torch.Tensor,
    denoise: float = 1.0,
    add_noise: bool = True,
    start_step: int | None = None,
    end_step: int | None = None,
    force_full_denoise: bool = True,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    batch_seeds: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Denoise ``latent`` (scaled latents, as the UNet sees them) and return the result.

    ``on_step(i, total, latents)`` is called after each scheduler step; it may raise to
    cancel. Call with the checkpoint's lock held and its UNet LoRAs set.

    ``batch_seeds`` runs several jobs as one batch: ``(seed, count)`` per job, in batch
    order, counts adding up to the batch. Each job then gets its own noise and its own
    scheduler (and step generator) from its seed, exactly as if it ran alone; ``seed``
    is ignored. Without it, the whole batch draws from ``seed``.
    """
    if batch_seeds is not None:
        return _sample_jobs(
            checkpoint,
            batch_seeds,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler_name=scheduler_name,
            positive=positive,
            negative=negative,
            latent=latent,
            denoise=denoise,
            add_noise=add_noise,
            start_step=start_step,
            end_step=end_step,
            force_full_denoise=force_full_denoise,
            on_step=on_step,
        )
    pipe = checkpoint.pipe
    unet = pipe.unet
    device = checkpoint.device
    dtype = unet.dtype
    sched, step_kwargs = make_scheduler(
        sampler_name, scheduler_name, _scheduler_config(pipe.scheduler.config, seed)
    )

    if start_step is None:  # KSampler: ComfyUI's denoise semantics
        if (
            denoise < 1.0 and steps / denoise > MAX_SCHEDULE
        ):  # a tiny denoise would need a huge schedule
            raise ValueError(
                f"denoise {denoise:g} with {steps} steps needs a schedule of {steps / denoise:.3g} steps, "
                f"more than the {MAX_SCHEDULE} allowed; raise denoise or lower steps"
            )
        total = steps if denoise >= 1.0 else max(int(steps / denoise), steps)
        start_step, end_step = total - steps, total
    else:
        total = steps
        end_step = min(end_step if end_step is not None else total, total)
    sched.set_timesteps(total, device=device)
    order = getattr(sched, "order", 1)
    timesteps = sched.timesteps[start_step * order : end_step * order]
    if len(timesteps) == 0:
        return latent.clone()
    if start_step > 0 and hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start_step * order)

    batch = latent.shape[0]
    latent = latent.to(device=device, dtype=torch.float32)
    if add_noise:
        noise = initial_noise(tuple(latent.shape), seed).to(device)
        if start_step == 0:
            x = noise * sched.init_noise_sigma + latent
        else:
            x = sched.add_noise(latent, noise, timesteps[:1].repeat(batch))
    else:
        x = latent
    x = x.to(dtype)

    do_cfg = cfg > 1.0
    embeds, added = _unet_conditioning(
        checkpoint, positive, negative, batch, tuple(latent.shape), do_cfg, device, dtype
    )

    # Progress counts sampler steps as ComfyUI does: second-order schedulers (heun, dpm_2,
    # dpmpp_sde) make two scheduler calls per step.
    n_steps = -(-len(timesteps) // order)
    step_params = inspect.signature(sched.step).parameters
    if "generator" in step_params:
        step_kwargs["generator"] = torch.Generator("cpu").manual_seed((int(seed) + 1) % 2**64)
    last = None
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            model_in = sched.scale_model_input(torch.cat([x] * 2) if do_cfg else x, t)
            noise_pred = _guided_noise(unet, model_in, t, embeds, added, do_cfg, cfg)
            last = sched.step(noise_pred, t, x, **step_kwargs, return_dict=True)
            x = last.prev_sample
            if on_step is not None and ((i + 1) % order == 0 or i + 1 == len(timesteps)):
                on_step(n_steps if i + 1 == len(timesteps) else (i + 1) // order, n_steps, x)
    if end_step < total and force_full_denoise and last is not None:
        denoised = getattr(last, "pred_original_sample", None)
        if denoised is not None:
            x = denoised
    return x.to(torch.float32).cpu()


def _scheduler_config(config, seed: int) -> dict:
    out = dict(config)
    out["noise_sampler_seed"] = int(seed) % (2**63)
    return out


def _schedule(
    steps: int, denoise: float, start_step: int | None, end_step: int | None
) -> tuple[int, int, int]:
    """``(total, start_step, end_step)`` as :func:`sample` computes them."""
    if start_step is None:
        if denoise < 1.0 and steps / denoise > MAX_SCHEDULE:
            raise ValueError(
                f"denoise {denoise:g} with {steps} steps needs a schedule of {steps / denoise:.3g} steps, "
                f"more than the {MAX_SCHEDULE} allowed; raise denoise or lower steps"
            )
        total = steps if denoise >= 1.0 else max(int(steps / denoise), steps)
        return total, total - steps, total
    return steps, start_step, min(end_step if end_step is not None else steps, steps)


def _sample_jobs(
    checkpoint,
    batch_seeds: Sequence[tuple[int, int]],
    *,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler_name: str,
    positive: Conditioning,
    negative: Conditioning,
    latent: torch.Tensor,
    denoise: float,
    add_noise: bool,
    start_step: int | None,
    end_step: int | None,
    force_full_denoise: bool,
    on_step: Callable[[int, int, torch.Tensor], None] | None,
) -> torch.Tensor:
    """:func:`sample` for a batch made of several jobs: the UNet runs once per step for the
    whole batch; noise, scheduler state and step noise are per job, from each job's seed."""
    pipe = checkpoint.pipe
    unet = pipe.unet
    device = checkpoint.device
    dtype = unet.dtype
    batch = latent.shape[0]
    if sum(count for _, count in batch_seeds) != batch or any(
        count < 1 for _, count in batch_seeds
    ):
        raise ValueError(f"batch_seeds {list(batch_seeds)} do not add up to the batch of {batch}")
    total, start_step, end_step = _schedule(steps, denoise, start_step, end_step)
    parts = []  # (scheduler, step kwargs, slice of the batch)
    offset = 0
    for seed, count in batch_seeds:
        sched, step_kwargs = make_scheduler(
            sampler_name, scheduler_name, _scheduler_config(pipe.scheduler.config, seed)
        )
        sched.set_timesteps(total, device=device)
        if "generator" in inspect.signature(sched.step).parameters:
            step_kwargs["generator"] = torch.Generator("cpu").manual_seed((int(seed) + 1) % 2**64)
        parts.append((sched, step_kwargs, slice(offset, offset + count), seed))
        offset += count
    first = parts[0][0]
    order = getattr(first, "order", 1)
    timesteps = first.timesteps[start_step * order : end_step * order]
    if len(timesteps) == 0:
        return latent.clone()
    if start_step > 0:
        for sched, *_ in parts:
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(start_step * order)

    latent = latent.to(device=device, dtype=torch.float32)
    pieces = []
    for sched, _, part, seed in parts:
        lat = latent[part]
        if not add_noise:
            pieces.append(lat)
            continue
        noise = initial_noise(tuple(lat.shape), seed).to(device)
        if start_step == 0:
            pieces.append(noise * sched.init_noise_sigma + lat)
        else:
            pieces.append(sched.add_noise(lat, noise, timesteps[:1].repeat(lat.shape[0])))
    x = torch.cat(pieces).to(dtype)

    do_cfg = cfg > 1.0
    embeds, added = _unet_conditioning(
        checkpoint, positive, negative, batch, tuple(latent.shape), do_cfg, device, dtype
    )

    n_steps = -(-len(timesteps) // order)
    lasts: list = [None] * len(parts)
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            scaled = torch.cat([sched.scale_model_input(x[part], t) for sched, _, part, _ in parts])
            model_in = torch.cat([scaled] * 2) if do_cfg else scaled
            noise_pred = _guided_noise(unet, model_in, t, embeds, added, do_cfg, cfg)
            outs = []
            for j, (sched, step_kwargs, part, _) in enumerate(parts):
                lasts[j] = sched.step(noise_pred[part], t, x[part], **step_kwargs, return_dict=True)
                outs.append(lasts[j].prev_sample)
            x = torch.cat(outs)
            if on_step is not None and ((i + 1) % order == 0 or i + 1 == len(timesteps)):
                on_step(n_steps if i + 1 == len(timesteps) else (i + 1) // order, n_steps, x)
    if end_step < total and force_full_denoise and all(last is not None for last in lasts):
        denoised = [getattr(last, "pred_original_sample", None) for last in lasts]
        if all(d is not None for d in denoised):
            x = torch.cat(denoised)
    return x.to(torch.float32).cpu()
