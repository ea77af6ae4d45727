"""ComfyUI's latent nodes: EmptyLatentImage, VAEDecode and VAEEncode (between latents and
images) and their tiled forms VAEDecodeTiled and VAEEncodeTiled, LatentUpscale,
LatentUpscaleBy (with ``bislerp``) and RepeatLatentBatch.

LATENT is ``{"samples": tensor}`` in the scale the UNet works in; IMAGE is a float tensor
``[batch, height, width, channels]`` in 0..1, as in ComfyUI.
"""

from __future__ import annotations

import torch

from runner import Input, Latent, NodeContext, VaeHandle, hookimpl, node
from runner import types as T
from runner.diffusion.common import (
    MAX_RESOLUTION,
    latent_upscale_size,
    resize_nchw,
    tiled_apply,
)


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
def vae_decode(ctx: NodeContext, samples: Latent, vae: VaeHandle):
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
                'try another sampler, fewer steps, or dtype = "float32"'
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

    return ({"samples": _vae_run(ctx, vae, (h, w), run), **_tags(vae)},)


def _with_vae(vae: VaeHandle, fn):
    """Run ``fn(module)`` on the VAE under the checkpoint's lock, in float32 where an fp16
    VAE asks to be upcast, without diffusers' own tiling (the tiled nodes tile themselves)."""
    ckpt = vae.checkpoint
    module = ckpt.pipe.vae
    upcast = module.dtype == torch.float16 and getattr(module.config, "force_upcast", False)
    tiling = getattr(module, "use_tiling", False)
    with ckpt.lock, torch.inference_mode():
        module.use_tiling = False
        if upcast:
            module.to(torch.float32)
        try:
            return fn(module)
        finally:
            module.use_tiling = tiling
            if upcast:
                module.to(torch.float16)


def _tags(vae: VaeHandle) -> dict:
    """The LATENT's ``latent_format`` / ``latent_scale`` (:mod:`plugins.core.latent_io`):
    the VAE's scaling factor, or its family's for a TAESD (scaling factor 1: its latents
    are already in the UNet's scale)."""
    from plugins.core.latent_io import latent_tags

    scale = float(getattr(vae.checkpoint.pipe.vae.config, "scaling_factor", 1.0) or 1.0)
    return latent_tags(vae.checkpoint.family, None if scale == 1.0 else scale)


def _scale_shift(module) -> tuple[float, float]:
    return module.config.scaling_factor, getattr(module.config, "shift_factor", None) or 0.0


@node(
    "VAEDecodeTiled",
    inputs=[
        Input("samples", T.LATENT),
        Input("vae", T.VAE),
        Input("tile_size", T.INT, default=512, min=64, max=4096, step=32),
        Input("overlap", T.INT, default=64, min=0, max=4096, step=32),
        Input("temporal_size", T.INT, default=64, min=8, max=4096, step=4),
        Input("temporal_overlap", T.INT, default=8, min=4, max=4096, step=4),
    ],
    outputs=(T.IMAGE,),
    category="latent",
)
def vae_decode_tiled(
    ctx: NodeContext,
    samples: Latent,
    vae: VaeHandle,
    tile_size: int,
    overlap: int,
    temporal_size: int = 64,
    temporal_overlap: int = 8,
):
    """Decodes latents tile by tile (less memory for large images), as ComfyUI does: the
    average of three tilings (``tile_size`` square, twice as tall and half as wide, half as
    tall and twice as wide), tiles overlapping by ``overlap`` px with feathered seams
    (``overlap`` is cut to a quarter of ``tile_size`` when larger). The temporal inputs are
    for video VAEs and change nothing here."""
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    tile, ov = tile_size // 8, overlap // 8
    latents = samples["samples"]

    def run(module):
        scale, shift = _scale_shift(module)
        device = vae.checkpoint.device

        def decode(z: torch.Tensor) -> torch.Tensor:
            x = (z / scale + shift).to(device, module.dtype)
            return module.decode(x, return_dict=False)[0].float().cpu()

        tilings = ((tile * 2, tile // 2), (tile // 2, tile * 2), (tile, tile))
        total = sum(tiled_apply(latents, decode, th, tw, ov, 8, 3) for th, tw in tilings)
        images = total / 3.0
        if not torch.isfinite(images).all():
            raise ValueError(
                "the decoded image is not finite (NaN or infinity): the sampler diverged or fp16 overflowed"
            )
        return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    return (_with_vae(vae, run),)


@node(
    "VAEEncodeTiled",
    inputs=[
        Input("pixels", T.IMAGE),
        Input("vae", T.VAE),
        Input("tile_size", T.INT, default=512, min=64, max=4096, step=64),
        Input("overlap", T.INT, default=64, min=0, max=4096, step=32),
        Input("temporal_size", T.INT, default=64, min=8, max=4096, step=4),
        Input("temporal_overlap", T.INT, default=8, min=4, max=4096, step=4),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def vae_encode_tiled(
    ctx: NodeContext,
    pixels: torch.Tensor,
    vae: VaeHandle,
    tile_size: int,
    overlap: int,
    temporal_size: int = 64,
    temporal_overlap: int = 8,
):
    """Encodes images tile by tile, as ComfyUI does: cropped to a multiple of 8 px, then the
    average of three tilings (``tile_size`` square, twice as wide and half as tall, half as
    wide and twice as tall) with feathered overlaps. The temporal inputs are for video VAEs."""
    if overlap * 2 >= tile_size:
        raise ValueError(
            f"overlap {overlap} px must be less than half the tile_size {tile_size} px"
        )
    h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    if h == 0 or w == 0:
        raise ValueError(
            f"image of {pixels.shape[2]}x{pixels.shape[1]} px is too small to encode (at least 8x8)"
        )
    oh, ow = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    x = pixels[:, oh : oh + h, ow : ow + w, :3].permute(0, 3, 1, 2) * 2 - 1

    def run(module):
        scale, shift = _scale_shift(module)
        device = vae.checkpoint.device

        def encode(part: torch.Tensor) -> torch.Tensor:
            dist = module.encode(part.to(device, module.dtype), return_dict=False)[0]
            return ((dist.mode() - shift) * scale).float().cpu()

        channels = module.config.latent_channels
        tilings = (
            (tile_size, tile_size),
            (tile_size // 2, tile_size * 2),
            (tile_size * 2, tile_size // 2),
        )
        total = sum(tiled_apply(x, encode, th, tw, overlap, 1 / 8, channels) for th, tw in tilings)
        return total / 3.0

    return ({"samples": _with_vae(vae, run), **_tags(vae)},)


UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


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
    ctx: NodeContext, samples: Latent, upscale_method: str, width: int, height: int, crop: str
):
    """Resizes latents to a size in pixels, each side at least 64 px (0 keeps the aspect
    ratio from the other side; both 0 keeps the size), as ComfyUI rounds it."""
    latents = samples["samples"]
    if width == 0 and height == 0:
        return (samples,)
    lw, lh = latent_upscale_size(latents.shape[-1], latents.shape[-2], width, height)
    if lw * 8 > ctx.env.settings.max_width or lh * 8 > ctx.env.settings.max_height:
        raise ValueError(
            f"upscaling to {lw * 8}x{lh * 8} px exceeds the configured limit {ctx.env.settings.max_width}x{ctx.env.settings.max_height}"
        )
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
def latent_upscale_by(ctx: NodeContext, samples: Latent, upscale_method: str, scale_by: float):
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


@node(
    "RepeatLatentBatch",
    inputs=[
        Input("samples", T.LATENT),
        Input("amount", T.INT, default=1, min=1, max=64, limit="max_batch"),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def repeat_latent_batch(ctx: NodeContext, samples: Latent, amount: int):
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


@hookimpl
def easel_node_types():
    """ComfyUI's latent nodes (empty latents, VAE decode and encode, upscaling, repeating)."""
    return [
        empty_latent_image,
        vae_decode,
        vae_encode,
        latent_upscale,
        latent_upscale_by,
        repeat_latent_batch,
        vae_decode_tiled,
        vae_encode_tiled,
    ]
