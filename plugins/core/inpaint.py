"""ComfyUI's inpainting nodes: VAEEncodeForInpaint, SetLatentNoiseMask,
InpaintModelConditioning and ImagePadForOutpaint.

A LATENT's ``"noise_mask"`` (``[batch or 1, 1, height, width]``, any resolution) tells the
sampler where it may change the latent (1) and where it must keep it (0); an inpainting
UNet (9 input channels) also gets the encoded masked image and the mask through the
conditioning's ``concat_latent`` / ``concat_mask``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runner import Conditioning, Input, Latent, NodeContext, VaeHandle, hookimpl, node
from runner import types as T
from runner.diffusion.common import MAX_RESOLUTION

GREY = 0.5
"""What masked pixels are set to before encoding (ComfyUI's neutral grey)."""


def _mask_at(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A MASK as ``[batch, 1, height, width]``, resized bilinearly to the image size."""
    if mask.ndim < 2:
        raise ValueError(f"a MASK needs at least 2 dimensions (height, width), got {mask.ndim}")
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    return F.interpolate(m, size=(height, width), mode="bilinear")


def _crop_to_8(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop IMAGE ``[B, H, W, C]`` and mask ``[B, 1, H, W]`` to whole multiples of 8 px,
    keeping the middle (as VAEEncode does)."""
    h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
    if h == 0 or w == 0:
        raise ValueError(
            f"image of {pixels.shape[2]}x{pixels.shape[1]} px is too small to encode (at least 8x8)"
        )
    oy, ox = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    return pixels[:, oy : oy + h, ox : ox + w], mask[:, :, oy : oy + h, ox : ox + w]


def _grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The image with every pixel where the rounded mask is 1 set to grey (RGB only)."""
    keep = (1.0 - mask.round())[:, 0, :, :, None]  # [B, H, W, 1]
    rgb = (pixels[..., :3] - GREY) * keep + GREY
    return torch.cat([rgb, pixels[..., 3:]], dim=-1) if pixels.shape[-1] > 3 else rgb


def _encode(ctx: NodeContext, pixels: torch.Tensor, vae: VaeHandle) -> torch.Tensor:
    from plugins.core.latent import vae_encode

    return vae_encode.function(ctx, pixels=pixels, vae=vae)[0]["samples"]


def grow(mask: torch.Tensor, by: int) -> torch.Tensor:
    """The rounded mask ``[B, 1, H, W]`` grown by a ``by`` x ``by`` box: 1 wherever the box
    around a pixel touches the mask. The box reaches ``ceil((by - 1) / 2)`` px up and left
    and the rest down and right (ComfyUI's padded convolution, cut to the mask's size)."""
    if by == 0:
        return mask
    pad = math.ceil((by - 1) / 2)
    kernel = torch.ones((1, 1, by, by))
    grown = F.conv2d(mask.round(), kernel, padding=pad).clamp(0, 1)
    return grown[..., : mask.shape[-2], : mask.shape[-1]]


@node(
    "VAEEncodeForInpaint",
    inputs=[
        Input("pixels", T.IMAGE),
        Input("vae", T.VAE),
        Input("mask", T.MASK),
        Input("grow_mask_by", T.INT, default=6, min=0, max=64, step=1),
    ],
    outputs=(T.LATENT,),
    category="latent/inpaint",
)
def vae_encode_for_inpaint(
    ctx: NodeContext, pixels: torch.Tensor, vae: VaeHandle, mask: torch.Tensor, grow_mask_by: int
):
    """Encodes an image for inpainting: cropped to whole multiples of 8 px, masked pixels
    (mask rounded to 0/1) set to grey before encoding, and a ``noise_mask`` that is the
    mask grown by ``grow_mask_by`` px (seamless edges), rounded to 0 or 1."""
    m = _mask_at(mask, pixels.shape[1], pixels.shape[2])
    pixels, m = _crop_to_8(pixels, m)
    noise_mask = grow(m, grow_mask_by).round()
    samples = _encode(ctx, _grey_out(pixels, m), vae)
    return ({"samples": samples, "noise_mask": noise_mask},)


@node(
    "SetLatentNoiseMask",
    inputs=[Input("samples", T.LATENT), Input("mask", T.MASK)],
    outputs=(T.LATENT,),
    category="latent/inpaint",
)
def set_latent_noise_mask(ctx: NodeContext, samples: Latent, mask: torch.Tensor):
    """Sets the latent's ``noise_mask``: the sampler changes the latent only where the mask
    is 1 (partly where between), keeping the rest."""
    if mask.ndim < 2:
        raise ValueError(f"a MASK needs at least 2 dimensions (height, width), got {mask.ndim}")
    out = dict(samples)
    out["noise_mask"] = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    return (out,)


@node(
    "InpaintModelConditioning",
    inputs=[
        Input("positive", T.CONDITIONING),
        Input("negative", T.CONDITIONING),
        Input("vae", T.VAE),
        Input("pixels", T.IMAGE),
        Input("mask", T.MASK),
        Input("noise_mask", T.BOOLEAN, default=True),
    ],
    outputs=(T.CONDITIONING, T.CONDITIONING, T.LATENT),
    output_names=("positive", "negative", "latent"),
    category="conditioning/inpaint",
)
def inpaint_model_conditioning(
    ctx: NodeContext,
    positive: Conditioning,
    negative: Conditioning,
    vae: VaeHandle,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    noise_mask: bool = True,
):
    """Conditioning for an inpainting model: every entry of both sides gets
    ``concat_latent`` (the image with the masked part grey, encoded) and ``concat_mask``
    (the mask at the image size, cropped to whole multiples of 8 px). The latent is the
    whole image encoded, with that mask as its ``noise_mask`` when ``noise_mask``."""
    m = _mask_at(mask, pixels.shape[1], pixels.shape[2])
    cropped, m = _crop_to_8(pixels, m)
    concat_latent = _encode(ctx, _grey_out(cropped, m), vae)
    latent: dict = {"samples": _encode(ctx, pixels, vae)}
    if noise_mask:
        latent["noise_mask"] = m
    sides = [
        c.with_options(concat_latent=concat_latent, concat_mask=m) for c in (positive, negative)
    ]
    return sides[0], sides[1], latent


@node(
    "ImagePadForOutpaint",
    inputs=[
        Input("image", T.IMAGE),
        Input("left", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("top", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("right", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("bottom", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("feathering", T.INT, default=40, min=0, max=MAX_RESOLUTION, step=1),
    ],
    outputs=(T.IMAGE, T.MASK),
    output_names=("IMAGE", "MASK"),
    category="image/inpaint",
)
def image_pad_for_outpaint(
    ctx: NodeContext,
    image: torch.Tensor,
    left: int,
    top: int,
    right: int,
    bottom: int,
    feathering: int,
):
    """Pads the image with grey on each side for outpainting. The MASK is 1 on the padding
    and, with ``feathering``, fades into the image: a pixel at distance d < feathering from
    a padded edge gets ``((feathering - d) / feathering) ** 2`` (no fade when the image is
    not wider and taller than twice the feathering)."""
    b, h, w, c = image.shape
    new_h, new_w = h + top + bottom, w + left + right
    s = ctx.env.settings
    if new_w > s.max_width or new_h > s.max_height:
        raise ValueError(
            f"padding makes the image {new_w}x{new_h} px, more than the configured limit {s.max_width}x{s.max_height}"
        )
    out = torch.full((b, new_h, new_w, c), GREY, dtype=torch.float32)
    out[:, top : top + h, left : left + w] = image.float()
    mask = torch.ones((new_h, new_w), dtype=torch.float32)
    inner = torch.zeros((h, w), dtype=torch.float32)
    if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
        i = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
        j = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
        far_h, far_w = torch.full_like(i, float(h)), torch.full_like(j, float(w))
        d = torch.stack(
            [
                i if top else far_h,
                (h - i) if bottom else far_h,
                j if left else far_w,
                (w - j) if right else far_w,
            ]
        ).amin(0)
        v = (feathering - d) / feathering
        inner = torch.where(d < feathering, v * v, inner)
    mask[top : top + h, left : left + w] = inner
    return out, mask[None]


@hookimpl
def easel_node_types():
    """ComfyUI's inpainting and outpainting nodes."""
    return [
        vae_encode_for_inpaint,
        set_latent_noise_mask,
        inpaint_model_conditioning,
        image_pad_for_outpaint,
    ]
