"""ComfyUI's core model nodes on diffusers: loading checkpoints and LoRAs, encoding
prompts, empty latents, sampling, VAE encode/decode and latent upscaling.

Handles: MODEL is a :class:`ModelHandle` (a loaded checkpoint's UNet plus the LoRAs to
apply to it), CLIP a :class:`ClipHandle` (its text encoders plus LoRAs and clip skip), VAE
a :class:`VaeHandle`. LATENT is ``{"samples": tensor}`` in the scale the UNet works in;
IMAGE is a float tensor ``[batch, height, width, channels]`` in 0..1, as in ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from runner import Input, hookimpl, node
from runner import types as T
from runner.context import NodeContext
from runner.diffusion.prompt_encoding import encode_weighted, needs_custom_encoding
from runner.diffusion.samplers import SAMPLERS, SCHEDULERS, check_combination
from runner.diffusion.sampling import Conditioning, latent_preview, sample

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: a checkpoint's denoiser with the LoRAs (file, strength) to apply to it."""

    checkpoint: object
    loras: tuple[tuple[Path, float], ...] = ()


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: a checkpoint's text encoder(s) with LoRAs and clip skip (ComfyUI's stop layer)."""

    checkpoint: object
    loras: tuple[tuple[Path, float], ...] = ()
    stop_at_layer: int = -1


@dataclass(frozen=True)
class VaeHandle:
    """VAE: a checkpoint's AutoencoderKL."""

    checkpoint: object
    extra: dict = field(default_factory=dict, compare=False)


# Loaders ----------------------------------------------------------------------------


def _checkpoint_names(env) -> list[str]:
    return env.models.checkpoint_names()


def _check_checkpoint(name: str, env) -> str | None:
    return env.models.check_checkpoint_name(name)


def _check_lora(name: str, env) -> str | None:
    try:
        env.models.lora_path(name)
    except Exception as exc:
        return str(exc)
    return None


@node(
    "CheckpointLoaderSimple",
    inputs=[Input("ckpt_name", T.COMBO, choices=_checkpoint_names, check=_check_checkpoint)],
    outputs=(T.MODEL, T.CLIP, T.VAE),
    output_names=("MODEL", "CLIP", "VAE"),
    category="loaders",
)
def checkpoint_loader(ctx: NodeContext, ckpt_name: str):
    """Loads a checkpoint (diffusers folder, single .safetensors file, tiny-random) and gives its
    model, text encoder and VAE."""
    checkpoint = ctx.env.models.checkpoint(ckpt_name)
    return ModelHandle(checkpoint), ClipHandle(checkpoint), VaeHandle(checkpoint)


def _lora_changed(ctx: NodeContext, lora_name: str, **_) -> str:
    path = ctx.env.models.lora_path(lora_name)
    stat = path.stat()
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


@node(
    "LoraLoader",
    inputs=[
        Input("model", T.MODEL),
        Input("clip", T.CLIP),
        Input("lora_name", T.COMBO, choices=lambda env: env.models.lora_names(), check=_check_lora),
        Input("strength_model", T.FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01),
        Input("strength_clip", T.FLOAT, default=1.0, min=-100.0, max=100.0, step=0.01),
    ],
    outputs=(T.MODEL, T.CLIP),
    category="loaders",
    is_changed=_lora_changed,
)
def lora_loader(
    ctx: NodeContext,
    model: ModelHandle,
    clip: ClipHandle,
    lora_name: str,
    strength_model: float,
    strength_clip: float,
):
    """Applies a LoRA (diffusers or kohya/A1111 keys) to the model and the text encoder. Stackable;
    adapters stay loaded and are switched per job."""
    path = ctx.env.models.lora_path(lora_name)
    if model.checkpoint is not clip.checkpoint:
        raise ValueError("the model and clip inputs come from different checkpoints")
    new_model = (
        ModelHandle(model.checkpoint, model.loras + ((path, strength_model),))
        if strength_model
        else model
    )
    new_clip = (
        ClipHandle(clip.checkpoint, clip.loras + ((path, strength_clip),), clip.stop_at_layer)
        if strength_clip
        else clip
    )
    # Load now so that a broken LoRA fails here, naming this node, not in the sampler.
    ckpt = model.checkpoint
    with ckpt.lock:
        ckpt.activate_loras(unet=new_model.loras, text_encoder=new_clip.loras)
    return new_model, new_clip


@node(
    "CLIPSetLastLayer",
    inputs=[
        Input("clip", T.CLIP),
        Input("stop_at_clip_layer", T.INT, default=-1, min=-24, max=-1, step=1),
    ],
    outputs=(T.CLIP,),
    category="conditioning",
)
def clip_set_last_layer(ctx: NodeContext, clip: ClipHandle, stop_at_clip_layer: int):
    """Uses an earlier layer of the text encoder (clip skip): -2 is the penultimate layer."""
    pipe = clip.checkpoint.pipe
    encoders = [
        e
        for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        if e is not None
    ]
    depth = min(e.config.num_hidden_layers for e in encoders)
    if -stop_at_clip_layer > depth:
        raise ValueError(
            f"stop_at_clip_layer {stop_at_clip_layer} is deeper than the text encoder of "
            f"{clip.checkpoint.name}, which has {depth} layers (use -1 to -{depth})"
        )
    return (ClipHandle(clip.checkpoint, clip.loras, stop_at_clip_layer),)


@node(
    "CLIPTextEncode",
    inputs=[Input("text", T.STRING, multiline=True), Input("clip", T.CLIP)],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def clip_text_encode(ctx: NodeContext, text: str, clip: ClipHandle):
    """Encodes a prompt with the checkpoint's text encoder(s); (word:1.2) emphasis and prompts over
    75 tokens work as in ComfyUI, plain prompts give exactly what diffusers' pipelines give."""
    ckpt = clip.checkpoint
    clip_skip = None if clip.stop_at_layer == -1 else -clip.stop_at_layer - 1
    with ckpt.lock, torch.inference_mode():
        ckpt.activate_loras(unet=(), text_encoder=clip.loras)
        if clip_skip is not None or needs_custom_encoding(text, ckpt.pipe.tokenizer):
            # Emphasis weights, more than 75 tokens or clip skip (which diffusers' own
            # encode_prompt gets wrong with transformers 5): ComfyUI's chunked, weighted encoding.
            embeds, pooled = encode_weighted(ckpt.pipe, text, device=ckpt.device, clip_skip=clip_skip, xl=ckpt.is_xl)
            return (Conditioning(embeds.float().cpu(), None if pooled is None else pooled.float().cpu()),)
        if ckpt.is_xl:
            embeds, _, pooled, _ = ckpt.pipe.encode_prompt(
                prompt=text,
                prompt_2=text,
                device=ckpt.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                clip_skip=clip_skip,
            )
            return (Conditioning(embeds.float().cpu(), pooled.float().cpu()),)
        embeds, _ = ckpt.pipe.encode_prompt(text, ckpt.device, 1, False, clip_skip=clip_skip)
    return (Conditioning(embeds.float().cpu()),)


@node(
    "EmptyLatentImage",
    inputs=[
        Input("width", T.INT, default=512, min=16, max=MAX_RESOLUTION, step=8, limit="max_width"),
        Input("height", T.INT, default=512, min=16, max=MAX_RESOLUTION, step=8, limit="max_height"),
        Input("batch_size", T.INT, default=1, min=1, max=4096, limit="max_batch"),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def empty_latent_image(ctx: NodeContext, width: int, height: int, batch_size: int):
    """An empty latent of the given size (in pixels; rounded down to a multiple of 8)."""
    return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


# Sampling ---------------------------------------------------------------------------


def _sampler_pair(values: dict) -> list[tuple[str, str]]:
    problem = check_combination(values.get("sampler_name", ""), values.get("scheduler", ""))
    return [("scheduler", problem)] if problem else []


SAMPLER_NAMES = tuple(SAMPLERS)
SCHEDULER_NAMES = tuple(SCHEDULERS)


def _run_sampler(ctx: NodeContext, model: ModelHandle, positive, negative, latent_image, **kwargs):
    ckpt = model.checkpoint
    samples = latent_image["samples"]
    if samples.shape[1] != ckpt.pipe.unet.config.in_channels:
        raise ValueError(
            f"the latent has {samples.shape[1]} channels but {ckpt.name}'s model expects {ckpt.pipe.unet.config.in_channels}"
        )

    def on_step(i: int, total: int, latents: torch.Tensor) -> None:
        preview = latent_preview(latents, ckpt.family) if ctx.previews else None
        ctx.progress(i, total, preview)

    ctx.check_cancelled()
    batch = ctx.extra.get("sampler_batch")
    if batch is not None:  # one sampler call shared by the jobs of a batch (runner.jobs)
        from runner.diffusion.batched import SamplerCall, sample_calls

        call = SamplerCall(ctx, model, positive, negative, samples, kwargs)
        out = batch.run(ctx.job_id, call, sample_calls)
        ctx.check_cancelled()
    else:
        with ckpt.lock:
            ckpt.activate_loras(unet=model.loras, text_encoder=())
            out = sample(
                ckpt,
                positive=positive,
                negative=negative,
                latent=samples,
                on_step=on_step,
                **kwargs,
            )
    result = dict(latent_image)
    result["samples"] = out
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


# VAE ----------------------------------------------------------------------------------


def _vae_run(ctx: NodeContext, vae: VaeHandle, pixels_hw: tuple[int, int], fn):
    ckpt = vae.checkpoint
    module = ckpt.pipe.vae
    mode = ctx.env.settings.vae_tiling
    tile = mode == "on" or (mode == "auto" and max(pixels_hw) > 1024)
    upcast = module.dtype == torch.float16 and getattr(module.config, "force_upcast", False)
    with ckpt.lock, torch.inference_mode():
        if tile:
            module.enable_tiling()
        if upcast:
            module.to(torch.float32)
        try:
            return fn(module)
        finally:
            if upcast:
                module.to(torch.float16)
            if tile and mode != "on":
                module.disable_tiling()


@node(
    "VAEDecode",
    inputs=[Input("samples", T.LATENT), Input("vae", T.VAE)],
    outputs=(T.IMAGE,),
    category="latent",
)
def vae_decode(ctx: NodeContext, samples: dict, vae: VaeHandle):
    """Decodes latents into images."""
    latents = samples["samples"]

    def run(module):
        scale = module.config.scaling_factor
        shift = getattr(module.config, "shift_factor", None) or 0.0
        x = (latents / scale + shift).to(vae.checkpoint.device, module.dtype)
        images = module.decode(x, return_dict=False)[0].float()
        if not torch.isfinite(images).all():
            raise ValueError(
                "the decoded image is not finite (NaN or infinity): the sampler diverged or fp16 overflowed; "
                "try another sampler, fewer steps, or dtype = \"float32\""
            )
        return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()

    return (_vae_run(ctx, vae, (latents.shape[-2] * 8, latents.shape[-1] * 8), run),)


@node(
    "VAEEncode",
    inputs=[Input("pixels", T.IMAGE), Input("vae", T.VAE)],
    outputs=(T.LATENT,),
    category="latent",
)
def vae_encode(ctx: NodeContext, pixels: torch.Tensor, vae: VaeHandle):
    """Encodes images into latents (cropped to a multiple of 8 pixels, as ComfyUI does)."""
    h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    if h == 0 or w == 0:
        raise ValueError(
            f"image of {pixels.shape[2]}x{pixels.shape[1]} px is too small to encode (at least 8x8)"
        )
    oh, ow = (pixels.shape[1] - h) // 2, (pixels.shape[2] - w) // 2
    x = pixels[:, oh : oh + h, ow : ow + w, :3].permute(0, 3, 1, 2) * 2 - 1

    def run(module):
        dist = module.encode(x.to(vae.checkpoint.device, module.dtype), return_dict=False)[0]
        scale = module.config.scaling_factor
        shift = getattr(module.config, "shift_factor", None) or 0.0
        return ((dist.mode() - shift) * scale).float().cpu()

    return ({"samples": _vae_run(ctx, vae, (h, w), run)},)


UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")


def target_size(in_w: int, in_h: int, width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` with a 0 side filled in from the aspect ratio."""
    if width == 0 and height == 0:
        return in_w, in_h
    if width == 0:
        width = max(1, round(in_w * height / in_h))
    elif height == 0:
        height = max(1, round(in_h * width / in_w))
    return width, height


def center_crop_nchw(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop the middle of an NCHW tensor to the aspect ratio of ``width`` x ``height``."""
    in_h, in_w = x.shape[-2], x.shape[-1]
    old_aspect, new_aspect = in_w / in_h, width / height
    if old_aspect > new_aspect:
        cut = round((in_w - in_w * new_aspect / old_aspect) / 2)
        return x[..., :, cut : in_w - cut]
    if old_aspect < new_aspect:
        cut = round((in_h - in_h * old_aspect / new_aspect) / 2)
        return x[..., cut : in_h - cut, :]
    return x


def resize_nchw(x: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize an NCHW tensor, optionally center-cropping to the target aspect first (ComfyUI's
    ``common_upscale``). A width or height of 0 keeps the aspect ratio."""
    width, height = target_size(x.shape[-1], x.shape[-2], width, height)
    if crop == "center":
        x = center_crop_nchw(x, width, height)
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(x.float(), size=(height, width), mode=method, **kwargs)


@node(
    "LatentUpscale",
    inputs=[
        Input("samples", T.LATENT),
        Input("upscale_method", T.COMBO, choices=UPSCALE_METHODS),
        Input("width", T.INT, default=512, min=0, max=MAX_RESOLUTION, step=8, limit="max_width"),
        Input("height", T.INT, default=512, min=0, max=MAX_RESOLUTION, step=8, limit="max_height"),
        Input("crop", T.COMBO, choices=("disabled", "center")),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def latent_upscale(
    ctx: NodeContext, samples: dict, upscale_method: str, width: int, height: int, crop: str
):
    """Resizes latents to a size in pixels (0 keeps the aspect ratio from the other side)."""
    latents = samples["samples"]
    lw = 0 if width == 0 else max(1, width // 8)
    lh = 0 if height == 0 else max(1, height // 8)
    out = dict(samples)
    out["samples"] = resize_nchw(latents, lw, lh, upscale_method, crop)
    return (out,)


@node(
    "LatentUpscaleBy",
    inputs=[
        Input("samples", T.LATENT),
        Input("upscale_method", T.COMBO, choices=UPSCALE_METHODS),
        Input("scale_by", T.FLOAT, default=1.5, min=0.01, max=8.0, step=0.01),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def latent_upscale_by(ctx: NodeContext, samples: dict, upscale_method: str, scale_by: float):
    """Resizes latents by a factor."""
    latents = samples["samples"]
    w = round(latents.shape[-1] * scale_by)
    h = round(latents.shape[-2] * scale_by)
    if w * 8 > ctx.env.settings.max_width or h * 8 > ctx.env.settings.max_height:
        raise ValueError(
            f"upscaling to {w * 8}x{h * 8} px exceeds the configured limit {ctx.env.settings.max_width}x{ctx.env.settings.max_height}"
        )
    out = dict(samples)
    out["samples"] = resize_nchw(latents, w, h, upscale_method, "disabled")
    return (out,)


NODE_TYPES = [
    checkpoint_loader,
    lora_loader,
    clip_set_last_layer,
    clip_text_encode,
    empty_latent_image,
    ksampler,
    ksampler_advanced,
    vae_decode,
    vae_encode,
    latent_upscale,
    latent_upscale_by,
]


@hookimpl
def easel_node_types():
    """ComfyUI's core model, sampling and latent nodes."""
    return NODE_TYPES


@node(
    "RepeatLatentBatch",
    inputs=[
        Input("samples", T.LATENT),
        Input("amount", T.INT, default=1, min=1, max=64, limit="max_batch"),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def repeat_latent_batch(ctx: NodeContext, samples: dict, amount: int):
    """Repeats a latent batch ``amount`` times."""
    # Validation checks amount alone; repeating a batch (or a repeat) must stay within it too.
    size = samples["samples"].shape[0] * amount
    if size > ctx.env.settings.max_batch:
        raise ValueError(
            f"repeating a batch of {samples['samples'].shape[0]} {amount} times makes {size} images, "
            f"more than the configured limit max_batch {ctx.env.settings.max_batch}"
        )
    out = dict(samples)
    out["samples"] = samples["samples"].repeat(amount, 1, 1, 1)
    return (out,)


NODE_TYPES.append(repeat_latent_batch)
