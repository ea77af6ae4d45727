"""Writing a model in the original Stable Diffusion key layout (CompVis / Stability, as
single-file checkpoints are shared, read by ComfyUI, A1111 and easel's own single-file
loader): the inverse of diffusers' single-file conversion, for CheckpointSave and for
ModelMergeBlocks' block names.

=========  ==================================================================
family     keys written
=========  ==================================================================
``sd1``    ``model.diffusion_model.*``, ``first_stage_model.*``,
           ``cond_stage_model.transformer.text_model.*`` (Hugging Face CLIP keys)
``sd2``    as sd1, the text encoder OpenCLIP's under ``cond_stage_model.model.*``
``sdxl``   ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L) and
           ``conditioner.embedders.1.model.*`` (OpenCLIP-G with ``text_projection``)
=========  ==================================================================

The UNet's LDM names follow its config (``layers_per_block``, which up blocks have
attention); the VAE's attention projections become 1x1 convolutions as in the released
files; Hugging Face CLIP keys get their ``text_model.`` prefix back (transformers 5 drops
it) and the ``position_ids`` the original files carry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    # SD2 unCLIP's image-embedding MLP sits where SDXL's size embedding does.
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "sd1": ("cond_stage_model.transformer.", None),
    "sd2": ("cond_stage_model.model.", None),
    "sd2-v": ("cond_stage_model.model.", None),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
"""Family -> (prefix of the first text encoder, of the second)."""


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    for new, old in _RESNET:
        if head == new:
            return f"{old}.{tail}"
    raise KeyError(rest)


def unet_key(key: str, config: Mapping[str, Any]) -> str:
    """The LDM name (``input_blocks.1.1.proj_in.weight``...) of a diffusers UNet key."""
    per = config["layers_per_block"] + 1
    module, _, param = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        idx = 1 + int(m[1]) * per + int(m[3])
        return (
            f"input_blocks.{idx}.0.{_resnet(m[4])}"
            if m[2] == "resnets"
            else (f"input_blocks.{idx}.1.{m[4]}")
        )
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        idx = int(m[1]) * per + int(m[3])
        return (
            f"output_blocks.{idx}.0.{_resnet(m[4])}"
            if m[2] == "resnets"
            else (f"output_blocks.{idx}.1.{m[4]}")
        )
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        attn = "CrossAttn" in config["up_block_types"][b]
        return f"output_blocks.{b * per + per - 1}.{2 if attn else 1}.conv.{m[2]}"
    raise KeyError(f"no original-layout name for UNet key {key!r}")


def unet_to_original(sd: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` state dict with LDM ``diffusion_model`` names."""
    return {unet_key(k, config): v for k, v in sd.items()}


def vae_to_original(sd: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``AutoencoderKL`` state dict with LDM ``first_stage_model`` names."""
    n_up = len(config["up_block_types"])
    out: dict[str, Any] = {}
    for key, value in sd.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}".replace(
                "conv_shortcut", "nin_shortcut"
            )
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}".replace(
                "conv_shortcut", "nin_shortcut"
            )
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}".replace(
                "conv_shortcut", "nin_shortcut"
            )
        elif m := re.fullmatch(
            r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key
        ):
            new = f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]
        out[new] = value
    return out


def hf_clip_keys(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Hugging Face CLIP text keys with ``text_model.`` (added where transformers 5 drops
    it); ``position_ids`` left out."""
    out = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        if key.startswith("text_projection") or key.startswith("text_model."):
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_to_original(sd: Mapping[str, Any]) -> dict[str, Any]:
    """A ``CLIPTextModel`` as it sits under ``cond_stage_model.transformer.``: Hugging Face
    keys with ``position_ids`` (int64), no projection."""
    import torch

    out = hf_clip_keys(sd)
    out.pop("text_projection.weight", None)
    n_pos = out["text_model.embeddings.position_embedding.weight"].shape[0]
    out["text_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64)[None]
    return out


def openclip_to_original(sd: Mapping[str, Any]) -> dict[str, Any]:
    """A ``CLIPTextModel(WithProjection)`` as OpenCLIP's text tower (``token_embedding``,
    ``positional_embedding``, fused ``in_proj`` attention, ``ln_final``,
    ``text_projection`` as ``[width, projection]``; the identity without a projection, as
    SD2's files carry one)."""
    import torch

    sd = hf_clip_keys(sd)
    out: dict[str, Any] = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    width = out["ln_final.weight"].shape[0]
    proj = sd.get("text_projection.weight")
    out["text_projection"] = (
        proj.T.contiguous()
        if proj is not None
        else torch.eye(width, dtype=out["ln_final.weight"].dtype)
    )
    layers = sorted(
        {int(m[1]) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))}
    )
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            out[f"{dst}attn.out_proj.{kind}"] = sd[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = sd[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = sd[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = sd[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = sd[f"{src}mlp.fc2.{kind}"]
    return out


def checkpoint_state_dict(
    family: str,
    *,
    unet: tuple[Mapping[str, Any], Mapping[str, Any]],
    vae: tuple[Mapping[str, Any], Mapping[str, Any]],
    text_encoders: list[Mapping[str, Any]],
) -> dict[str, Any]:
    """One state dict in the original layout of ``family`` from diffusers state dicts:
    ``unet`` and ``vae`` as ``(state dict, config)``, ``text_encoders`` the family's one
    or two (CLIP-L then OpenCLIP-G for SDXL)."""
    if family not in TEXT_PREFIXES:
        raise ValueError(f"cannot write a {family!r} checkpoint; known: {', '.join(TEXT_PREFIXES)}")
    out = {UNET_PREFIX + k: v for k, v in unet_to_original(*unet).items()}
    out |= {VAE_PREFIX + k: v for k, v in vae_to_original(*vae).items()}
    first, second = TEXT_PREFIXES[family]
    expected = 2 if second else 1
    if len(text_encoders) != expected:
        raise ValueError(
            f"a {family} checkpoint has {expected} text encoder(s), got {len(text_encoders)}"
        )
    if family == "sd1" or family == "sdxl":
        out |= {first + k: v for k, v in clip_to_original(text_encoders[0]).items()}
    else:
        out |= {first + k: v for k, v in openclip_to_original(text_encoders[0]).items()}
    if second:
        out |= {second + k: v for k, v in openclip_to_original(text_encoders[1]).items()}
    return out


__all__ = [
    "TEXT_PREFIXES",
    "checkpoint_state_dict",
    "clip_to_original",
    "hf_clip_keys",
    "openclip_to_original",
    "unet_key",
    "unet_to_original",
    "vae_to_original",
]
