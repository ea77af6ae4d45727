"""ComfyUI's prompt encoders: CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner
and CLIPSetLastLayer (the nodes that change a CONDITIONING are in ``conditioning_ops``)."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from runner import ClipHandle, Conditioning, Input, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion.prompt_encoding import encode_text, needs_custom_encoding, text_encoders
from runner.models.families import is_sdxl_refiner

MAX_RESOLUTION = 16384
_EMBEDDING_NAME = re.compile(r"embedding:([^\s<\[]+)")


@node(
    "CLIPSetLastLayer",
    inputs=[
        Input("clip", T.CLIP),
        Input("stop_at_clip_layer", T.INT, default=-1, min=-24, max=-1, step=1),
    ],
    outputs=(T.CLIP,),
    category="conditioning",
)
def clip_set_last_layer(ctx: NodeContext, clip: ClipHandle, stop_at_clip_layer: int):
    """Uses an earlier layer of the text encoder (clip skip), as ComfyUI counts layers: -1 is
    the last layer and -2 the penultimate, for SDXL too (whose default is already -2)."""
    depth = min(e.depth for e in text_encoders(clip.checkpoint.pipe))
    if -stop_at_clip_layer > depth:
        raise ValueError(
            f"stop_at_clip_layer {stop_at_clip_layer} is deeper than the text encoder of "
            f"{clip.checkpoint.name}, which has {depth} layers (use -1 to -{depth})"
        )
    return (ClipHandle(clip.checkpoint, clip.loras, stop_at_clip_layer),)


def _check_length(ctx: NodeContext, text: str, name: str = "prompt") -> None:
    limit = ctx.env.settings.max_prompt_chars
    if len(text) > limit:  # a linked text skips validation's check of literals
        raise ValueError(
            f"the {name} is {len(text)} characters long, more than the {limit} allowed "
            "(the configured limit max_prompt_chars)"
        )


def _default_layer(clip: ClipHandle) -> bool:
    """Whether the stop layer is what diffusers' ``encode_prompt`` uses."""
    layer = clip.stop_at_layer
    return layer is None or layer == (-2 if clip.checkpoint.is_xl else -1)


def encode(
    ctx: NodeContext,
    clip: ClipHandle,
    text: str,
    *,
    text_l: str | None = None,
    pad_to_match: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(embeds, pooled or None)`` of a prompt on the CLIP's checkpoint, float32 on the CPU:
    ComfyUI's weights, long prompts, ``embedding:`` names and stop layer
    (:func:`runner.diffusion.prompt_encoding.encode_text`); a plain prompt through diffusers'
    own ``encode_prompt``. Missing embeddings become warnings in the job's events."""
    ckpt = clip.checkpoint
    pipe = ckpt.pipe
    warnings: list[str] = []

    def lookup(name: str):
        return ctx.env.models.embedding(name)

    with ckpt.lock, torch.inference_mode():
        ckpt.activate_loras(unet=(), text_encoder=clip.loras)
        plain = (
            text_l is None
            and _default_layer(clip)
            and not is_sdxl_refiner(pipe)
            and not needs_custom_encoding(text, pipe.tokenizer)
        )
        if plain and ckpt.is_xl:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=text,
                prompt_2=text,
                device=ckpt.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
        elif plain:
            embeds, _ = pipe.encode_prompt(text, ckpt.device, 1, False)
            pooled = None
        else:
            embeds, pooled = encode_text(
                pipe,
                text,
                device=ckpt.device,
                stop_at_layer=clip.stop_at_layer,
                text_l=text_l,
                embeddings=lookup,
                warn=warnings.append,
                pad_to_match=pad_to_match,
            )
    for message in dict.fromkeys(warnings):
        ctx.warn(message)
    return embeds.float().cpu(), None if pooled is None else pooled.float().cpu()


def _embeddings_changed(ctx: NodeContext, **literals) -> str | None:
    """The embedding files a literal prompt names, with their sizes and times, so that
    adding or changing one encodes the prompt again."""
    names = sorted(
        {
            name.rstrip(",")
            for value in literals.values()
            if isinstance(value, str)
            for name in _EMBEDDING_NAME.findall(value)
        }
    )
    if not names:
        return None
    found = []
    for name in names:
        path = ctx.env.models.embedding_path(name)
        if path is None:
            found.append(f"{name}:-")
        else:
            stat = path.stat()
            found.append(f"{name}:{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return ";".join(found)


def _text(name: str, **kwargs) -> Input:
    return Input(name, T.STRING, multiline=True, limit="max_prompt_chars", **kwargs)


@node(
    "CLIPTextEncode",
    inputs=[_text("text"), Input("clip", T.CLIP)],
    outputs=(T.CONDITIONING,),
    category="conditioning",
    is_changed=_embeddings_changed,
)
def clip_text_encode(ctx: NodeContext, text: str, clip: ClipHandle):
    """Encodes a prompt with the checkpoint's text encoder(s); (word:1.2) emphasis, prompts over
    75 tokens and embedding:name work as in ComfyUI, plain prompts give exactly what
    diffusers' pipelines give."""
    _check_length(ctx, text)
    embeds, pooled = encode(ctx, clip, text)
    return (Conditioning(embeds, pooled),)


def _size(name: str, default: int) -> Input:
    return Input(name, T.INT, default=default, min=0, max=MAX_RESOLUTION)


@node(
    "CLIPTextEncodeSDXL",
    inputs=[
        Input("clip", T.CLIP),
        _size("width", 1024),
        _size("height", 1024),
        _size("crop_w", 0),
        _size("crop_h", 0),
        _size("target_width", 1024),
        _size("target_height", 1024),
        _text("text_g"),
        _text("text_l"),
    ],
    outputs=(T.CONDITIONING,),
    category="advanced/conditioning",
    is_changed=_embeddings_changed,
)
def clip_text_encode_sdxl(
    ctx: NodeContext,
    clip: ClipHandle,
    width: int,
    height: int,
    crop_w: int,
    crop_h: int,
    target_width: int,
    target_height: int,
    text_g: str,
    text_l: str,
):
    """SDXL's prompt with a text per encoder (text_g for OpenCLIP-G, text_l for CLIP-L; the
    shorter padded with empty chunks) and SDXL's size conditioning (original size, crop
    and target size). On SD1/SD2 only text_l is encoded, as in ComfyUI."""
    _check_length(ctx, text_g, "text_g")
    _check_length(ctx, text_l, "text_l")
    embeds, pooled = encode(ctx, clip, text_g, text_l=text_l, pad_to_match=True)
    size = (width, height, crop_w, crop_h, target_width, target_height)
    return (Conditioning(entries=[Conditioning(embeds, pooled).entries[0].replace(size=size)]),)


@node(
    "CLIPTextEncodeSDXLRefiner",
    inputs=[
        Input("ascore", T.FLOAT, default=6.0, min=0.0, max=1000.0, step=0.01),
        _size("width", 1024),
        _size("height", 1024),
        _text("text"),
        Input("clip", T.CLIP),
    ],
    outputs=(T.CONDITIONING,),
    category="advanced/conditioning",
    is_changed=_embeddings_changed,
)
def clip_text_encode_sdxl_refiner(
    ctx: NodeContext, ascore: float, width: int, height: int, text: str, clip: ClipHandle
):
    """The SDXL refiner's prompt (its one OpenCLIP-G encoder) with its conditioning on the
    aesthetic score (ascore) and the image size."""
    _check_length(ctx, text)
    embeds, pooled = encode(ctx, clip, text)
    entry = (
        Conditioning(embeds, pooled)
        .entries[0]
        .replace(size=(width, height, 0, 0, width, height), aesthetic_score=float(ascore))
    )
    return (Conditioning(entries=[entry]),)


NODE_TYPES: list[Callable] = [
    clip_set_last_layer,
    clip_text_encode,
    clip_text_encode_sdxl,
    clip_text_encode_sdxl_refiner,
]


@hookimpl
def easel_node_types():
    """ComfyUI's prompt encoders and clip skip."""
    return list(NODE_TYPES)
