"""The sigma path: a sigma-based sampler run on a checkpoint for a batch of jobs.

:func:`sample_sigmas` is what SamplerCustom(Advanced) runs, and what KSampler runs
(:func:`sample_ksampler`) for a sampler or scheduler that diffusers has no faithful
equivalent for. ComfyUI's semantics:

* the start is ``latent + noise * sigma_0`` (``sqrt(1 + sigma_0^2)`` when the schedule
  starts at the model's largest sigma), the noise drawn on the CPU from each job's seed;
* the denoiser is the guider's prediction (:class:`Guider`, on
  :class:`~runner.diffusion.guidance.Guidance`) at ``c_in(sigma) x`` and ``t(sigma)``,
  turned into ``x0`` by the model's prediction type (:mod:`runner.diffusion.model_sampling`);
* a job's ``noise_mask`` keeps the input latent outside the mask (ComfyUI's
  KSamplerX0Inpaint): the denoiser sees ``x m + (latent + noise sigma)(1 - m)`` and
  returns ``x0 m + latent (1 - m)``;
* step noise is each job's own (Gaussian from ``seed + 1``, or a Brownian tree from ``seed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from runner.diffusion.guidance import Guidance
from runner.diffusion.k_samplers import Sampler, get_sampler
from runner.diffusion.k_samplers.common import BrownianNoise, GaussianNoise
from runner.diffusion.model_sampling import ModelSampling, model_sampling
from runner.diffusion.sampling import SampleJob, initial_noise
from runner.diffusion.schedules import calculate_sigmas

MAX_SCHEDULE = 100_000


@dataclass(frozen=True)
class Guider:
    """GUIDER: how the model's prediction is guided (ComfyUI's CFGGuider family).

    ``kind`` is ``"cfg"`` (positive, negative, ``cfg``), ``"basic"`` (positive only) or
    ``"dual_cfg"`` (``conds = (cond1, cond2, negative)``, ``cfg`` for cond1 against cond2 and
    ``cfg2`` for cond2 against the negative; ``nested`` style). ``model`` is the MODEL handle."""

    model: Any
    kind: str
    conds: tuple[Any, ...]
    cfg: float = 1.0
    cfg2: float = 1.0
    nested: bool = False

    @property
    def positive(self):
        return self.conds[0]

    @property
    def negative(self):
        return self.conds[-1] if self.kind != "basic" else self.conds[0]

    def jobs(self, latents: Sequence[torch.Tensor], seeds: Sequence[int], masks=None):
        """One :class:`SampleJob` per latent batch, with this guider's prompts."""
        masks = masks or [None] * len(latents)
        return [
            SampleJob(seed, lat, self.positive, self.negative, noise_mask=m)
            for lat, seed, m in zip(latents, seeds, masks, strict=True)
        ]


@dataclass
class _Prediction:
    """The guided UNet output (and the unconditional one when asked) for a batch."""

    guider: Guider
    guidance: Guidance
    jobs: list = field(default_factory=list)

    def __call__(self, model_in, t, need_uncond: bool):
        g = self.guider
        jobs = self.jobs
        if g.kind == "basic":
            out = self.guidance(model_in, t)
            return out, (out if need_uncond else None)
        if g.kind == "cfg":
            if not need_uncond:
                return self.guidance(model_in, t), None
            uncond, cond = self.guidance.predict_sides(
                model_in, t, [[j.negative for j in jobs], [j.positive for j in jobs]]
            )
            return uncond + g.cfg * (cond - uncond), uncond
        cond1, cond2, negative = g.conds
        n = len(jobs)
        neg, mid, pos = self.guidance.predict_sides(
            model_in, t, [[negative] * n, [cond2] * n, [cond1] * n]
        )
        if g.nested:
            text = mid + g.cfg * (pos - mid)
            out = neg + g.cfg2 * (text - neg)
        else:
            out = neg + g.cfg2 * (mid - neg) + g.cfg * (pos - mid)
        return out, neg


class GuidedDenoiser:
    """``D(x, sigma)`` for the samplers: the guided prediction as ``x0``, masked jobs
    keeping their input latent outside the mask."""

    def __init__(self, predict, ms: ModelSampling, dtype, latent, noise, mask):
        self.predict, self.ms, self.dtype = predict, ms, dtype
        self.latent, self.noise, self.mask = latent, noise, mask
        self.needs_uncond = False
        self.uncond: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        mask = self.mask
        if mask is not None:
            x = x * mask + (self.latent + self.noise * sigma) * (1 - mask)
        t = self.ms.timestep(sigma).to(torch.float32).to(x.device)
        model_in = (x * float(self.ms.c_in(torch.tensor(sigma)))).to(self.dtype)
        out, uncond = self.predict(model_in, t, self.needs_uncond)
        self.calls += 1
        denoised = self.ms.denoised(out.float(), x, sigma)
        if uncond is not None:
            self.uncond = self.ms.denoised(uncond.float(), x, sigma)
        if mask is not None:
            denoised = denoised * mask + self.latent * (1 - mask)
            if self.uncond is not None:
                self.uncond = self.uncond * mask + self.latent * (1 - mask)
        return denoised


def _mask_for(job: SampleJob, like: torch.Tensor) -> torch.Tensor:
    """The job's noise mask at the latent's size and batch, ``[n, c, h, w]`` (ComfyUI's
    ``prepare_mask``: bilinear resize, repeated over channels and batch)."""
    mask = job.noise_mask.float()
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    mask = F.interpolate(mask, size=like.shape[-2:], mode="bilinear", align_corners=False)
    mask = mask[:, :1].expand(-1, like.shape[1], -1, -1)
    n = like.shape[0]
    if mask.shape[0] < n:
        mask = mask.repeat(-(-n // mask.shape[0]), 1, 1, 1)
    return mask[:n].to(like.device)


def _cat(tensors):
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def sample_sigmas(
    checkpoint,
    jobs: Sequence[SampleJob],
    sigmas: torch.Tensor,
    sampler: Sampler,
    guider: Guider,
    *,
    ms: ModelSampling,
    add_noise: bool = True,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``sampler`` over ``sigmas`` for the jobs' latents as one batch; returns
    ``(outputs, denoised)``, each one tensor per job: the sampled latents and the last
    denoised estimate (SamplerCustom's ``denoised_output``). Call with the checkpoint's
    lock held and its UNet LoRAs set."""
    if not jobs:
        raise ValueError("sampling needs at least one job, got none")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1).cpu()
    bounds, offset = [], 0
    for job in jobs:
        bounds.append(slice(offset, offset + job.count))
        offset += job.count
    latent = _cat([j.latent.float() for j in jobs])
    if len(sigmas) == 0:
        out = latent.clone()
        return [out[b] for b in bounds], [out[b] for b in bounds]
    device = checkpoint.device
    dtype = checkpoint.pipe.unet.dtype
    latent = latent.to(device)
    noise = _cat(
        [
            initial_noise(tuple(j.latent.shape), j.seed)
            if add_noise
            else torch.zeros(tuple(j.latent.shape))
            for j in jobs
        ]
    ).to(device)
    first = float(sigmas[0])
    x = ms.noise_scaling(first, noise, latent, ms.is_max_denoise(first))
    mask = None
    if any(j.noise_mask is not None for j in jobs):
        mask = _cat(
            [
                _mask_for(j, latent[b]) if j.noise_mask is not None else torch.ones_like(latent[b])
                for j, b in zip(jobs, bounds, strict=True)
            ]
        )
    guidance = Guidance(
        checkpoint, jobs, guider.cfg, latent_shape=tuple(latent.shape), device=device, dtype=dtype
    )
    predict = _Prediction(guider, guidance, list(jobs))
    model = GuidedDenoiser(predict, ms, dtype, latent, noise, mask)
    seeds, counts = [j.seed for j in jobs], [j.count for j in jobs]
    positive = sigmas[sigmas > 0]
    if sampler.noise == "brownian" and len(positive):
        step_noise = BrownianNoise(seeds, counts, x, float(positive.min()), float(sigmas.max()))
    else:
        step_noise = GaussianNoise(seeds, counts, x)
    n_steps = len(sigmas) - 1
    last = {"denoised": x}

    def callback(i: int, x_now: torch.Tensor, denoised: torch.Tensor) -> None:
        last["denoised"] = denoised
        if on_step is not None:
            on_step(i + 1, n_steps, x_now)

    with torch.inference_mode():
        x = sampler.function(
            model, x, sigmas, noise=step_noise, callback=callback, **dict(sampler.options)
        )
    out = x.float().cpu()
    denoised = last["denoised"].float().cpu()
    return [out[b] for b in bounds], [denoised[b] for b in bounds]


def ksampler_sigmas(
    ms: ModelSampling,
    sampler: Sampler,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    start_step: int | None = None,
    end_step: int | None = None,
    force_full_denoise: bool = True,
) -> torch.Tensor:
    """KSampler's and KSamplerAdvanced's sigmas (ComfyUI's ``KSampler``): the schedule of
    ``steps`` (one more with the penultimate dropped for DPM-2), for ``denoise < 1`` the
    last ``steps + 1`` of ``int(steps / denoise)`` steps; then ``end_step`` cuts the end
    (ending at 0 with ``force_full_denoise``) and ``start_step`` the start (empty when
    nothing is left to run)."""

    def schedule(n: int) -> torch.Tensor:
        if sampler.discard_penultimate_sigma:
            full = calculate_sigmas(ms, scheduler, n + 1)
            return torch.cat([full[:-2], full[-1:]])
        return calculate_sigmas(ms, scheduler, n)

    if start_step is None and denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros(0)
        if steps / denoise > MAX_SCHEDULE:
            raise ValueError(
                f"denoise {denoise:g} with {steps} steps needs a schedule of {steps / denoise:.3g} steps, "
                f"more than the {MAX_SCHEDULE} allowed; raise denoise or lower steps"
            )
        sigmas = schedule(int(steps / denoise))[-(steps + 1) :]
    else:
        sigmas = schedule(steps)
    if end_step is not None and end_step < len(sigmas) - 1:
        sigmas = sigmas[: end_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return torch.zeros(0)
    return sigmas


def checkpoint_model_sampling(checkpoint, prediction: str | None, zsnr: bool) -> ModelSampling:
    """The checkpoint's ModelSampling with a MODEL handle's overrides: once
    ModelSamplingDiscrete set a prediction, its ``zsnr`` is taken as it is; without one,
    only ``zsnr=True`` overrides the checkpoint's own config."""
    keep = zsnr if prediction is not None else (True if zsnr else None)
    return model_sampling(dict(checkpoint.pipe.scheduler.config), prediction, keep)


def sample_ksampler(
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
    on_step=None,
    prediction: str | None = None,
    zsnr: bool = False,
) -> list[torch.Tensor]:
    """KSampler / KSamplerAdvanced on the sigma path (``sample()``'s arguments)."""
    sampler = get_sampler(sampler_name)
    ms = checkpoint_model_sampling(checkpoint, prediction, zsnr)
    sigmas = ksampler_sigmas(
        ms, sampler, scheduler_name, steps, denoise, start_step, end_step, force_full_denoise
    )
    if len(sigmas) == 0:
        return [j.latent.float().clone() for j in jobs]
    guider = Guider(None, "cfg", (jobs[0].positive, jobs[0].negative), cfg=cfg)
    out, _ = sample_sigmas(
        checkpoint, jobs, sigmas, sampler, guider, ms=ms, add_noise=add_noise, on_step=on_step
    )
    return out
