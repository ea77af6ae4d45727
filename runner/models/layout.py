"""Key layouts: the tensor names of single-file checkpoints in the original Stable Diffusion
layout (CompVis / Stability, as model sites share them and ComfyUI and A1111 read them)
and of LoRA files (diffusers/peft and kohya/A1111 spellings).

=========  ===================================================================
family     checkpoint keys
=========  ===================================================================
``sd1``    ``model.diffusion_model.*``, ``first_stage_model.*``,
           ``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L)
``sd2``    as sd1, text encoder ``cond_stage_model.model.*`` (OpenCLIP ViT-H;
           ``conditioner.embedders.0.model.*`` in Stability's sgm format)
``sd2-v``  SD2 768 px v-prediction: the same keys as ``sd2``
``sdxl``   ``conditioner.embedders.0.transformer.*`` (CLIP ViT-L) and
           ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG), UNet ``label_emb``
unCLIP     an SD2 file plus the UNet's ``label_emb`` (the image-embed projection),
           the image tower ``embedder.model.visual.*`` (OpenCLIP ViT-H for
           ``sd21-unclip-h``, OpenAI CLIP ViT-L for ``-l``) and the noise augmentor's
           schedule ``noise_augmentor.*`` (``betas``, ``alphas_cumprod``...)
=========  ===================================================================

:func:`describe_other` names what a file that is not such a checkpoint is instead. The
decisions themselves live in :mod:`runner.models.families`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

UNET = "model.diffusion_model."
UNET_IN = UNET + "input_blocks.0.0.weight"
LABEL_EMB = UNET + "label_emb.0.0.weight"
SD2_V_STAT_KEY = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
VAE = "first_stage_model."
CLIP_L = "cond_stage_model.transformer."
OPEN_CLIP = "cond_stage_model.model."
SGM_0_CLIP = "conditioner.embedders.0.transformer."
SGM_0_OPEN = "conditioner.embedders.0.model."
SGM_1_OPEN = "conditioner.embedders.1.model."
CLIP_POS = "text_model.embeddings.position_embedding.weight"
UNCLIP_VISUAL = "embedder.model.visual."
NOISE_AUGMENTOR = "noise_augmentor."

LORA_KEY_IN_CHECKPOINT = re.compile(
    r"(^lora_(unet|te\d?)_)|(\.lora_(down|up|A|B|mid)\.)|(\.(hada|lokr)_w)|(^lycoris_)|(\.oft_)|(\.alpha$)"
)
"""Any LoRA / LyCORIS key (loose: used to recognise a LoRA passed as a checkpoint)."""

LORA_DIFFUSERS_KEY = re.compile(
    r"^(?P<component>unet|text_encoder|text_encoder_2)\.(?P<module>.+?)"
    r"(?:\.lora_(?P<ab>A|B)\.weight"
    r"|\.lora(?:_linear_layer)?\.(?P<du>down|up)\.weight"
    r"|_lora\.(?P<du2>down|up)\.weight"
    r"|\.(?P<alpha>alpha))$"
)
"""A LoRA key in diffusers/peft format (``unet.<module>.lora_A.weight`` and older spellings)."""

LORA_KOHYA_KEY = re.compile(
    r"^lora_(?P<component>unet|te|te1|te2)_(?P<module>\w+?)"
    r"\.(?:lora_(?P<du>down|up)\.weight|(?P<alpha>alpha))$"
)
"""A LoRA key in kohya/A1111 format (``lora_unet_<module>.lora_down.weight``)."""

LORA_KOHYA_COMPONENTS = {
    "unet": "unet",
    "te": "text_encoder",
    "te1": "text_encoder",
    "te2": "text_encoder_2",
}
"""kohya component prefixes as diffusers component names."""


def has_prefix(keys: Sequence[str], prefix: str) -> bool:
    """Whether any key starts with ``prefix``."""
    return any(k.startswith(prefix) for k in keys)


def describe_other(path_name: str, keys: Sequence[str]) -> str:
    """A sentence naming what a file without an SD checkpoint's UNet is instead."""
    keyset = set(keys)
    sample = ", ".join(repr(k) for k in sorted(keys)[:3])
    if any(LORA_KEY_IN_CHECKPOINT.search(k) for k in keys):
        return (
            f"{path_name}: this is a LoRA (or LyCORIS) file, not a checkpoint (keys like {sample}). "
            f"Put it with the LoRAs and apply it to a checkpoint instead of loading it as one"
        )
    if keyset & {"emb_params", "string_to_param", "string_to_token", "clip_l", "clip_g"}:
        return (
            f"{path_name}: this is a textual-inversion embedding, not a checkpoint (keys {sample})"
        )
    if any(k.startswith("control_model.") or k.startswith("controlnet_") for k in keys):
        return f"{path_name}: this is a ControlNet, not a text-to-image checkpoint"
    if any(
        k.startswith(p)
        for k in keys
        for p in (
            "model.diffusion_model.joint_blocks.",
            "model.diffusion_model.double_blocks.",
            "double_blocks.",
            "joint_blocks.",
        )
    ):
        return (
            f"{path_name}: this checkpoint is not Stable Diffusion 1.x, 2.x or SDXL "
            f"(it looks like SD3 or Flux, which easel does not load from single files)"
        )
    if "conv_in.weight" in keyset and any(k.startswith("down_blocks.") for k in keys):
        return (
            f"{path_name}: this is one diffusers-format component (a UNet or VAE), not a "
            f"single-file checkpoint; load the whole diffusers folder instead"
        )
    if any(k.startswith("encoder.down.") for k in keys) and any(
        k.startswith("decoder.up.") for k in keys
    ):
        return f"{path_name}: this is a VAE on its own, not a full checkpoint"
    if any(k.startswith(p) for k in keys for p in ("text_model.", "transformer.resblocks.")):
        return f"{path_name}: this is a text encoder on its own, not a full checkpoint"
    return (
        f"{path_name}: does not look like a Stable Diffusion checkpoint in the original layout: "
        f"no {UNET_IN!r} (first keys: {sample or 'none'})"
    )
