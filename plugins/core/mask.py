"""ComfyUI's MASK nodes: SolidMask, InvertMask, MaskComposite, ImageToMask, MaskToImage,
FeatherMask, GrowMask and LoadImageMask.

MASK is a float tensor ``[batch, height, width]`` in 0..1 (ComfyUI's type): 1 marks what
is masked (to be inpainted; LoadImage gives ``1 - alpha``). Nodes accept a single
``[height, width]`` mask as a batch of one, as ComfyUI's reshape does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runner import Input, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion.common import MAX_RESOLUTION

CHANNELS = ("red", "green", "blue", "alpha")


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A MASK as ``[batch, height, width]`` float (a 2-D mask becomes a batch of one)."""
    if mask.ndim < 2:
        raise ValueError(f"a MASK needs at least 2 dimensions (height, width), got {mask.ndim}")
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1]).float()


@node(
    "SolidMask",
    inputs=[
        Input("value", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
        Input("width", T.INT, default=512, min=1, max=MAX_RESOLUTION, step=1, limit="max_width"),
        Input("height", T.INT, default=512, min=1, max=MAX_RESOLUTION, step=1, limit="max_height"),
    ],
    outputs=(T.MASK,),
    category="mask",
)
def solid_mask(ctx: NodeContext, value: float, width: int, height: int):
    """A mask of one value everywhere, ``[1, height, width]``."""
    return (torch.full((1, height, width), float(value), dtype=torch.float32),)


@node("InvertMask", inputs=[Input("mask", T.MASK)], outputs=(T.MASK,), category="mask")
def invert_mask(ctx: NodeContext, mask: torch.Tensor):
    """``1 - mask``."""
    return (1.0 - mask.float(),)


COMPOSITE_OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")


@node(
    "MaskComposite",
    inputs=[
        Input("destination", T.MASK),
        Input("source", T.MASK),
        Input("x", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("y", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("operation", T.COMBO, choices=COMPOSITE_OPERATIONS),
    ],
    outputs=(T.MASK,),
    category="mask",
)
def mask_composite(
    ctx: NodeContext,
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    operation: str,
):
    """Combines ``source`` into ``destination`` where it lands (top-left corner at x, y):
    multiply, add, subtract, or the logical and / or / xor of the masks rounded to 0 or 1;
    the result is clamped to 0..1. Source beyond the destination's edge is ignored."""
    if operation not in COMPOSITE_OPERATIONS:
        raise ValueError(
            f"unknown operation {operation!r}; one of {', '.join(COMPOSITE_OPERATIONS)}"
        )
    out = as_mask_batch(destination).clone()
    src = as_mask_batch(source)
    bottom, right = min(y + src.shape[-2], out.shape[-2]), min(x + src.shape[-1], out.shape[-1])
    if bottom > y and right > x:
        d = out[:, y:bottom, x:right]
        s = src[:, : bottom - y, : right - x]
        if operation == "multiply":
            r = d * s
        elif operation == "add":
            r = d + s
        elif operation == "subtract":
            r = d - s
        else:
            db, sb = d.round().bool(), s.round().bool()
            logic = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}
            r = logic[operation](db, sb).float()
        out[:, y:bottom, x:right] = r
    return (out.clamp(0.0, 1.0),)


@node(
    "ImageToMask",
    inputs=[Input("image", T.IMAGE), Input("channel", T.COMBO, choices=CHANNELS)],
    outputs=(T.MASK,),
    category="mask",
)
def image_to_mask(ctx: NodeContext, image: torch.Tensor, channel: str):
    """One channel of an image as a mask (``alpha`` needs an RGBA image)."""
    index = CHANNELS.index(channel)
    if index >= image.shape[-1]:
        raise ValueError(
            f"channel {channel!r}: the image has {image.shape[-1]} channels (no alpha channel)"
        )
    return (image[..., index].float(),)


@node("MaskToImage", inputs=[Input("mask", T.MASK)], outputs=(T.IMAGE,), category="mask")
def mask_to_image(ctx: NodeContext, mask: torch.Tensor):
    """A grey image from a mask: the mask's value in each of R, G and B."""
    m = as_mask_batch(mask)
    return (m.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous(),)


@node(
    "FeatherMask",
    inputs=[
        Input("mask", T.MASK),
        Input("left", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("top", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("right", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
        Input("bottom", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=1),
    ],
    outputs=(T.MASK,),
    category="mask",
)
def feather_mask(
    ctx: NodeContext, mask: torch.Tensor, left: int, top: int, right: int, bottom: int
):
    """Fades the mask out towards its edges: the k-th column from the left edge (k = 1 at
    the edge) is multiplied by ``k / left``, likewise for the other edges (each width cut
    to the mask's size); corners get both factors."""
    out = as_mask_batch(mask).clone()
    h, w = out.shape[-2:]

    def ramp(n: int, size: int) -> torch.Tensor:
        r = torch.ones(size)
        n = min(n, size)
        if n > 0:
            r[:n] = torch.arange(1, n + 1, dtype=torch.float32) / n
        return r

    cols = ramp(left, w) * ramp(right, w).flip(0)
    rows = ramp(top, h) * ramp(bottom, h).flip(0)
    return (out * rows[:, None] * cols[None, :],)


@node(
    "GrowMask",
    inputs=[
        Input("mask", T.MASK),
        Input("expand", T.INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
        Input("tapered_corners", T.BOOLEAN, default=True),
    ],
    outputs=(T.MASK,),
    category="mask",
)
def grow_mask(ctx: NodeContext, mask: torch.Tensor, expand: int, tapered_corners: bool):
    """Grows (``expand`` > 0) or shrinks (< 0) the mask by ``|expand|`` pixels: that many
    grey-scale dilations (erosions), each the max (min) over a pixel's 3x3 neighbourhood,
    the 4 direct neighbours only when ``tapered_corners`` (rounder corners). Pixels beyond
    the edge are not counted (ComfyUI uses scipy's ``grey_dilation``, whose border
    reflection gives the same)."""
    m = as_mask_batch(mask)[:, None]
    if expand == 0:
        return (m[:, 0].clone(),)
    sign = 1.0 if expand > 0 else -1.0
    x = m * sign  # an erosion is a dilation of the negated mask
    for _ in range(abs(expand)):
        padded = F.pad(x, (1, 1, 1, 1), value=-float("inf"))
        if tapered_corners:
            shifted = [
                padded[..., 1:-1, 1:-1],
                padded[..., :-2, 1:-1],
                padded[..., 2:, 1:-1],
                padded[..., 1:-1, :-2],
                padded[..., 1:-1, 2:],
            ]
            x = torch.stack(shifted).amax(0)
        else:
            x = F.max_pool2d(padded, 3, stride=1)
    return ((x * sign)[:, 0],)


@node(
    "LoadImageMask",
    inputs=[
        Input("image", T.COMBO),  # choices and checks: LoadImage's (set in easel_node_types)
        Input("channel", T.COMBO, choices=("alpha", "red", "green", "blue")),
    ],
    outputs=(T.MASK,),
    category="mask",
)
def load_image_mask(ctx: NodeContext, image: str, channel: str):
    """Loads one channel of an input image as a mask. ``alpha`` gives ``1 - alpha`` (1 where
    the image is transparent), as LoadImage's MASK; an image without alpha then gives
    LoadImage's empty mask."""
    from plugins.core.image import load_image

    pixels, alpha_mask = load_image.function(ctx, image=image)
    if channel == "alpha":
        return (alpha_mask,)
    return (pixels[..., ("red", "green", "blue").index(channel)].clone(),)


def _load_image_mask_type():
    """LoadImageMask with LoadImage's image choices, file checks and change detection."""
    import dataclasses

    from plugins.core.image import load_image

    image_input = dataclasses.replace(load_image.input("image"), name="image")
    inputs = (image_input,) + load_image_mask.inputs[1:]
    return dataclasses.replace(load_image_mask, inputs=inputs, is_changed=load_image.is_changed)


@hookimpl
def easel_node_types():
    """ComfyUI's mask nodes."""
    return [
        solid_mask,
        invert_mask,
        mask_composite,
        image_to_mask,
        mask_to_image,
        feather_mask,
        grow_mask,
        _load_image_mask_type(),
    ]
