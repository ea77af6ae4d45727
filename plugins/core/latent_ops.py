"""ComfyUI's latent transform nodes: LatentComposite, LatentCompositeMasked, LatentBlend,
LatentCrop, LatentFlip, LatentRotate and LatentFromBatch.

Positions and sizes are in pixels (8 per latent cell), as in ComfyUI. A LATENT's other
keys (``noise_mask``, ``batch_index``...) are carried through as ComfyUI carries them: the
output is a copy of the (first) input with new ``samples``; LatentFromBatch also selects
the matching ``noise_mask`` entries and records ``batch_index``.
"""

from __future__ import annotations

import math

import torch

from runner import Input, Latent, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion.common import MAX_RESOLUTION, composite_masked, resize_nchw


def _with_samples(latent: Latent, samples: torch.Tensor) -> Latent:
    out = dict(latent)
    out["samples"] = samples
    return out  # type: ignore[return-value]


def _px(name: str, **extra) -> Input:
    return Input(name, T.INT, default=0, min=0, max=MAX_RESOLUTION, step=8, **extra)


@node(
    "LatentComposite",
    inputs=[
        Input("samples_to", T.LATENT),
        Input("samples_from", T.LATENT),
        _px("x"),
        _px("y"),
        _px("feather"),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def latent_composite(
    ctx: NodeContext, samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int
):
    """Pastes ``samples_from`` onto ``samples_to`` at (x, y) px. With ``feather`` (px), the
    pasted block fades in over ``feather / 8`` cells from each edge that lies inside the
    destination: the k-th cell from such an edge (k = 1 at the edge) weighs ``k / cells``."""
    x, y, cells = x // 8, y // 8, feather // 8
    dest = samples_to["samples"]
    src = samples_from["samples"]
    out = dest.clone()
    h = max(0, min(src.shape[2], dest.shape[2] - y))
    w = max(0, min(src.shape[3], dest.shape[3] - x))
    if h == 0 or w == 0:
        return (_with_samples(samples_to, out),)
    src = src[:, :, :h, :w].to(out.dtype)
    if src.shape[0] != out.shape[0] and src.shape[0] != 1:
        raise ValueError(
            f"samples_from has a batch of {src.shape[0]}, samples_to {out.shape[0]}: give one or the same number"
        )
    if cells == 0:
        out[:, :, y : y + h, x : x + w] = src
        return (_with_samples(samples_to, out),)
    rows, cols = torch.ones(h), torch.ones(w)
    for t in range(cells):
        a = (t + 1) / cells
        if y != 0 and t < h:
            rows[t] *= a
        if y + h < dest.shape[2] and t < h:
            rows[h - 1 - t] *= a
        if x != 0 and t < w:
            cols[t] *= a
        if x + w < dest.shape[3] and t < w:
            cols[w - 1 - t] *= a
    m = rows[:, None] * cols[None, :]
    region = out[:, :, y : y + h, x : x + w]
    out[:, :, y : y + h, x : x + w] = src * m + region * (1 - m)
    return (_with_samples(samples_to, out),)


@node(
    "LatentCompositeMasked",
    inputs=[
        Input("destination", T.LATENT),
        Input("source", T.LATENT),
        _px("x"),
        _px("y"),
        Input("resize_source", T.BOOLEAN, default=False),
        Input("mask", T.MASK, required=False),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def latent_composite_masked(
    ctx: NodeContext,
    destination: Latent,
    source: Latent,
    x: int,
    y: int,
    resize_source: bool,
    mask: torch.Tensor | None = None,
):
    """Pastes ``source`` onto ``destination`` at (x, y) px, blended by ``mask`` (resized to
    the source; none pastes it whole); ``resize_source`` first resizes the source to the
    destination's size."""
    out = composite_masked(
        destination["samples"], source["samples"].float(), x, y, mask, 8, resize_source
    )
    return (_with_samples(destination, out),)


@node(
    "LatentBlend",
    inputs=[
        Input("samples1", T.LATENT),
        Input("samples2", T.LATENT),
        Input("blend_factor", T.FLOAT, default=0.5, min=0, max=1, step=0.01),
    ],
    outputs=(T.LATENT,),
    category="latent",
)
def latent_blend(
    ctx: NodeContext,
    samples1: Latent,
    samples2: Latent,
    blend_factor: float,
):
    """``samples1 * blend_factor + samples2 * (1 - blend_factor)`` (ComfyUI's ``normal``
    mode, its only one); ``samples2`` is first resized (bicubic, center crop) to
    ``samples1``'s size when they differ."""
    a, b = samples1["samples"], samples2["samples"]
    if a.shape != b.shape:
        b = resize_nchw(b, a.shape[3], a.shape[2], "bicubic", "center")
    return (_with_samples(samples1, a * blend_factor + b.to(a.dtype) * (1 - blend_factor)),)


@node(
    "LatentCrop",
    inputs=[
        Input("samples", T.LATENT),
        Input("width", T.INT, default=512, min=64, max=MAX_RESOLUTION, step=8),
        Input("height", T.INT, default=512, min=64, max=MAX_RESOLUTION, step=8),
        _px("x"),
        _px("y"),
    ],
    outputs=(T.LATENT,),
    category="latent/transform",
)
def latent_crop(ctx: NodeContext, samples: Latent, width: int, height: int, x: int, y: int):
    """Crops latents to ``width`` x ``height`` px from (x, y) px; the corner is moved in so
    that at least 64 px (8 cells) remain on each axis where the latent allows."""
    s = samples["samples"]
    x = min(x // 8, s.shape[3] - 8)
    y = min(y // 8, s.shape[2] - 8)
    x, y = max(x, 0), max(y, 0)
    return (_with_samples(samples, s[:, :, y : y + height // 8, x : x + width // 8]),)


FLIP_METHODS = ("x-axis: vertically", "y-axis: horizontally")


@node(
    "LatentFlip",
    inputs=[Input("samples", T.LATENT), Input("flip_method", T.COMBO, choices=FLIP_METHODS)],
    outputs=(T.LATENT,),
    category="latent/transform",
)
def latent_flip(ctx: NodeContext, samples: Latent, flip_method: str):
    """Mirrors latents: ``x-axis`` flips top and bottom, ``y-axis`` left and right."""
    if flip_method not in FLIP_METHODS:
        raise ValueError(f"unknown flip_method {flip_method!r}; one of {', '.join(FLIP_METHODS)}")
    dim = 2 if flip_method.startswith("x") else 3
    return (_with_samples(samples, torch.flip(samples["samples"], dims=[dim])),)


ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")


@node(
    "LatentRotate",
    inputs=[Input("samples", T.LATENT), Input("rotation", T.COMBO, choices=ROTATIONS)],
    outputs=(T.LATENT,),
    category="latent/transform",
)
def latent_rotate(ctx: NodeContext, samples: Latent, rotation: str):
    """Rotates latents clockwise by 0, 90, 180 or 270 degrees."""
    if rotation not in ROTATIONS:
        raise ValueError(f"unknown rotation {rotation!r}; one of {', '.join(ROTATIONS)}")
    k = ROTATIONS.index(rotation)
    return (_with_samples(samples, torch.rot90(samples["samples"], k=k, dims=[3, 2])),)


@node(
    "LatentFromBatch",
    inputs=[
        Input("samples", T.LATENT),
        Input("batch_index", T.INT, default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
        Input("length", T.INT, default=1, min=1, max=64),
    ],
    outputs=(T.LATENT,),
    category="latent/batch",
)
def latent_from_batch(ctx: NodeContext, samples: Latent, batch_index: int, length: int):
    """``length`` latents of the batch from ``batch_index`` (negative counts from the end;
    both clipped to the batch). The ``noise_mask`` entries that go with them are kept (a
    single mask is shared), and ``batch_index`` records which latents they were, so their
    noise stays what it was in the whole batch."""
    s = samples["samples"]
    n = s.shape[0]
    if batch_index < 0:
        batch_index += n
    start = max(0, min(n - 1, batch_index))
    length = min(n - start, length)
    out = dict(samples)
    out["samples"] = s[start : start + length].clone()
    if "noise_mask" in samples:
        masks = samples["noise_mask"]
        if masks.shape[0] == 1:
            out["noise_mask"] = masks.clone()
        else:
            if masks.shape[0] < n:
                masks = masks.repeat(math.ceil(n / masks.shape[0]), 1, 1, 1)[:n]
            out["noise_mask"] = masks[start : start + length].clone()
    if "batch_index" in samples:
        out["batch_index"] = list(samples["batch_index"])[start : start + length]
    else:
        out["batch_index"] = list(range(start, start + length))
    return (out,)


@hookimpl
def easel_node_types():
    """ComfyUI's latent compositing, blending, cropping, flipping, rotating and batch nodes."""
    return [
        latent_composite,
        latent_composite_masked,
        latent_blend,
        latent_crop,
        latent_flip,
        latent_rotate,
        latent_from_batch,
    ]
