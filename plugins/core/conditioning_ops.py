"""ComfyUI's nodes that change a CONDITIONING (``nodes.py``): combine, average, concat, areas,
area strength, masks, zero-out and timestep ranges.

A CONDITIONING is a list of entries (:class:`runner.Conditioning`); these nodes only build
new lists and entries (entries are frozen), the sampling loop applies what they set. A
MASK is a float tensor ``[batch, height, width]`` in 0..1 (``[height, width]`` gets a
batch dimension).
"""

from __future__ import annotations

import torch

from runner import Area, Conditioning, Input, NodeContext, hookimpl, node
from runner import types as T

MAX_RESOLUTION = 16384


def _strength(name: str = "strength") -> Input:
    return Input(name, T.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01)


def _first(conditioning: Conditioning, what: str, ctx: NodeContext):
    """The first entry of a ``conditioning_from`` input (ComfyUI uses only that one)."""
    if len(conditioning) == 0:
        raise ValueError(f"{what} is empty: it has no conditioning entry to take")
    if len(conditioning) > 1:
        ctx.warn(
            f"{what} has {len(conditioning)} entries; only the first is applied (as in ComfyUI)"
        )
    return conditioning.entries[0]


@node(
    "ConditioningCombine",
    inputs=[Input("conditioning_1", T.CONDITIONING), Input("conditioning_2", T.CONDITIONING)],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_combine(ctx: NodeContext, conditioning_1: Conditioning, conditioning_2):
    """Both lists of entries in one: the sampler computes each entry and averages them where
    they overlap, weighted by strength."""
    return (conditioning_1 + conditioning_2,)


def _fit_tokens(embeds: torch.Tensor, tokens: int) -> torch.Tensor:
    """``embeds`` cut or zero-padded to ``tokens`` positions."""
    embeds = embeds[:, :tokens]
    if embeds.shape[1] < tokens:
        pad = embeds.new_zeros(embeds.shape[0], tokens - embeds.shape[1], embeds.shape[2])
        embeds = torch.cat([embeds, pad], dim=1)
    return embeds


def _check_width(to: torch.Tensor, other: torch.Tensor, node_name: str) -> None:
    if to.shape[-1] != other.shape[-1]:
        raise ValueError(
            f"{node_name}: conditioning_to is {to.shape[-1]} wide and conditioning_from "
            f"{other.shape[-1]} wide: they come from different text encoders"
        )


@node(
    "ConditioningAverage",
    inputs=[
        Input("conditioning_to", T.CONDITIONING),
        Input("conditioning_from", T.CONDITIONING),
        Input("conditioning_to_strength", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_average(
    ctx: NodeContext,
    conditioning_to: Conditioning,
    conditioning_from: Conditioning,
    conditioning_to_strength: float,
):
    """Each "to" entry blended with the first "from" entry: ``to * s + from * (1 - s)``, the
    "from" tokens cut or zero-padded to the "to" length; pooled outputs blended the same
    way (a "to" entry without one takes the "from" one)."""
    source = _first(conditioning_from, "conditioning_from", ctx)
    s = float(conditioning_to_strength)

    def blend(entry):
        _check_width(entry.embeds, source.embeds, "ConditioningAverage")
        other = _fit_tokens(source.embeds, entry.embeds.shape[1]).to(entry.embeds.dtype)
        embeds = entry.embeds * s + other * (1.0 - s)
        pooled = entry.pooled
        if source.pooled is not None:
            to_pooled = source.pooled if pooled is None else pooled
            pooled = to_pooled * s + source.pooled * (1.0 - s)
        return entry.replace(embeds=embeds, pooled=pooled)

    return (conditioning_to.map(blend),)


@node(
    "ConditioningConcat",
    inputs=[Input("conditioning_to", T.CONDITIONING), Input("conditioning_from", T.CONDITIONING)],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_concat(
    ctx: NodeContext, conditioning_to: Conditioning, conditioning_from: Conditioning
):
    """The first "from" entry's tokens appended to each "to" entry's tokens (one longer
    prompt; the "to" entry keeps its pooled output and options)."""
    source = _first(conditioning_from, "conditioning_from", ctx)

    def concat(entry):
        _check_width(entry.embeds, source.embeds, "ConditioningConcat")
        tail = source.embeds.to(entry.embeds.dtype)
        head = entry.embeds
        if head.shape[0] != tail.shape[0]:
            if tail.shape[0] == 1:
                tail = tail.expand(head.shape[0], -1, -1)
            elif head.shape[0] == 1:
                head = head.expand(tail.shape[0], -1, -1)
            else:
                raise ValueError(
                    f"ConditioningConcat: batches of {head.shape[0]} and {tail.shape[0]} "
                    "prompts cannot be joined"
                )
        return entry.replace(embeds=torch.cat([head, tail], dim=1))

    return (conditioning_to.map(concat),)


def _pixels(name: str, default: int, minimum: int) -> Input:
    return Input(name, T.INT, default=default, min=minimum, max=MAX_RESOLUTION, step=8)


@node(
    "ConditioningSetArea",
    inputs=[
        Input("conditioning", T.CONDITIONING),
        _pixels("width", 64, 64),
        _pixels("height", 64, 64),
        _pixels("x", 0, 0),
        _pixels("y", 0, 0),
        _strength(),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_set_area(
    ctx: NodeContext,
    conditioning: Conditioning,
    width: int,
    height: int,
    x: int,
    y: int,
    strength: float,
):
    """The prompt acts only inside a rectangle given in pixels (stored in latent cells,
    pixels // 8), weighted by strength where areas overlap."""
    area = Area(height=height // 8, width=width // 8, y=y // 8, x=x // 8)
    return (
        conditioning.with_options(area=area, strength=float(strength), set_area_to_bounds=False),
    )


def _fraction(name: str, default: float) -> Input:
    return Input(name, T.FLOAT, default=default, min=0, max=1.0, step=0.01)


@node(
    "ConditioningSetAreaPercentage",
    inputs=[
        Input("conditioning", T.CONDITIONING),
        _fraction("width", 1.0),
        _fraction("height", 1.0),
        _fraction("x", 0),
        _fraction("y", 0),
        _strength(),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_set_area_percentage(
    ctx: NodeContext,
    conditioning: Conditioning,
    width: float,
    height: float,
    x: float,
    y: float,
    strength: float,
):
    """The prompt acts only inside a rectangle given as fractions of the image (0..1)."""
    area = Area(height=float(height), width=float(width), y=float(y), x=float(x), percentage=True)
    return (
        conditioning.with_options(area=area, strength=float(strength), set_area_to_bounds=False),
    )


@node(
    "ConditioningSetAreaStrength",
    inputs=[Input("conditioning", T.CONDITIONING), _strength()],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_set_area_strength(ctx: NodeContext, conditioning: Conditioning, strength: float):
    """Sets the weight of every entry where it overlaps others."""
    return (conditioning.with_options(strength=float(strength)),)


def as_mask(mask, what: str = "mask") -> torch.Tensor:
    """A MASK as float ``[batch, height, width]``: ``[height, width]`` gets a batch
    dimension; anything else, or values outside 0..1, is a ValueError."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{what} must be a MASK tensor, got {type(mask).__name__}")
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if mask.dim() != 3 or mask.shape[-1] == 0 or mask.shape[-2] == 0:
        raise ValueError(
            f"{what} must be [batch, height, width] or [height, width], got shape "
            f"{list(mask.shape)}"
        )
    mask = mask.float()
    if mask.numel() and (float(mask.min()) < 0.0 or float(mask.max()) > 1.0):
        raise ValueError(
            f"{what} values must be in 0..1, got {float(mask.min()):g}..{float(mask.max()):g}"
        )
    return mask


@node(
    "ConditioningSetMask",
    inputs=[
        Input("conditioning", T.CONDITIONING),
        Input("mask", T.MASK),
        _strength(),
        Input("set_cond_area", T.COMBO, default="default", choices=("default", "mask bounds")),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_set_mask(
    ctx: NodeContext, conditioning: Conditioning, mask, strength: float, set_cond_area: str
):
    """The prompt acts where the mask is (weighted by its values times strength); with
    "mask bounds" it is computed on the mask's bounding box only, at full resolution."""
    if set_cond_area not in ("default", "mask bounds"):
        raise ValueError(f"set_cond_area must be 'default' or 'mask bounds', got {set_cond_area!r}")
    return (
        conditioning.with_options(
            mask=as_mask(mask),
            mask_strength=float(strength),
            set_area_to_bounds=set_cond_area != "default",
        ),
    )


@node(
    "ConditioningZeroOut",
    inputs=[Input("conditioning", T.CONDITIONING)],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_zero_out(ctx: NodeContext, conditioning: Conditioning):
    """Every entry's embeddings (and pooled output) set to zeros, options kept: SDXL
    turbo's and others' empty negative."""
    return (
        conditioning.map(
            lambda e: e.replace(
                embeds=torch.zeros_like(e.embeds),
                pooled=None if e.pooled is None else torch.zeros_like(e.pooled),
            )
        ),
    )


@node(
    "ConditioningSetTimestepRange",
    inputs=[
        Input("conditioning", T.CONDITIONING),
        Input("start", T.FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        Input("end", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.001),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def conditioning_set_timestep_range(
    ctx: NodeContext, conditioning: Conditioning, start: float, end: float
):
    """The entries act only from ``start`` to ``end`` of the schedule (0 the first step,
    1 the end), e.g. one prompt for the composition and another for the details."""
    return (conditioning.with_options(start_percent=float(start), end_percent=float(end)),)


@hookimpl
def easel_node_types():
    """ComfyUI's conditioning transforms."""
    return [
        conditioning_combine,
        conditioning_average,
        conditioning_concat,
        conditioning_set_area,
        conditioning_set_area_percentage,
        conditioning_set_area_strength,
        conditioning_set_mask,
        conditioning_zero_out,
        conditioning_set_timestep_range,
    ]
