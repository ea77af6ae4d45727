"""ComfyUI's ControlNet nodes: ControlNetLoader, DiffControlNetLoader, ControlNetApply,
ControlNetApplyAdvanced, and the Canny preprocessor (``comfy_extras/nodes_canny.py``).

A CONTROL_NET is a :class:`runner.models.controlnet.ControlModel` (a diffusers
ControlNetModel or T2IAdapter). Applying one attaches a :class:`runner.ControlSpec` to
conditioning entries; the sampling loop computes the residuals (ControlNet: Zhang et al.
2023, "Adding Conditional Control to Text-to-Image Diffusion Models"; T2I-Adapter: Mou et
al. 2023) for the entries active at each step.
"""

from __future__ import annotations

from typing import Any

import torch

from runner import Conditioning, ControlSpec, Input, ModelHandle, NodeContext, hookimpl, node
from runner import types as T
from runner.models.controlnet import ControlModel, control_store

APPLY_TO_UNCOND = "control_apply_to_uncond"
"""CondEntry.extra key set by ControlNetApply (as ComfyUI's ``control_apply_to_uncond``):
the positive's control also acts on negative entries that have none."""


def _names(env) -> list[str]:
    return control_store(env.models).names()


def _check(name: str, env) -> str | None:
    return control_store(env.models).check(name)


def _changed(ctx: NodeContext, control_net_name: str, **_: Any) -> str:
    return control_store(ctx.env.models).stamp(control_net_name)


def _name_input() -> Input:
    return Input("control_net_name", T.COMBO, choices=_names, check=_check)


@node(
    "ControlNetLoader",
    inputs=[_name_input()],
    outputs=(T.CONTROL_NET,),
    output_names=("CONTROL_NET",),
    category="loaders",
    is_changed=_changed,
)
def controlnet_loader(ctx: NodeContext, control_net_name: str):
    """Loads a ControlNet or T2I-Adapter from models/controlnet (or models/t2i_adapter):
    diffusers folders and .safetensors files in the diffusers or original layout."""
    return (control_store(ctx.env.models).get(control_net_name),)


@node(
    "DiffControlNetLoader",
    inputs=[Input("model", T.MODEL), _name_input()],
    outputs=(T.CONTROL_NET,),
    output_names=("CONTROL_NET",),
    category="loaders",
    is_changed=_changed,
)
def diff_controlnet_loader(ctx: NodeContext, model: ModelHandle, control_net_name: str):
    """Loads a ControlNet with a model: a diff ControlNet (weights stored relative to the model's
    UNet) gets the UNet's weights added back; the model's UNet config fills in what the file's
    shapes cannot say (attention heads). Other files load as with ControlNetLoader."""
    ckpt = model.checkpoint
    unet = getattr(ckpt.pipe.unet, "_orig_mod", ckpt.pipe.unet)  # torch.compile's wrapper
    with ckpt.lock:
        return (control_store(ctx.env.models).get(control_net_name, unet=unet),)


def _hint(image: Any) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"the control image must be an IMAGE [batch, height, width, 3], got {shape}"
        )
    return image[..., :3].detach().float().cpu() if image.shape[-1] == 4 else image.float().cpu()


def _control(control_net: Any) -> ControlModel:
    if not isinstance(control_net, ControlModel):
        raise ValueError(
            f"control_net must be a loaded ControlNet, got {type(control_net).__name__}"
        )
    return control_net


def attach_control(
    conditionings: list[Conditioning],
    model: ControlModel,
    hint: torch.Tensor,
    strength: float,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    extra: dict[str, Any] | None = None,
) -> list[Conditioning]:
    """Each conditioning with a :class:`ControlSpec` for ``model`` appended to every entry's
    chain (``previous`` = the entry's own control). Entries that had the same previous
    control share one new spec, as ComfyUI shares one copy per previous ControlNet."""
    made: dict[int, ControlSpec] = {}
    out = []
    for conditioning in conditionings:
        entries = []
        for entry in conditioning:
            previous = entry.control
            spec = made.get(id(previous))
            if spec is None:
                spec = ControlSpec(
                    model=model,
                    hint=hint,
                    strength=float(strength),
                    start_percent=float(start_percent),
                    end_percent=float(end_percent),
                    previous=previous,
                )
                made[id(previous)] = spec
            changes: dict[str, Any] = {"control": spec}
            if extra:
                changes["extra"] = {**entry.extra, **extra}
            entries.append(entry.replace(**changes))
        out.append(Conditioning(entries=entries))
    return out


@node(
    "ControlNetApply",
    inputs=[
        Input("conditioning", T.CONDITIONING),
        Input("control_net", T.CONTROL_NET),
        Input("image", T.IMAGE),
        Input("strength", T.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning/controlnet",
)
def controlnet_apply(
    ctx: NodeContext, conditioning: Conditioning, control_net: Any, image: Any, strength: float
):
    """Applies a ControlNet to one conditioning for the whole schedule (ComfyUI's older node:
    the control also acts on the negative side where it has none). Strength 0 changes nothing."""
    if strength == 0:
        return (conditioning,)
    (out,) = attach_control(
        [conditioning],
        _control(control_net),
        _hint(image),
        strength,
        extra={APPLY_TO_UNCOND: True},
    )
    return (out,)


@node(
    "ControlNetApplyAdvanced",
    inputs=[
        Input("positive", T.CONDITIONING),
        Input("negative", T.CONDITIONING),
        Input("control_net", T.CONTROL_NET),
        Input("image", T.IMAGE),
        Input("strength", T.FLOAT, default=1.0, min=0.0, max=10.0, step=0.01),
        Input("start_percent", T.FLOAT, default=0.0, min=0.0, max=1.0, step=0.001),
        Input("end_percent", T.FLOAT, default=1.0, min=0.0, max=1.0, step=0.001),
        Input("vae", T.VAE, required=False),
    ],
    outputs=(T.CONDITIONING, T.CONDITIONING),
    output_names=("positive", "negative"),
    category="conditioning/controlnet",
)
def controlnet_apply_advanced(
    ctx: NodeContext,
    positive: Conditioning,
    negative: Conditioning,
    control_net: Any,
    image: Any,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae: Any = None,
):
    """Applies a ControlNet or T2I-Adapter to both prompts between start_percent and end_percent
        of the schedule, after any control they already carry (a start after the end never acts, as
    in ComfyUI). Strength 0 changes nothing. The
        optional VAE is for ControlNets that take latent hints (none of the SD1/SD2/SDXL ones)."""
    if strength == 0:
        return positive, negative
    pos, neg = attach_control(
        [positive, negative],
        _control(control_net),
        _hint(image),
        strength,
        start_percent,
        end_percent,
    )
    return pos, neg


@node(
    "Canny",
    inputs=[
        Input("image", T.IMAGE),
        Input("low_threshold", T.FLOAT, default=0.4, min=0.01, max=0.99, step=0.01),
        Input("high_threshold", T.FLOAT, default=0.8, min=0.01, max=0.99, step=0.01),
    ],
    outputs=(T.IMAGE,),
    category="image/preprocessors",
    validate=lambda inputs: _check_thresholds(inputs),
)
def canny(ctx: NodeContext, image: Any, low_threshold: float, high_threshold: float):
    """Canny edges (J. Canny, "A Computational Approach to Edge Detection", 1986) with kornia:
    Gaussian blur, Sobel gradients, non-maximum suppression, hysteresis between the two
    thresholds; white edges on black, in three channels."""
    from kornia.filters import canny as kornia_canny

    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
    pixels = _hint(image).movedim(-1, 1)
    _, edges = kornia_canny(pixels, low_threshold, high_threshold)
    return (edges.repeat(1, 3, 1, 1).movedim(1, -1).contiguous(),)


def _check_thresholds(inputs: dict[str, Any]):
    low, high = inputs.get("low_threshold"), inputs.get("high_threshold")
    if isinstance(low, int | float) and isinstance(high, int | float) and low > high:
        yield "low_threshold", f"low_threshold {low} is above high_threshold {high}"


@hookimpl
def easel_node_types():
    """ComfyUI's ControlNet / T2I-Adapter loaders and apply nodes, and the Canny preprocessor."""
    return [
        controlnet_loader,
        diff_controlnet_loader,
        controlnet_apply,
        controlnet_apply_advanced,
        canny,
    ]
