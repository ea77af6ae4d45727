"""ComfyUI's sampling nodes: KSampler and KSamplerAdvanced, on the one denoising loop of
:mod:`runner.diffusion.sampling` (alone, or sharing it with the other jobs of a batch
through :mod:`runner.diffusion.batched`)."""

from __future__ import annotations

import torch

from plugins.core.latent_io import latent_tags
from runner import Conditioning, Input, Latent, ModelHandle, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion.common import check_latent_channels
from runner.diffusion.samplers import SAMPLERS, SCHEDULERS, check_combination
from runner.diffusion.sampling import SampleJob, latent_preview, sample
from runner.models.hypernetworks import applied
from runner.templates import MAX_SEED


def _sampler_pair(values: dict) -> list[tuple[str, str]]:
    problem = check_combination(values.get("sampler_name", ""), values.get("scheduler", ""))
    return [("scheduler", problem)] if problem else []


SAMPLER_NAMES = tuple(SAMPLERS)
SCHEDULER_NAMES = tuple(SCHEDULERS)


def _run_sampler(
    ctx: NodeContext,
    model: ModelHandle,
    positive: Conditioning,
    negative: Conditioning,
    latent_image: Latent,
    **kwargs,
):
    ckpt = model.checkpoint
    samples = latent_image["samples"]
    noise_mask = latent_image.get("noise_mask")
    check_latent_channels(samples, ckpt)

    def on_step(i: int, total: int, latents: torch.Tensor) -> None:
        preview = latent_preview(latents, ckpt.family) if ctx.previews else None
        ctx.progress(i, total, preview)

    ctx.check_cancelled()
    batch = ctx.extra.get("sampler_batch")
    if batch is not None:  # one sampler call shared by the jobs of a batch (runner.jobs)
        from runner.diffusion.batched import SamplerCall, sample_calls

        call = SamplerCall(ctx, model, positive, negative, samples, kwargs, noise_mask)
        out = batch.run(ctx.job_id, call, sample_calls)
        ctx.check_cancelled()
    else:
        job = SampleJob(kwargs.pop("seed"), samples, positive, negative, noise_mask)
        with ckpt.lock, applied(ckpt.pipe.unet, model.patches):
            ckpt.activate_loras(unet=model.loras, text_encoder=())
            (out,) = sample(
                ckpt,
                [job],
                on_step=on_step,
                prediction=model.prediction,
                zsnr=model.zsnr,
                **kwargs,
            )
    result = dict(latent_image)
    result["samples"] = out
    result.update(latent_tags(ckpt.family))  # which scale it is in (SaveLatent)
    return (result,)


@node(
    "KSampler",
    inputs=[
        Input("model", T.MODEL),
        Input("seed", T.INT, default=0, min=0, max=MAX_SEED),
        Input("steps", T.INT, default=20, min=1, max=10000, limit="max_steps"),
        Input("cfg", T.FLOAT, default=8.0, min=0.0, max=100.0, step=0.1),
        Input("sampler_name", T.COMBO, choices=SAMPLER_NAMES),
        Input("scheduler", T.COMBO, choices=SCHEDULER_NAMES),
        Input("positive", T.CONDITIONING),
        Input("negative", T.CONDITIONING),
        Input("latent_image", T.LATENT),
        Input("denoise", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=(T.LATENT,),
    category="sampling",
    validate=_sampler_pair,
)
def ksampler(
    ctx: NodeContext,
    model,
    seed,
    steps,
    cfg,
    sampler_name,
    scheduler,
    positive,
    negative,
    latent_image,
    denoise,
):
    """Denoises a latent with a diffusers scheduler; denoise < 1 keeps part of the input (img2img)."""
    if denoise <= 0:
        return (latent_image,)
    return _run_sampler(
        ctx,
        model,
        positive,
        negative,
        latent_image,
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler_name=scheduler,
        denoise=denoise,
    )


@node(
    "KSamplerAdvanced",
    inputs=[
        Input("model", T.MODEL),
        Input("add_noise", T.COMBO, default="enable", choices=("enable", "disable")),
        Input("noise_seed", T.INT, default=0, min=0, max=MAX_SEED),
        Input("steps", T.INT, default=20, min=1, max=10000, limit="max_steps"),
        Input("cfg", T.FLOAT, default=8.0, min=0.0, max=100.0, step=0.1),
        Input("sampler_name", T.COMBO, choices=SAMPLER_NAMES),
        Input("scheduler", T.COMBO, choices=SCHEDULER_NAMES),
        Input("positive", T.CONDITIONING),
        Input("negative", T.CONDITIONING),
        Input("latent_image", T.LATENT),
        Input("start_at_step", T.INT, default=0, min=0, max=10000),
        Input("end_at_step", T.INT, default=10000, min=0, max=10000),
        Input(
            "return_with_leftover_noise", T.COMBO, default="disable", choices=("disable", "enable")
        ),
    ],
    outputs=(T.LATENT,),
    category="sampling",
    validate=_sampler_pair,
)
def ksampler_advanced(
    ctx: NodeContext,
    model,
    add_noise,
    noise_seed,
    steps,
    cfg,
    sampler_name,
    scheduler,
    positive,
    negative,
    latent_image,
    start_at_step,
    end_at_step,
    return_with_leftover_noise,
):
    """Runs steps start_at_step..end_at_step of a schedule of `steps`, optionally without adding
    noise or leaving the remaining noise in (for two-pass workflows)."""
    return _run_sampler(
        ctx,
        model,
        positive,
        negative,
        latent_image,
        seed=noise_seed,
        steps=steps,
        cfg=cfg,
        sampler_name=sampler_name,
        scheduler_name=scheduler,
        add_noise=add_noise == "enable",
        start_step=start_at_step,
        end_step=end_at_step,
        force_full_denoise=return_with_leftover_noise == "disable",
    )


@hookimpl
def easel_node_types():
    """ComfyUI's KSampler and KSamplerAdvanced."""
    return [ksampler, ksampler_advanced]
