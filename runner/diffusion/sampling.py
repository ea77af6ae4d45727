"""The denoising loop behind KSampler and KSamplerAdvanced, for one job or several.

It is the loop of diffusers' Stable Diffusion pipelines (scale the input, predict noise
for the unconditional and conditional halves, apply classifier-free guidance, step the
scheduler), with ComfyUI's semantics for what goes in:

* the initial noise is drawn on the CPU from each job's seed for that job's latents, so a
  seed gives the same image on any device and in any batch;
* ``denoise < 1`` builds a schedule of ``int(steps / denoise)`` steps and runs the last
  ``steps`` of them (diffusers' img2img ``strength`` would run ``int(steps * strength)``);
* KSamplerAdvanced's start/end steps and leftover noise.

:func:`sample` takes a list of :class:`SampleJob` (one sampler node alone is a batch of
one): the UNet runs once per step for all of them, while noise, scheduler state and step
noise are each job's own, so a job gets what it would get alone. With a zero latent and
``denoise = 1`` it computes exactly what ``StableDiffusionPipeline`` computes from the
same latents, which the tests check pixel for pixel.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from runner.diffusion.guidance import Guidance
from runner.diffusion.model_sampling import PREDICTIONS, diffusers_prediction
from runner.diffusion.samplers import make_scheduler, uses_sigma_path
from runner.handles import Conditioning

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
class SampleJob:
    """One job's share of a sampling loop: its latents (scaled, as the UNet sees them),
    its prompts and the seed its noise, scheduler and step noise come from.

    ``noise_mask`` (``[batch or 1, 1, h, w]`` at latent or any resolution, LATENT's
    ``"noise_mask"``) limits where the sampler may change the latent: 1 denoises, 0 keeps
    the input latent (inpainting)."""

    seed: int
    latent: torch.Tensor
    positive: Conditioning
    negative: Conditioning
    noise_mask: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """How many latents of the batch are this job's."""
        return self.latent.shape[0]


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


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _scheduler_config(config, seed: int, prediction: str | None = None, zsnr: bool = False) -> dict:
    out = dict(config)
    out["noise_sampler_seed"] = int(seed) % (2**63)
    if prediction is not None:
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown prediction type {prediction!r}; expected one of {', '.join(PREDICTIONS)}"
            )
        # lcm is an eps model sampled with LCM's boundary conditions, which diffusers'
        # LCMScheduler computes itself (the lcm sampler only: _check_prediction).
        out["prediction_type"] = diffusers_prediction(prediction) or "epsilon"
    if zsnr:
        out["rescale_betas_zero_snr"] = True
    return out


def _check_prediction(prediction: str | None, sampler_name: str) -> None:
    """LCM sampling reaches this (diffusers) path only with samplers easel runs through
    diffusers alone (deis, uni_pc...), whose schedulers cannot apply LCM's boundary
    conditions."""
    if prediction == "lcm":
        raise ValueError(
            f"a model set to lcm sampling (ModelSamplingDiscrete) cannot run with sampler "
            f"{sampler_name!r}; use lcm, euler or another of ComfyUI's k-diffusion samplers"
        )


def _noise_mask(job: SampleJob, device) -> torch.Tensor | None:
    """The job's noise mask as ``[count, 1, h, w]`` float32 at the latent size (resized
    bilinearly, as ComfyUI's ``prepare_mask``), or None."""
    if job.noise_mask is None:
        return None
    mask = job.noise_mask.float()
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    mask = mask[:, :1]
    h, w = job.latent.shape[-2:]
    if tuple(mask.shape[-2:]) != (h, w):
        mask = torch.nn.functional.interpolate(mask, size=(h, w), mode="bilinear")
    reps = -(-job.count // mask.shape[0])
    return mask.repeat(reps, 1, 1, 1)[: job.count].to(device)


def _schedule(
    steps: int, denoise: float, start_step: int | None, end_step: int | None
) -> tuple[int, int, int]:
    """``(total, start_step, end_step)``: the schedule's length and the steps of it to run.

    Without ``start_step`` (KSampler) ComfyUI's denoise semantics: the last ``steps`` of
    ``int(steps / denoise)``; with it (KSamplerAdvanced) ``start_step..end_step`` of ``steps``.
    """
    if start_step is None:
        if denoise < 1.0 and steps / denoise > MAX_SCHEDULE:  # a tiny denoise: a huge schedule
            raise ValueError(
                f"denoise {denoise:g} with {steps} steps needs a schedule of {steps / denoise:.3g} steps, "
                f"more than the {MAX_SCHEDULE} allowed; raise denoise or lower steps"
            )
        total = steps if denoise >= 1.0 else max(int(steps / denoise), steps)
        return total, total - steps, total
    return steps, start_step, min(end_step if end_step is not None else steps, steps)


def sample(
    checkpoint,
    jobs: Sequence[SampleJob],
    *,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler_name: str,
    denoise: float = 1.0,
    add_noise: bool = True,
    start_step: int | None = None,
    end_step: int | None = None,
    force_full_denoise: bool = True,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    prediction: str | None = None,
    zsnr: bool = False,
) -> list[torch.Tensor]:
    """Denoise the latents of ``jobs`` as one batch; returns each job's latents, in order.

    The UNet runs once per step for the whole batch; each job has its own noise, its own
    scheduler and its own step generator from its seed, exactly as if it ran alone.
    ``on_step(i, total, latents)`` is called after each sampler step with the whole
    batch's latents; it may raise to cancel. Call with the checkpoint's lock held and its
    UNet LoRAs set. ``prediction`` and ``zsnr`` are the MODEL's ModelSamplingDiscrete
    overrides (:class:`~runner.handles.ModelHandle`).
    """
    if not jobs:
        raise ValueError("sample() needs at least one job, got none")
    shapes = {tuple(j.latent.shape[1:]) for j in jobs}
    if len(shapes) > 1:
        raise ValueError(f"the jobs of one batch need latents of one shape, got {sorted(shapes)}")
    if uses_sigma_path(sampler_name, scheduler_name, prediction, zsnr):  # easel's own samplers
        from runner.diffusion.k_samplers.driver import sample_ksampler

        return sample_ksampler(
            checkpoint,
            jobs,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler_name=scheduler_name,
            denoise=denoise,
            add_noise=add_noise,
            start_step=start_step,
            end_step=end_step,
            force_full_denoise=force_full_denoise,
            on_step=on_step,
            prediction=prediction,
            zsnr=zsnr,
        )
    pipe = checkpoint.pipe
    unet = pipe.unet
    device = checkpoint.device
    dtype = unet.dtype
    total, start_step, end_step = _schedule(steps, denoise, start_step, end_step)
    parts = []  # (scheduler, step kwargs, slice of the batch, seed)
    offset = 0
    for job in jobs:
        _check_prediction(prediction, sampler_name)
        sched, step_kwargs = make_scheduler(
            sampler_name,
            scheduler_name,
            _scheduler_config(pipe.scheduler.config, job.seed, prediction, zsnr),
        )
        sched.set_timesteps(total, device=device)
        if "generator" in inspect.signature(sched.step).parameters:
            step_kwargs["generator"] = torch.Generator("cpu").manual_seed(
                (int(job.seed) + 1) % 2**64
            )
        parts.append((sched, step_kwargs, slice(offset, offset + job.count), job.seed))
        offset += job.count
    bounds = [part for _, _, part, _ in parts]
    latent = _cat([j.latent for j in jobs])
    first = parts[0][0]
    order = getattr(first, "order", 1)
    timesteps = first.timesteps[start_step * order : end_step * order]
    if len(timesteps) == 0:
        out = latent.clone()
        return [out[part] for part in bounds]
    if start_step > 0:
        for sched, *_ in parts:
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(start_step * order)

    latent = latent.to(device=device, dtype=torch.float32)
    masks = [_noise_mask(job, device) for job in jobs]
    pieces, noises = [], []
    for sched, _, part, seed in parts:
        lat = latent[part]
        if not add_noise:
            pieces.append(lat)
            noises.append(torch.zeros_like(lat))
            continue
        noise = initial_noise(tuple(lat.shape), seed).to(device)
        noises.append(noise)
        if start_step == 0:
            pieces.append(noise * sched.init_noise_sigma + lat)
        else:
            pieces.append(sched.add_noise(lat, noise, timesteps[:1].repeat(lat.shape[0])))
    x = _cat(pieces).to(dtype)

    def keep_unmasked(x: torch.Tensor, t) -> torch.Tensor:
        """Inpainting (ComfyUI's KSamplerX0Inpaint): where a job's noise mask is 0 the
        latent is its input latent noised to the current level, from the job's own noise."""
        out = []
        for j, (sched, _, part, _) in enumerate(parts):
            xj, m = x[part], masks[j]
            if m is not None:
                lat = latent[part]
                level = sched.add_noise(lat, noises[j], t.reshape(1).repeat(lat.shape[0]))
                xj = (xj.float() * m + level * (1 - m)).to(x.dtype)
            out.append(xj)
        return _cat(out)

    guidance = Guidance(
        checkpoint, jobs, cfg, latent_shape=tuple(latent.shape), device=device, dtype=dtype
    )

    # Progress counts sampler steps as ComfyUI does: second-order schedulers (heun, dpm_2,
    # dpmpp_sde) make two scheduler calls per step.
    n_steps = -(-len(timesteps) // order)
    inpainting = any(m is not None for m in masks)
    lasts: list = [None] * len(parts)
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            if inpainting:
                x = keep_unmasked(x, t)
            scaled = _cat([sched.scale_model_input(x[part], t) for sched, _, part, _ in parts])
            noise_pred = guidance(scaled, t)
            outs = []
            for j, (sched, step_kwargs, part, _) in enumerate(parts):
                lasts[j] = sched.step(noise_pred[part], t, x[part], **step_kwargs, return_dict=True)
                outs.append(lasts[j].prev_sample)
            x = _cat(outs)
            if on_step is not None and ((i + 1) % order == 0 or i + 1 == len(timesteps)):
                on_step(n_steps if i + 1 == len(timesteps) else (i + 1) // order, n_steps, x)
    if end_step < total and force_full_denoise and all(last is not None for last in lasts):
        denoised = [getattr(last, "pred_original_sample", None) for last in lasts]
        if all(d is not None for d in denoised):
            x = _cat(denoised)
    out = x.to(torch.float32)
    if inpainting:
        # Outside the mask the result is the input latent: exactly, when the schedule ran
        # to its end or was fully denoised; noised to the level reached otherwise.
        leftover = end_step < total and not force_full_denoise
        finals = []
        for j, (sched, _, part, _) in enumerate(parts):
            m, target = masks[j], latent[part]
            if m is not None and leftover:
                t_next = first.timesteps[end_step * order : end_step * order + 1]
                target = sched.add_noise(target, noises[j], t_next.repeat(target.shape[0]))
            finals.append(out[part] if m is None else out[part] * m + target * (1 - m))
        out = _cat(finals)
    out = out.cpu()
    return [out[part] for part in bounds]
