"""ComfyUI's nodes for the model kinds that feed the conditioning model: CLIP vision
(CLIPVisionLoader, CLIPVisionEncode), unCLIP (unCLIPCheckpointLoader, unCLIPConditioning),
T2I style adapters (StyleModelLoader, StyleModelApply), hypernetworks
(HypernetworkLoader) and GLIGEN boxes (GLIGENLoader, GLIGENTextBoxApply).

The models are in :mod:`runner.models.clip_vision`, :mod:`runner.models.style_models`,
:mod:`runner.models.hypernetworks` and :mod:`runner.models.gligen`; the sampling loop reads
what these nodes attach to a CONDITIONING entry (``extra["unclip"]``, ``extra["gligen"]``)
or to a MODEL (``patches``).
"""

from __future__ import annotations

import dataclasses

import torch

from runner import (
    ClipHandle,
    Conditioning,
    Input,
    ModelHandle,
    NodeContext,
    VaeHandle,
    hookimpl,
    node,
)
from runner import types as T
from runner.models import clip_vision, gligen, hypernetworks, style_models

MAX_RESOLUTION = 16384


def _checker(resolve):
    def check(name: str, env) -> str | None:
        try:
            resolve(env.models, name)
        except Exception as exc:
            return str(exc)
        return None

    return check


def _stamp(resolve, input_name: str):
    def changed(ctx: NodeContext, **literals) -> str:
        path = resolve(ctx.env.models, literals[input_name])
        probe = path / "config.json" if path.is_dir() else path
        stat = probe.stat()
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"

    return changed


# -- CLIP vision -------------------------------------------------------------------------------


@node(
    "CLIPVisionLoader",
    inputs=[
        Input(
            "clip_name",
            T.COMBO,
            choices=lambda env: clip_vision.clip_vision_names(env.models),
            check=_checker(clip_vision.clip_vision_path),
        )
    ],
    outputs=(T.CLIP_VISION,),
    output_names=("CLIP_VISION",),
    category="loaders",
    is_changed=_stamp(clip_vision.clip_vision_path, "clip_name"),
)
def clip_vision_loader(ctx: NodeContext, clip_name: str):
    """Loads a CLIP image encoder from models/clip_vision (one file in Hugging Face's or
    OpenCLIP's key layout, or a folder with config.json)."""
    return (clip_vision.load_named(ctx.env.models, clip_name),)


@node(
    "CLIPVisionEncode",
    inputs=[
        Input("clip_vision", T.CLIP_VISION),
        Input("image", T.IMAGE),
        Input("crop", T.COMBO, choices=("center", "none")),
    ],
    outputs=(T.CLIP_VISION_OUTPUT,),
    output_names=("CLIP_VISION_OUTPUT",),
    category="conditioning",
)
def clip_vision_encode(ctx: NodeContext, clip_vision, image, crop: str):
    """Encodes images with a CLIP image encoder: resized (and centre-cropped with
    crop=center) to its input size, normalised with CLIP's mean and std."""
    return (clip_vision.encode(image, crop=crop == "center"),)


# -- unCLIP -----------------------------------------------------------------------------------


@node(
    "unCLIPCheckpointLoader",
    inputs=[
        Input(
            "ckpt_name",
            T.COMBO,
            choices=lambda env: env.models.checkpoint_names(),
            check=lambda name, env: env.models.check_checkpoint_name(name),
        )
    ],
    outputs=(T.MODEL, T.CLIP, T.VAE, T.CLIP_VISION),
    output_names=("MODEL", "CLIP", "VAE", "CLIP_VISION"),
    category="loaders",
)
def unclip_checkpoint_loader(ctx: NodeContext, ckpt_name: str):
    """Loads an unCLIP checkpoint (Stable Diffusion 2.1 unCLIP: a single file such as
    sd21-unclip-h.safetensors, or a diffusers folder with an image_encoder) and gives its
    model, text encoder, VAE and CLIP image encoder."""
    checkpoint = ctx.env.models.checkpoint(ckpt_name)
    if getattr(checkpoint.pipe, "image_encoder", None) is None:
        raise ValueError(
            f"{ckpt_name!r} is not an unCLIP checkpoint: it has no CLIP image encoder "
            "(use CheckpointLoaderSimple for it, and CLIPVisionLoader for an encoder)"
        )
    return (
        ModelHandle(checkpoint),
        ClipHandle(checkpoint),
        VaeHandle(checkpoint),
        clip_vision.ClipVisionHandle(checkpoint),
    )


@node(
    "unCLIPConditioning",
    inputs=[
        Input("conditioning", T.CONDITIONING),
        Input("clip_vision_output", T.CLIP_VISION_OUTPUT),
        Input("strength", T.FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01),
        Input("noise_augmentation", T.FLOAT, default=0.0, min=0.0, max=1.0, step=0.01),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def unclip_conditioning(
    ctx: NodeContext,
    conditioning: Conditioning,
    clip_vision_output,
    strength: float,
    noise_augmentation: float,
):
    """Adds an image's CLIP embeds to every entry, for an unCLIP model (its class labels,
    noise-augmented; several unCLIPConditioning nodes add up). Strength 0 changes nothing."""
    if strength == 0:
        return (conditioning,)
    item = (clip_vision_output, float(strength), float(noise_augmentation))

    def add(entry):
        previous = tuple(entry.extra.get("unclip", ()))
        return entry.replace(extra={**entry.extra, "unclip": (*previous, item)})

    return (conditioning.map(add),)


# -- style models -----------------------------------------------------------------------------


@node(
    "StyleModelLoader",
    inputs=[
        Input(
            "style_model_name",
            T.COMBO,
            choices=lambda env: style_models.style_model_names(env.models),
            check=_checker(style_models.style_model_path),
        )
    ],
    outputs=(T.STYLE_MODEL,),
    output_names=("STYLE_MODEL",),
    category="loaders",
    is_changed=_stamp(style_models.style_model_path, "style_model_name"),
)
def style_model_loader(ctx: NodeContext, style_model_name: str):
    """Loads a T2I-Adapter style model from models/style_models."""
    return (style_models.load_named(ctx.env.models, style_model_name),)


@node(
    "StyleModelApply",
    inputs=[
        Input("conditioning", T.CONDITIONING),
        Input("style_model", T.STYLE_MODEL),
        Input("clip_vision_output", T.CLIP_VISION_OUTPUT),
        Input("strength", T.FLOAT, default=1.0, min=0.0, max=10.0, step=0.001),
        Input("strength_type", T.COMBO, choices=("multiply", "attn_bias")),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning/style_model",
)
def style_model_apply(
    ctx: NodeContext,
    conditioning: Conditioning,
    style_model,
    clip_vision_output,
    strength: float,
    strength_type: str,
):
    """Appends the style model's tokens for the images (every image's, in order) to each
    entry's prompt tokens; strength_type multiply scales the tokens by strength."""
    tokens = style_model.get_cond(clip_vision_output)
    tokens = tokens.reshape(1, -1, tokens.shape[-1])
    if strength_type == "multiply":
        tokens = tokens * strength
    elif strength != 1.0:
        raise ValueError(
            f"strength_type attn_bias with strength {strength:g} needs an attention bias on the "
            "style tokens, which easel's sampler does not apply yet; use strength_type "
            "multiply (or strength 1)"
        )

    def add(entry):
        embeds = entry.embeds
        if embeds.shape[-1] != tokens.shape[-1]:
            raise ValueError(
                f"the style model gives {tokens.shape[-1]}-wide tokens but the prompt's are "
                f"{embeds.shape[-1]} wide: the style model does not fit this model"
            )
        style = tokens.to(embeds.dtype).expand(embeds.shape[0], -1, -1)
        return entry.replace(embeds=torch.cat([embeds, style], 1))

    return (conditioning.map(add),)


# -- hypernetworks ----------------------------------------------------------------------------


@node(
    "HypernetworkLoader",
    inputs=[
        Input("model", T.MODEL),
        Input(
            "hypernetwork_name",
            T.COMBO,
            choices=lambda env: hypernetworks.hypernetwork_names(env.models),
            check=_checker(hypernetworks.hypernetwork_path),
        ),
        Input("strength", T.FLOAT, default=1.0, min=-10.0, max=10.0, step=0.01),
    ],
    outputs=(T.MODEL,),
    category="loaders",
    is_changed=_stamp(hypernetworks.hypernetwork_path, "hypernetwork_name"),
)
def hypernetwork_loader(ctx: NodeContext, model: ModelHandle, hypernetwork_name: str, strength):
    """Applies an A1111 hypernetwork (models/hypernetworks, .pt or .safetensors) to the
    model's attention layers while it samples."""
    network = hypernetworks.load_named(ctx.env.models, hypernetwork_name)
    patch = hypernetworks.HypernetworkPatch(network, float(strength), hypernetwork_name)
    return (dataclasses.replace(model, patches=(*model.patches, patch)),)


# -- GLIGEN -----------------------------------------------------------------------------------


@node(
    "GLIGENLoader",
    inputs=[
        Input(
            "gligen_name",
            T.COMBO,
            choices=lambda env: gligen.gligen_names(env.models),
            check=_checker(gligen.gligen_path),
        )
    ],
    outputs=(T.GLIGEN,),
    output_names=("GLIGEN",),
    category="loaders",
    is_changed=_stamp(gligen.gligen_path, "gligen_name"),
)
def gligen_loader(ctx: NodeContext, gligen_name: str):
    """Loads a GLIGEN text-box model from models/gligen."""
    return (gligen.load_named(ctx.env.models, gligen_name),)


def phrase_embedding(clip: ClipHandle, text: str) -> torch.Tensor:
    """The phrase's unprojected pooled text embedding ``[width]`` (the final-layer-normed
    end-of-text token), what GLIGEN's position net takes."""
    ckpt = clip.checkpoint
    pipe = ckpt.pipe
    with ckpt.lock, torch.inference_mode():
        ckpt.activate_loras(unet=(), text_encoder=clip.loras)
        ids = pipe.tokenizer(
            text,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(ckpt.device)
        out = pipe.text_encoder(ids, return_dict=True)
    return out.pooler_output[0].float().cpu()


@node(
    "GLIGENTextBoxApply",
    inputs=[
        Input("conditioning_to", T.CONDITIONING),
        Input("clip", T.CLIP),
        Input("gligen_textbox_model", T.GLIGEN),
        Input("text", T.STRING, multiline=True),
        Input("width", T.INT, default=64, min=8, max=MAX_RESOLUTION, step=8),
        Input("height", T.INT, default=64, min=8, max=MAX_RESOLUTION, step=8),
        Input("x", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
        Input("y", T.INT, default=0, min=0, max=MAX_RESOLUTION, step=8),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning/gligen",
)
def gligen_textbox_apply(
    ctx: NodeContext,
    conditioning_to: Conditioning,
    clip: ClipHandle,
    gligen_textbox_model,
    text: str,
    width: int,
    height: int,
    x: int,
    y: int,
):
    """Adds a box (pixels) with a phrase to every entry: GLIGEN steers the phrase into the
    box. Several GLIGENTextBoxApply nodes add boxes (up to 30)."""
    if clip.checkpoint.is_xl:
        raise ValueError("GLIGEN text boxes are for SD1-family models; this CLIP is SDXL's")
    pooled = phrase_embedding(clip, text)
    model = gligen_textbox_model.model
    if pooled.shape[-1] != model.key_dim:
        raise ValueError(
            f"the GLIGEN model takes {model.key_dim}-wide phrase embeddings but this CLIP "
            f"gives {pooled.shape[-1]}: it was made for another text encoder"
        )
    box = (pooled, height // 8, width // 8, y // 8, x // 8)

    def add(entry):
        previous = entry.extra.get("gligen")
        boxes = previous.boxes if previous is not None and previous.model is model else ()
        spec = gligen.GligenBoxes(model, (*boxes, box))
        return entry.replace(extra={**entry.extra, "gligen": spec})

    return (conditioning_to.map(add),)


@hookimpl
def easel_node_types():
    """ComfyUI's CLIP vision, unCLIP, style model, hypernetwork and GLIGEN nodes."""
    return [
        clip_vision_loader,
        clip_vision_encode,
        unclip_checkpoint_loader,
        unclip_conditioning,
        style_model_loader,
        style_model_apply,
        hypernetwork_loader,
        gligen_loader,
        gligen_textbox_apply,
    ]
