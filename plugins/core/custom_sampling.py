"""ComfyUI's custom sampler family (``comfy_extras/nodes_custom_sampler.py``) and
ModelSamplingDiscrete (``nodes_model_advanced.py``), on easel's sigma path
(:mod:`runner.diffusion.k_samplers.driver`).

A sampling is split into parts that are wired together: a SAMPLER (KSamplerSelect), the
SIGMAS to step through (BasicScheduler, KarrasScheduler... SplitSigmas, FlipSigmas), the
NOISE to start from (RandomNoise, DisableNoise) and a GUIDER (BasicGuider, CFGGuider,
DualCFGGuider); SamplerCustomAdvanced runs them, SamplerCustom takes the noise and CFG
guidance as plain inputs. Both return the sampled latent and the last denoised estimate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from runner import Input, Latent, ModelHandle, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion import k_samplers
from runner.diffusion import schedules as S
from runner.diffusion.common import check_latent_channels
from runner.diffusion.k_samplers.driver import Guider, checkpoint_model_sampling, sample_sigmas
from runner.diffusion.model_sampling import PREDICTIONS
from runner.diffusion.sampling import latent_preview
from runner.models.hypernetworks import applied
from runner.templates import MAX_SEED

SIGMA_MAX = 14.614642
"""ComfyUI's default sigma range for the schedulers without a model: SD1's."""
SIGMA_MIN = 0.0291675


@dataclass(frozen=True)
class Noise:
    """NOISE: the initial noise's seed, or None for no noise (DisableNoise)."""

    seed: int | None


def _model_sampling(model: ModelHandle):
    return checkpoint_model_sampling(model.checkpoint, model.prediction, model.zsnr)


def _sigmas_1d(sigmas) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.dim() != 1:
        raise ValueError(
            f"SIGMAS must be a 1-D tensor of noise levels, got shape {tuple(sigmas.shape)}"
        )
    return sigmas


def _run(
    ctx: NodeContext,
    model: ModelHandle,
    guider: Guider,
    sampler,
    sigmas,
    latent_image: Latent,
    noise: Noise,
):
    ckpt = model.checkpoint
    samples = latent_image["samples"]
    check_latent_channels(samples, ckpt)
    sigmas = _sigmas_1d(sigmas)
    if len(sigmas) > 1 and not torch.isfinite(sigmas).all():
        raise ValueError(f"the sigmas must be finite, got {sigmas.tolist()}")

    def on_step(i: int, total: int, latents: torch.Tensor) -> None:
        preview = latent_preview(latents, ckpt.family) if ctx.previews else None
        ctx.progress(i, total, preview)

    ctx.check_cancelled()
    seed = 0 if noise.seed is None else noise.seed
    jobs = guider.jobs([samples], [seed], [latent_image.get("noise_mask")])
    with ckpt.lock, applied(ckpt.pipe.unet, model.patches):
        ckpt.activate_loras(unet=model.loras, text_encoder=())
        (out,), (denoised,) = sample_sigmas(
            ckpt,
            jobs,
            sigmas,
            sampler,
            guider,
            ms=_model_sampling(model),
            add_noise=noise.seed is not None,
            on_step=on_step,
        )
    result = dict(latent_image)
    result["samples"] = out
    denoised_out = dict(latent_image)
    denoised_out["samples"] = denoised
    return (result, denoised_out)


@node(
    "SamplerCustom",
    inputs=[
        Input("model", T.MODEL),
        Input("add_noise", T.BOOLEAN, default=True),
        Input("noise_seed", T.INT, default=0, min=0, max=MAX_SEED),
        Input("cfg", T.FLOAT, default=8.0, min=0.0, max=100.0, step=0.1),
        Input("positive", T.CONDITIONING),
        Input("negative", T.CONDITIONING),
        Input("sampler", T.SAMPLER),
        Input("sigmas", T.SIGMAS),
        Input("latent_image", T.LATENT),
    ],
    outputs=(T.LATENT, T.LATENT),
    output_names=("output", "denoised_output"),
    category="sampling/custom_sampling",
)
def sampler_custom(
    ctx, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image
):
    """Samples with a chosen sampler over given sigmas, with CFG guidance; returns the latent
    and the last denoised estimate."""
    guider = Guider(model, "cfg", (positive, negative), cfg=cfg)
    noise = Noise(noise_seed if add_noise else None)
    return _run(ctx, model, guider, sampler, sigmas, latent_image, noise)


@node(
    "SamplerCustomAdvanced",
    inputs=[
        Input("noise", T.NOISE),
        Input("guider", T.GUIDER),
        Input("sampler", T.SAMPLER),
        Input("sigmas", T.SIGMAS),
        Input("latent_image", T.LATENT),
    ],
    outputs=(T.LATENT, T.LATENT),
    output_names=("output", "denoised_output"),
    category="sampling/custom_sampling",
)
def sampler_custom_advanced(ctx, noise, guider, sampler, sigmas, latent_image):
    """Samples with separate noise, guider, sampler and sigmas; returns the latent and the
    last denoised estimate."""
    return _run(ctx, guider.model, guider, sampler, sigmas, latent_image, noise)


@node(
    "KSamplerSelect",
    inputs=[Input("sampler_name", T.COMBO, choices=k_samplers.SAMPLER_NAMES)],
    outputs=(T.SAMPLER,),
    category="sampling/custom_sampling/samplers",
)
def ksampler_select(ctx, sampler_name):
    """A sampler by its ComfyUI name."""
    return (k_samplers.get_sampler(sampler_name),)


@node(
    "BasicScheduler",
    inputs=[
        Input("model", T.MODEL),
        Input("scheduler", T.COMBO, choices=S.SCHEDULER_NAMES),
        Input("steps", T.INT, default=20, min=1, max=10000, limit="max_steps"),
        Input("denoise", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=(T.SIGMAS,),
    category="sampling/custom_sampling/schedulers",
)
def basic_scheduler(ctx, model, scheduler, steps, denoise):
    """The model's sigmas for a named schedule; denoise < 1 keeps the last steps of a
    longer schedule (img2img)."""
    return (S.denoise_sigmas(_model_sampling(model), scheduler, steps, denoise),)


_STEPS = Input("steps", T.INT, default=20, min=1, max=10000, limit="max_steps")
_SIGMA_MAX = Input("sigma_max", T.FLOAT, default=SIGMA_MAX, min=0.0, max=5000.0, step=0.01)
_SIGMA_MIN = Input("sigma_min", T.FLOAT, default=SIGMA_MIN, min=0.0, max=5000.0, step=0.01)


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError(
            f"sigma_min and sigma_max must be above 0, got sigma_min {sigma_min} and sigma_max {sigma_max}"
        )


@node(
    "KarrasScheduler",
    inputs=[
        _STEPS,
        _SIGMA_MAX,
        _SIGMA_MIN,
        Input("rho", T.FLOAT, default=7.0, min=0.0, max=100.0, step=0.01),
    ],
    outputs=(T.SIGMAS,),
    category="sampling/custom_sampling/schedulers",
)
def karras_scheduler(ctx, steps, sigma_max, sigma_min, rho):
    """Karras et al.'s schedule between two sigmas."""
    if rho <= 0:
        raise ValueError(f"rho must be above 0, got {rho}")
    _check_range(sigma_min, sigma_max)
    return (S.karras(steps, sigma_min, sigma_max, rho),)


@node(
    "ExponentialScheduler",
    inputs=[_STEPS, _SIGMA_MAX, _SIGMA_MIN],
    outputs=(T.SIGMAS,),
    category="sampling/custom_sampling/schedulers",
)
def exponential_scheduler(ctx, steps, sigma_max, sigma_min):
    """Sigmas evenly spaced in log sigma."""
    _check_range(sigma_min, sigma_max)
    return (S.exponential(steps, sigma_min, sigma_max),)


@node(
    "PolyexponentialScheduler",
    inputs=[
        _STEPS,
        _SIGMA_MAX,
        _SIGMA_MIN,
        Input("rho", T.FLOAT, default=1.0, min=0.0, max=100.0, step=0.01),
    ],
    outputs=(T.SIGMAS,),
    category="sampling/custom_sampling/schedulers",
)
def polyexponential_scheduler(ctx, steps, sigma_max, sigma_min, rho):
    """Log sigma spaced by a power of the ramp."""
    _check_range(sigma_min, sigma_max)
    return (S.polyexponential(steps, sigma_min, sigma_max, rho),)


@node(
    "SDTurboScheduler",
    inputs=[
        Input("model", T.MODEL),
        Input("steps", T.INT, default=1, min=1, max=10),
        Input("denoise", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=(T.SIGMAS,),
    category="sampling/custom_sampling/schedulers",
)
def sd_turbo_scheduler(ctx, model, steps, denoise):
    """SD-Turbo's schedule: every 100th timestep from 999 down."""
    return (S.sdturbo(_model_sampling(model), steps, denoise),)


@node(
    "SplitSigmas",
    inputs=[Input("sigmas", T.SIGMAS), Input("step", T.INT, default=0, min=0, max=10000)],
    outputs=(T.SIGMAS, T.SIGMAS),
    output_names=("high_sigmas", "low_sigmas"),
    category="sampling/custom_sampling/sigmas",
)
def split_sigmas(ctx, sigmas, step):
    """Splits a schedule at a step: the sigmas up to it and from it on (both hold it)."""
    sigmas = _sigmas_1d(sigmas)
    return (sigmas[: step + 1], sigmas[step:])


@node(
    "FlipSigmas",
    inputs=[Input("sigmas", T.SIGMAS)],
    outputs=(T.SIGMAS,),
    category="sampling/custom_sampling/sigmas",
)
def flip_sigmas(ctx, sigmas):
    """Reverses a schedule (a first sigma of 0 becomes 0.0001), for inversion."""
    sigmas = _sigmas_1d(sigmas)
    if len(sigmas) == 0:
        return (sigmas,)
    flipped = sigmas.flip(0).clone()
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return (flipped,)


@node(
    "RandomNoise",
    inputs=[Input("noise_seed", T.INT, default=0, min=0, max=MAX_SEED)],
    outputs=(T.NOISE,),
    category="sampling/custom_sampling/noise",
)
def random_noise(ctx, noise_seed):
    """Gaussian noise from a seed, drawn on the CPU."""
    return (Noise(int(noise_seed)),)


@node("DisableNoise", inputs=[], outputs=(T.NOISE,), category="sampling/custom_sampling/noise")
def disable_noise(ctx):
    """No initial noise (the latent is sampled as it is)."""
    return (Noise(None),)


@node(
    "BasicGuider",
    inputs=[Input("model", T.MODEL), Input("conditioning", T.CONDITIONING)],
    outputs=(T.GUIDER,),
    category="sampling/custom_sampling/guiders",
)
def basic_guider(ctx, model, conditioning):
    """The model's prediction for one conditioning, unguided (cfg 1)."""
    return (Guider(model, "basic", (conditioning,)),)


@node(
    "CFGGuider",
    inputs=[
        Input("model", T.MODEL),
        Input("positive", T.CONDITIONING),
        Input("negative", T.CONDITIONING),
        Input("cfg", T.FLOAT, default=8.0, min=0.0, max=100.0, step=0.1),
    ],
    outputs=(T.GUIDER,),
    category="sampling/custom_sampling/guiders",
)
def cfg_guider(ctx, model, positive, negative, cfg):
    """Classifier-free guidance: negative + cfg (positive - negative)."""
    return (Guider(model, "cfg", (positive, negative), cfg=cfg),)


@node(
    "DualCFGGuider",
    inputs=[
        Input("model", T.MODEL),
        Input("cond1", T.CONDITIONING),
        Input("cond2", T.CONDITIONING),
        Input("negative", T.CONDITIONING),
        Input("cfg_conds", T.FLOAT, default=8.0, min=0.0, max=100.0, step=0.1),
        Input("cfg_cond2_negative", T.FLOAT, default=8.0, min=0.0, max=100.0, step=0.1),
        Input("style", T.COMBO, choices=("regular", "nested")),
    ],
    outputs=(T.GUIDER,),
    category="sampling/custom_sampling/guiders",
)
def dual_cfg_guider(ctx, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
    """Two guidance scales: cond1 against cond2 and cond2 against the negative
    (regular: added; nested: the first inside the second)."""
    return (
        Guider(
            model,
            "dual_cfg",
            (cond1, cond2, negative),
            cfg=cfg_conds,
            cfg2=cfg_cond2_negative,
            nested=style == "nested",
        ),
    )


@node(
    "ModelSamplingDiscrete",
    inputs=[
        Input("model", T.MODEL),
        Input("sampling", T.COMBO, choices=PREDICTIONS),
        Input("zsnr", T.BOOLEAN, default=False),
    ],
    outputs=(T.MODEL,),
    category="advanced/model",
)
def model_sampling_discrete(ctx, model, sampling, zsnr):
    """Sets what the model predicts (eps, v_prediction, lcm, x0) and zero terminal SNR."""
    return (dataclasses.replace(model, prediction=sampling, zsnr=bool(zsnr)),)


@hookimpl
def easel_node_types():
    """ComfyUI's custom sampler nodes and ModelSamplingDiscrete."""
    return [
        sampler_custom,
        sampler_custom_advanced,
        ksampler_select,
        basic_scheduler,
        karras_scheduler,
        exponential_scheduler,
        polyexponential_scheduler,
        sd_turbo_scheduler,
        split_sigmas,
        flip_sigmas,
        random_noise,
        disable_noise,
        basic_guider,
        cfg_guider,
        dual_cfg_guider,
        model_sampling_discrete,
    ]
