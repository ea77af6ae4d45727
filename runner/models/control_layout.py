"""Key layouts of ControlNet and T2I-Adapter files, and their conversion to diffusers'.

What a file holds is decided from its tensor names (:func:`detect_control`):

==========================  ==============================================================
layout                      keys
==========================  ==============================================================
ControlNet, diffusers       ``controlnet_cond_embedding.conv_in.weight``,
                            ``controlnet_down_blocks.N``, ``down_blocks.*`` (what
                            ``ControlNetModel.save_pretrained`` writes)
ControlNet, original        ``control_model.input_blocks.*``, ``control_model.zero_convs.*``,
                            ``control_model.input_hint_block.*``,
                            ``control_model.middle_block_out.*`` (lllyasviel's cldm; also
                            without the ``control_model.`` prefix); a *diff* ControlNet
                            also holds a ``difference`` tensor
T2I-Adapter, diffusers      ``adapter.conv_in.weight``, ``adapter.body.I.resnets.J.*``
                            (full and SDXL adapters), ``adapter.body.I.in_conv`` without
                            ``adapter.conv_in`` (light adapter)
T2I-Adapter, original       ``conv_in.weight``, ``body.K.block1/block2/in_conv`` (TencentARC's
                            ``Adapter``, K = level * 2 + block), ``body.I.body.J.*`` +
                            ``body.I.in_conv/out_conv`` (``Adapter_light``)
==========================  ==============================================================

The original ControlNet layout is the encoder half of the original SD UNet
(:mod:`runner.models.layout`): ``input_blocks.0.0`` the input conv, then per level
``layers_per_block`` blocks of ``(resnet, transformer)`` and a downsampler (``.0.op``),
``middle_block.0/1/2`` (resnet, transformer, resnet), and the ControlNet's own parts:
``input_hint_block.{0,2,..}`` (convolutions between SiLUs) and ``zero_convs.N.0`` /
``middle_block_out.0`` (the zero convolutions). :func:`controlnet_to_diffusers` renames
those keys to diffusers' names; it works on any mapping (tensors or shapes).

Configs are built from the weights' shapes (:func:`controlnet_config`,
:func:`adapter_config`). Three values cannot be read from weights: the attention heads,
GroupNorm's group count and SDXL's size-embedding width. They take the stock values of the
family (SD1: 8 heads; SD2/SDXL: 64 channels a head; 32 groups; 256), unless the caller
gives a base config (the MODEL's UNet config, or a ``<stem>.config/config.json`` next to
the file).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from runner.errors import ModelError

V = TypeVar("V")

CN_DIFFUSERS_KEY = "controlnet_cond_embedding.conv_in.weight"
CN_PREFIX = "control_model."
CN_ORIGINAL_KEY = "zero_convs.0.0.weight"
DIFF_KEY = "difference"
T2I_DIFFUSERS_KEY = "adapter.conv_in.weight"
T2I_DIFFUSERS_LIGHT_KEY = "adapter.body.0.in_conv.weight"
T2I_ORIGINAL_KEY = "conv_in.weight"
T2I_ORIGINAL_LIGHT_KEY = "body.0.in_conv.weight"

STOCK_ADDITION_TIME_EMBED_DIM = 256
"""SDXL's width of each size-conditioning embedding (6 of them join the pooled prompt)."""
STOCK_NORM_GROUPS = 32
SD1_HEADS = 8
HEAD_CHANNELS = 64
"""SD2 and SDXL attention heads are 64 channels wide."""

_RESNET_RENAMES = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
)
_TOP_RENAMES = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "label_emb.0.0.": "add_embedding.linear_1.",
    "label_emb.0.2.": "add_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "middle_block_out.0.": "controlnet_mid_block.",
}


def detect_control(keys: Any) -> tuple[str, str] | None:
    """``(kind, layout)`` of a file's keys: kind ``controlnet`` or ``t2i_adapter``, layout
    ``diffusers`` or ``original`` (``light`` adapters say ``diffusers-light`` /
    ``original-light``); None for anything else."""
    keyset = set(keys)
    if CN_DIFFUSERS_KEY in keyset:
        return "controlnet", "diffusers"
    if CN_PREFIX + CN_ORIGINAL_KEY in keyset or CN_ORIGINAL_KEY in keyset:
        return "controlnet", "original"
    if T2I_DIFFUSERS_KEY in keyset:
        return "t2i_adapter", "diffusers"
    if T2I_DIFFUSERS_LIGHT_KEY in keyset:
        return "t2i_adapter", "diffusers-light"
    if T2I_ORIGINAL_KEY in keyset and any(k.startswith("body.") for k in keyset):
        return "t2i_adapter", "original"
    if T2I_ORIGINAL_LIGHT_KEY in keyset:
        return "t2i_adapter", "original-light"
    return None


def describe_not_control(name: str, keys: Any) -> str:
    """A sentence saying that file ``name`` is neither a ControlNet nor a T2I-Adapter."""
    from runner.models.layout import UNET_IN, describe_other

    keys = sorted(keys)
    sample = ", ".join(repr(k) for k in keys[:3]) or "none"
    if UNET_IN in keys:
        what = "a whole Stable Diffusion checkpoint (put it with the checkpoints)"
    elif any(k.startswith(("lora_", "lycoris_")) or ".lora_" in k for k in keys):
        what = describe_other(name, keys).split(": ", 1)[-1].split(" (keys")[0]
    else:
        what = "not a ControlNet or T2I-Adapter"
    return (
        f"{name}: {what}; a ControlNet has keys like 'control_model.zero_convs.0.0.weight' or "
        f"'controlnet_cond_embedding.conv_in.weight', a T2I-Adapter 'adapter.body.*' or "
        f"'body.*' (first keys: {sample})"
    )


# ---------------------------------------------------------------- ControlNet


def _resnet(rest: str) -> str:
    for old, new in _RESNET_RENAMES:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def controlnet_to_diffusers(state: Mapping[str, V], *, name: str = "file") -> dict[str, V]:
    """The original-layout ControlNet ``state`` (with or without ``control_model.``) with
    diffusers' key names. Works on tensors or on shapes; the ``difference`` marker is dropped.
    Raises ModelError (naming ``name``) for a key it cannot place."""
    prefixed = any(k.startswith(CN_PREFIX) for k in state)
    sd = {
        (k[len(CN_PREFIX) :] if prefixed else k): v
        for k, v in state.items()
        if k != DIFF_KEY and (not prefixed or k.startswith(CN_PREFIX))
    }
    # Levels: input_blocks 1.. hold resnets (with attentions) and downsamplers (".0.op").
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.")} - {0})
    ops = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in sd]
    per_level = (ops[0] - 1) if ops else len(blocks)
    if per_level < 1:
        raise ModelError(f"{name}: cannot find the ControlNet's first level of input blocks")
    place: dict[int, tuple[int, int, bool]] = {}  # input block -> (level, index, is_op)
    level, index = 0, 0
    for i in blocks:
        if i in ops:
            place[i] = (level, per_level, True)
            level, index = level + 1, 0
        else:
            place[i] = (level, index, False)
            index += 1
    hint = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_hint_block.")})
    out: dict[str, V] = {}
    for key, value in sd.items():
        new = None
        for old, repl in _TOP_RENAMES.items():
            if key.startswith(old):
                new = repl + key[len(old) :]
                break
        if new is None:
            parts = key.split(".")
            if parts[0] == "input_blocks":
                lvl, idx, is_op = place[int(parts[1])]
                rest = ".".join(parts[3:])
                if is_op:
                    new = f"down_blocks.{lvl}.downsamplers.0.conv." + ".".join(parts[4:])
                elif parts[2] == "0":
                    new = f"down_blocks.{lvl}.resnets.{idx}." + _resnet(rest)
                elif parts[2] == "1":
                    new = f"down_blocks.{lvl}.attentions.{idx}." + rest
            elif parts[0] == "middle_block":
                rest = ".".join(parts[2:])
                new = {
                    "0": "mid_block.resnets.0." + _resnet(rest),
                    "1": "mid_block.attentions.0." + rest,
                    "2": "mid_block.resnets.1." + _resnet(rest),
                }.get(parts[1])
            elif parts[0] == "zero_convs" and parts[2] == "0":
                new = f"controlnet_down_blocks.{parts[1]}." + ".".join(parts[3:])
            elif parts[0] == "input_hint_block":
                position = hint.index(int(parts[1]))
                tail = ".".join(parts[2:])
                if position == 0:
                    new = "controlnet_cond_embedding.conv_in." + tail
                elif position == len(hint) - 1:
                    new = "controlnet_cond_embedding.conv_out." + tail
                else:
                    new = f"controlnet_cond_embedding.blocks.{position - 1}." + tail
        if new is None:
            raise ModelError(f"{name}: unexpected ControlNet tensor {key!r}")
        out[new] = value
    return out


def _count(shapes: Mapping[str, Any], pattern: str) -> int:
    found = {m.group(1) for k in shapes if (m := re.match(pattern, k))}
    return len(found)


def _shape(shapes: Mapping[str, Any], key: str, name: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelError(f"{name}: the ControlNet has no {key!r}; the file is incomplete")
    value = shapes[key]
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def controlnet_config(
    shapes: Mapping[str, Any], *, name: str = "file", base: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """``(ControlNetModel config, family)`` from diffusers-named ControlNet ``shapes``
    (tensors or shape tuples). ``base`` (a UNet's or ControlNet's config) supplies what
    shapes cannot say: heads, GroupNorm groups, SDXL's size embedding width."""
    conv_in = _shape(shapes, "conv_in.weight", name)
    levels = _count(shapes, r"down_blocks\.(\d+)\.")
    if levels == 0:
        raise ModelError(f"{name}: the ControlNet has no down blocks")
    layers = _count(shapes, r"down_blocks\.0\.resnets\.(\d+)\.")
    channels, types, depth = [], [], []
    for b in range(levels):
        channels.append(_shape(shapes, f"down_blocks.{b}.resnets.0.conv1.weight", name)[0])
        n = _count(shapes, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.")
        types.append("CrossAttnDownBlock2D" if n else "DownBlock2D")
        depth.append(max(n, 1))
    to_k = next((k for k in sorted(shapes) if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in sorted(shapes) if k.endswith("proj_in.weight")), None)
    linear = proj_in is not None and len(_shape(shapes, proj_in, name)) == 2
    hint_in = _shape(shapes, "controlnet_cond_embedding.conv_in.weight", name)
    n_hint = _count(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    hint_channels = [hint_in[0]] + [
        _shape(shapes, f"controlnet_cond_embedding.blocks.{2 * k + 1}.weight", name)[0]
        for k in range(n_hint // 2)
    ]
    xl = "add_embedding.linear_1.weight" in shapes
    family = "sdxl" if xl else ("sd2" if linear else "sd1")
    base = dict(base or {})
    config: dict[str, Any] = {
        "in_channels": conv_in[1],
        "conditioning_channels": hint_in[1],
        "block_out_channels": channels,
        "down_block_types": types,
        "layers_per_block": layers,
        "transformer_layers_per_block": depth,
        "cross_attention_dim": _shape(shapes, to_k, name)[1] if to_k else 1280,
        "use_linear_projection": linear,
        "mid_block_type": (
            "UNetMidBlock2DCrossAttn"
            if any(k.startswith("mid_block.attentions.") for k in shapes)
            else "UNetMidBlock2D"
        ),
        "conditioning_embedding_out_channels": hint_channels,
        "norm_num_groups": base.get("norm_num_groups", STOCK_NORM_GROUPS),
    }
    if "num_attention_heads" in base and base["num_attention_heads"] is not None:
        config["num_attention_heads"] = base["num_attention_heads"]
    if "attention_head_dim" in base:
        config["attention_head_dim"] = base["attention_head_dim"]
    elif family == "sd1":
        config["attention_head_dim"] = SD1_HEADS
    else:
        if any(c % HEAD_CHANNELS for c in channels):
            raise ModelError(
                f"{name}: channels {channels} are not multiples of {HEAD_CHANNELS}, so the "
                f"attention heads of this {family} ControlNet cannot be inferred; put its "
                f"diffusers config.json in a folder named after the file with '.config'"
            )
        config["attention_head_dim"] = [c // HEAD_CHANNELS for c in channels]
    if xl:
        adm = _shape(shapes, "add_embedding.linear_1.weight", name)[1]
        time_dim = base.get("addition_time_embed_dim") or STOCK_ADDITION_TIME_EMBED_DIM
        if adm <= 6 * time_dim:
            raise ModelError(
                f"{name}: the SDXL size embedding takes {adm} inputs, too few for six "
                f"{time_dim}-wide size embeddings; put the ControlNet's diffusers config.json "
                f"in a folder named after the file with '.config'"
            )
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=adm,
        )
    for key in ("upcast_attention", "resnet_time_scale_shift", "global_pool_conditions"):
        if key in base:
            config[key] = base[key]
    return config, family


# ---------------------------------------------------------------- T2I-Adapter


def adapter_to_diffusers(
    state: Mapping[str, V], layout: str, *, name: str = "file", blocks_per_level: int = 2
) -> dict[str, V]:
    """A T2I-Adapter ``state`` in the original layout (TencentARC: flat ``body.K`` with K =
    level * ``blocks_per_level`` + block; light: ``body.I.body.J``) with diffusers' names.
    Raises ModelError for parts diffusers' T2IAdapter has no place for (a convolution as
    downsampler, skip convolutions, 3x3 in/out convolutions)."""
    if layout.startswith("diffusers"):
        return dict(state)
    out: dict[str, V] = {}
    for key, value in state.items():
        if ".down_opt." in key or ".skep." in key:
            raise ModelError(
                f"{name}: this T2I-Adapter uses {key.split('.')[2]!r} layers (a convolution as "
                f"downsampler or skip), which diffusers' T2IAdapter cannot hold"
            )
        parts = key.split(".")
        if layout == "original-light":
            if parts[0] == "body" and len(parts) > 3 and parts[2] == "body":
                new = f"adapter.body.{parts[1]}.resnets.{parts[3]}." + ".".join(parts[4:])
            else:
                new = "adapter." + key
        elif parts[0] == "body":
            k = int(parts[1])
            level, block = divmod(k, blocks_per_level)
            if parts[2] == "in_conv":
                if block:
                    raise ModelError(f"{name}: unexpected T2I-Adapter tensor {key!r}")
                new = f"adapter.body.{level}.in_conv." + ".".join(parts[3:])
            else:
                new = f"adapter.body.{level}.resnets.{block}." + ".".join(parts[2:])
        elif parts[0] == "conv_in":
            new = "adapter." + key
        else:
            raise ModelError(f"{name}: unexpected T2I-Adapter tensor {key!r}")
        out[new] = value
    return out


def adapter_config(shapes: Mapping[str, Any], layout: str, *, name: str = "file") -> dict:
    """The ``T2IAdapter`` config for diffusers-named adapter ``shapes``. The pixel-unshuffle
    factor follows ComfyUI's rule: 16 (SDXL) for 256 or 768 input channels, else 8."""
    light = layout.endswith("light")
    levels = _count(shapes, r"adapter\.body\.(\d+)\.")
    blocks = _count(shapes, r"adapter\.body\.0\.resnets\.(\d+)\.")
    if light:
        cin = _shape(shapes, "adapter.body.0.in_conv.weight", name)[1]
        factor = 8
        channels = [
            _shape(shapes, f"adapter.body.{i}.out_conv.weight", name)[0] for i in range(levels - 1)
        ]
        return {
            "in_channels": cin // factor**2,
            "channels": channels,
            "num_res_blocks": blocks,
            "downscale_factor": factor,
            "adapter_type": "light_adapter",
        }
    conv_in = _shape(shapes, "adapter.conv_in.weight", name)
    block2 = _shape(shapes, "adapter.body.0.resnets.0.block2.weight", name)
    if len(block2) == 4 and block2[-1] != 1:
        raise ModelError(
            f"{name}: this T2I-Adapter's blocks use {block2[-1]}x{block2[-1]} output "
            f"convolutions; diffusers' T2IAdapter has 1x1 ones"
        )
    cin = conv_in[1]
    xl = cin in (256, 768)
    factor = 16 if xl else 8
    channels = [conv_in[0]]
    for i in range(1, levels):
        key = f"adapter.body.{i}.in_conv.weight"
        channels.append(_shape(shapes, key, name)[0] if key in shapes else channels[-1])
    return {
        "in_channels": cin // factor**2,
        "channels": channels,
        "num_res_blocks": blocks,
        "downscale_factor": factor,
        "adapter_type": "full_adapter_xl" if xl else "full_adapter",
    }


__all__ = [
    "DIFF_KEY",
    "adapter_config",
    "adapter_to_diffusers",
    "controlnet_config",
    "controlnet_to_diffusers",
    "describe_not_control",
    "detect_control",
]
