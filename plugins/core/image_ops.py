"""ComfyUI's image nodes for making and combining images: EmptyImage, ImageInvert,
ImageBatch, ImageCrop, ImageBlend and ImageCompositeMasked.

IMAGE is ``[batch, height, width, channels]`` in 0..1 (3 channels, or 4 with alpha);
an alpha channel is kept as it is by the colour operations, as in ComfyUI.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runner import Input, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion.common import MAX_RESOLUTION, composite_masked, resize_nchw


def _nchw(image: torch.Tensor) -> torch.Tensor:
    return image.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def match_channels(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``other`` with ``reference``'s number of channels: extra channels dropped, a missing
    alpha channel added as 1 (opaque)."""
    c = reference.shape[-1]
    if other.shape[-1] > c:
        return other[..., :c]
    if other.shape[-1] < c:
        pad = torch.ones(other.shape[:-1] + (c - other.shape[-1],), dtype=other.dtype)
        return torch.cat([other, pad], dim=-1)
    return other


@node(
    "EmptyImage",
    inputs=[
        Input("width", T.INT, default=512, min=1, max=MAX_RESOLUTION, step=1, limit="max_width"),
        Input("height", T.INT, default=512, min=1, max=MAX_RESOLUTION, step=1, limit="max_height"),
        Input("batch_size", T.INT, default=1, min=1, max=4096, limit="max_batch"),
        Input("color", T.INT, default=0, min=0, max=0xFFFFFF, step=1),
    ],
    outputs=(T.IMAGE,),
    category="image",
)
def empty_image(ctx: NodeContext, width: int, height: int, batch_size: int, color: int):
    """Images of one colour, ``color`` as 0xRRGGBB."""
    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF]) / 255.0
    return (rgb.float().view(1, 1, 1, 3).expand(batch_size, height, width, 3).contiguous(),)


@node("ImageInvert", inputs=[Input("image", T.IMAGE)], outputs=(T.IMAGE,), category="image")
def image_invert(ctx: NodeContext, image: torch.Tensor):
    """``1 - image`` for the colour channels; alpha is kept."""
    out = 1.0 - image
    if image.shape[-1] == 4:
        out[..., 3] = image[..., 3]
    return (out,)


@node(
    "ImageBatch",
    inputs=[Input("image1", T.IMAGE), Input("image2", T.IMAGE)],
    outputs=(T.IMAGE,),
    category="image/batch",
)
def image_batch(ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor):
    """One batch of both: ``image2`` is first given ``image1``'s channels (an opaque alpha
    added to the one without) and size (bilinear, center crop)."""
    if image1.shape[-1] != image2.shape[-1]:
        if image1.shape[-1] > image2.shape[-1]:
            image2 = F.pad(image2, (0, 1), value=1.0)
        else:
            image1 = F.pad(image1, (0, 1), value=1.0)
    if image1.shape[1:] != image2.shape[1:]:
        image2 = _nhwc(
            resize_nchw(_nchw(image2), image1.shape[2], image1.shape[1], "bilinear", "center")
        )
    total = image1.shape[0] + image2.shape[0]
    if total > ctx.env.settings.max_batch:
        raise ValueError(
            f"the batch would hold {total} images, more than the configured limit max_batch {ctx.env.settings.max_batch}"
        )
    return (torch.cat([image1, image2.to(image1.dtype)]),)


@node(
    "ImageCrop",
    inputs=[
        Input("image", T.IMAGE),
        Input("width", T.INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("height", T.INT, default=512, min=1, max=MAX_RESOLUTION, step=1),
        Input("x", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("y", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
    ],
    outputs=(T.IMAGE,),
    category="image/transform",
)
def image_crop(ctx: NodeContext, image: torch.Tensor, width: int, height: int, x: int, y: int):
    """The ``width`` x ``height`` part from (x, y), cut at the image's edge; a corner past
    the edge moves onto the last row / column."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return (image[:, y : y + height, x : x + width, :],)


BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")


def blend(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend of ``b`` over ``a`` in ``mode`` (the formulas of the usual layer modes;
    soft light is the W3C compositing spec's)."""
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":
        d = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, torch.sqrt(a))
        return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (d - a))
    if mode == "difference":
        return a - b
    raise ValueError(f"unknown blend_mode {mode!r}; one of {', '.join(BLEND_MODES)}")


@node(
    "ImageBlend",
    inputs=[
        Input("image1", T.IMAGE),
        Input("image2", T.IMAGE),
        Input("blend_factor", T.FLOAT, default=0.5, min=0.0, max=1.0, step=0.01),
        Input("blend_mode", T.COMBO, choices=BLEND_MODES),
    ],
    outputs=(T.IMAGE,),
    category="image",
)
def image_blend(
    ctx: NodeContext,
    image1: torch.Tensor,
    image2: torch.Tensor,
    blend_factor: float,
    blend_mode: str,
):
    """``image1 * (1 - blend_factor) + blend(image1, image2) * blend_factor``, clamped to
    0..1; ``image2`` is first given ``image1``'s channels and size (bicubic, center crop).
    ``image1``'s alpha is kept."""
    image2 = match_channels(image1, image2)
    if image1.shape != image2.shape:
        image2 = _nhwc(
            resize_nchw(_nchw(image2), image1.shape[2], image1.shape[1], "bicubic", "center")
        )
    out = image1 * (1 - blend_factor) + blend(image1, image2, blend_mode) * blend_factor
    out = out.clamp(0, 1)
    if image1.shape[-1] == 4:
        out[..., 3] = image1[..., 3]
    return (out,)


@node(
    "ImageCompositeMasked",
    inputs=[
        Input("destination", T.IMAGE),
        Input("source", T.IMAGE),
        Input("x", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("y", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("resize_source", T.BOOLEAN, default=False),
        Input("mask", T.MASK, required=False),
    ],
    outputs=(T.IMAGE,),
    category="image",
)
def image_composite_masked(
    ctx: NodeContext,
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    resize_source: bool,
    mask: torch.Tensor | None = None,
):
    """Pastes ``source`` onto ``destination`` with its corner at (x, y), blended by
    ``mask`` (resized to the source; none pastes it whole); ``resize_source`` first
    resizes the source to the destination's size."""
    source = match_channels(destination, source)
    out = composite_masked(
        _nchw(destination.float()), _nchw(source.float()), x, y, mask, 1, resize_source
    )
    return (_nhwc(out),)


@hookimpl
def easel_node_types():
    """ComfyUI's image making and combining nodes."""
    return [
        empty_image,
        image_invert,
        image_batch,
        image_crop,
        image_blend,
        image_composite_masked,
    ]
