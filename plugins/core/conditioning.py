"""ComfyUI's conditioning nodes: CLIPTextEncode and CLIPSetLastLayer."""

from __future__ import annotations

import torch

from runner import ClipHandle, Conditioning, Input, NodeContext, hookimpl, node
from runner import types as T
from runner.diffusion.prompt_encoding import encode_weighted, needs_custom_encoding


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
    """Uses an earlier layer of the text encoder (clip skip): -2 is the penultimate layer."""
    pipe = clip.checkpoint.pipe
    encoders = [
        e
        for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        if e is not None
    ]
    depth = min(e.config.num_hidden_layers for e in encoders)
    if -stop_at_clip_layer > depth:
        raise ValueError(
            f"stop_at_clip_layer {stop_at_clip_layer} is deeper than the text encoder of "
            f"{clip.checkpoint.name}, which has {depth} layers (use -1 to -{depth})"
        )
    return (ClipHandle(clip.checkpoint, clip.loras, stop_at_clip_layer),)


@node(
    "CLIPTextEncode",
    inputs=[
        Input("text", T.STRING, multiline=True, limit="max_prompt_chars"),
        Input("clip", T.CLIP),
    ],
    outputs=(T.CONDITIONING,),
    category="conditioning",
)
def clip_text_encode(ctx: NodeContext, text: str, clip: ClipHandle):
    """Encodes a prompt with the checkpoint's text encoder(s); (word:1.2) emphasis and prompts over
    75 tokens work as in ComfyUI, plain prompts give exactly what diffusers' pipelines give."""
    limit = ctx.env.settings.max_prompt_chars
    if len(text) > limit:  # a linked text skips validation's check of literals
        raise ValueError(
            f"the prompt is {len(text)} characters long, more than the {limit} allowed "
            "(the configured limit max_prompt_chars)"
        )
    ckpt = clip.checkpoint
    clip_skip = None if clip.stop_at_layer == -1 else -clip.stop_at_layer - 1
    with ckpt.lock, torch.inference_mode():
        ckpt.activate_loras(unet=(), text_encoder=clip.loras)
        if clip_skip is not None or needs_custom_encoding(text, ckpt.pipe.tokenizer):
            # Emphasis weights, more than 75 tokens or clip skip (which diffusers' own
            # encode_prompt gets wrong with transformers 5): ComfyUI's chunked, weighted encoding.
            embeds, pooled = encode_weighted(
                ckpt.pipe, text, device=ckpt.device, clip_skip=clip_skip, xl=ckpt.is_xl
            )
            return (
                Conditioning(
                    embeds.float().cpu(), None if pooled is None else pooled.float().cpu()
                ),
            )
        if ckpt.is_xl:
            embeds, _, pooled, _ = ckpt.pipe.encode_prompt(
                prompt=text,
                prompt_2=text,
                device=ckpt.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
                clip_skip=clip_skip,
            )
            return (Conditioning(embeds.float().cpu(), pooled.float().cpu()),)
        embeds, _ = ckpt.pipe.encode_prompt(text, ckpt.device, 1, False, clip_skip=clip_skip)
    return (Conditioning(embeds.float().cpu()),)


@hookimpl
def easel_node_types():
    """ComfyUI's prompt encoding and clip skip."""
    return [clip_set_last_layer, clip_text_encode]
