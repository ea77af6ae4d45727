"""Write a diffusers Stable Diffusion pipeline as ONE ``.safetensors`` file in the
original (CompVis / Stability "LDM") key layout: the inverse of diffusers' single-file
conversion, for tests.

Layouts:

- ``sd1``: ``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.transformer.text_model.*`` (Hugging Face CLIP keys);
- ``sd2``: as sd1 but the text encoder is OpenCLIP under ``cond_stage_model.model.*``
  (fused ``in_proj`` attention weights, ``resblocks``, ``text_projection``);
- ``sd2-sgm``: SD2 as saved by Stability's generative-models code, the OpenCLIP text
  encoder under ``conditioner.embedders.0.model.*``;
- ``sdxl``: ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L) and
  ``conditioner.embedders.1.model.*`` (OpenCLIP-G, with ``text_projection``), and the
  UNet's ``label_emb``.

transformers 5 saves ``CLIPTextModel`` keys without the ``text_model.`` prefix; the
original layout has it, so it is added back here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

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
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    for new, old in _RESNET:
        if head == new:
            return f"{old}.{tail}"
    raise KeyError(rest)


def unet_to_original(
    sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Map a diffusers ``UNet2DConditionModel`` state dict to LDM ``diffusion_model`` keys."""
    per = config["layers_per_block"] + 1
    up_has_attn = {i: "CrossAttn" in t for i, t in enumerate(config["up_block_types"])}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_TOP:
            out[f"{_UNET_TOP[module]}.{param}"] = value
            continue
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = 1 + b * per + j
            new = (
                f"input_blocks.{idx}.0.{_resnet(rest)}"
                if kind == "resnets"
                else f"input_blocks.{idx}.1.{rest}"
            )
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            idx = b * per + j
            new = (
                f"output_blocks.{idx}.0.{_resnet(rest)}"
                if kind == "resnets"
                else f"output_blocks.{idx}.1.{rest}"
            )
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            new = f"output_blocks.{b * per + per - 1}.{2 if up_has_attn[b] else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no original-layout name for UNet key {key!r}")
        out[new] = value
    return out


_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def vae_to_original(
    sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Map a diffusers ``AutoencoderKL`` state dict to LDM ``first_stage_model`` keys
    (attention projections as 1x1 convolutions, as in the original checkpoints)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
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


def _clip_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP text keys with the ``text_model.`` prefix (added if missing)."""
    out = {}
    for key, value in sd.items():
        if key == "text_projection.weight" or key.startswith("text_model."):
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a ``CLIPTextModel`` as they sit under ``cond_stage_model.transformer.``,
    with the ``position_ids`` buffer the original checkpoints carry."""
    out = _clip_keys(sd)
    out.pop("text_projection.weight", None)
    n_pos = out["text_model.embeddings.position_embedding.weight"].shape[0]
    out["text_model.embeddings.position_ids"] = torch.arange(n_pos, dtype=torch.int64)[None]
    return out


def openclip_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` state dict to OpenCLIP's
    text-tower keys (``token_embedding``, ``positional_embedding``, ``transformer.resblocks``,
    ``ln_final``, ``text_projection``). Without a projection an identity is written, as the
    SD2 checkpoints carry one that diffusers reads for its shape only."""
    sd = _clip_keys(sd)
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
    }
    hidden = out["ln_final.weight"].shape[0]
    proj = sd.get("text_projection.weight")
    out["text_projection"] = proj.T.contiguous() if proj is not None else torch.eye(hidden)
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


def _prefixed(prefix: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def original_state_dict(pipe: Any, layout: str = "sd1") -> dict[str, torch.Tensor]:
    """Return ``pipe``'s weights as one state dict in the original layout ``layout``
    (``sd1``, ``sd2``, ``sd2-sgm`` or ``sdxl``)."""
    out = _prefixed(
        "model.diffusion_model.", unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    )
    out |= _prefixed("first_stage_model.", vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    te = pipe.text_encoder.state_dict()
    if layout == "sd1":
        out |= _prefixed("cond_stage_model.transformer.", clip_to_original(te))
    elif layout == "sd2":
        out |= _prefixed("cond_stage_model.model.", openclip_to_original(te))
    elif layout == "sd2-sgm":
        out |= _prefixed("conditioner.embedders.0.model.", openclip_to_original(te))
    elif layout == "sdxl":
        out |= _prefixed("conditioner.embedders.0.transformer.", clip_to_original(te))
        te2 = pipe.text_encoder_2.state_dict()
        out |= _prefixed("conditioner.embedders.1.model.", openclip_to_original(te2))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return out


def write_original_layout(
    pipe: Any,
    path: Path,
    layout: str | None = None,
    *,
    metadata: dict[str, str] | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``pipe`` as one ``.safetensors`` file in the original SD key layout.

    ``layout`` defaults to ``sdxl`` for a pipeline with ``text_encoder_2``, else ``sd1``.
    ``extra`` tensors (e.g. a ``v_pred`` marker) and safetensors ``metadata`` are added as
    given. Returns ``path``.
    """
    if layout is None:
        layout = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"
    sd = original_state_dict(pipe, layout)
    if extra:
        sd |= dict(extra)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)
    return path
