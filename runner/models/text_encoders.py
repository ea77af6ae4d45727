"""Standalone CLIP text encoders (ComfyUI's ``models/text_encoders``, formerly ``models/clip``),
for CLIPLoader and DualCLIPLoader.

**Key forms read** (:func:`to_hf_keys`), as they appear in shared files and as ComfyUI's
``comfy/sd.py`` ``load_text_encoder_state_dicts`` accepts them:

- Hugging Face ``CLIPTextModel`` keys, ``text_model.embeddings.token_embedding.weight``...
  (``clip_l.safetensors``, ``clip_g.safetensors``; with ``text_projection.weight`` for
  OpenCLIP-G), or without the ``text_model.`` prefix (transformers 5's own saves);
- the old CLIPSave form: ``text_projection`` as a bare matrix ``[width, projection]``;
- OpenCLIP's text tower: ``token_embedding.weight``, ``positional_embedding``,
  ``transformer.resblocks.N.attn.in_proj_weight`` (q, k, v fused), ``ln_final``,
  ``text_projection``;
- any of these under a prefix, as when an encoder is cut out of a checkpoint
  (``cond_stage_model.transformer.``, ``conditioner.embedders.1.model.``, ``clip_l.``...).

**Which encoder** (:func:`encoder_kind`): ComfyUI's rule on the layer count (a 31st layer:
OpenCLIP ViT-bigG, SDXL's second encoder; a 23rd: OpenCLIP ViT-H, SD2's; else CLIP ViT-L,
SD1's and SDXL's first). A file with fewer layers than ViT-H (small test or distilled
encoders) is ViT-L in the Hugging Face form and ViT-H in the OpenCLIP form, which only
OpenCLIP models are saved in. CLIP ViT-L uses quick GELU; the OpenCLIP models GELU.

**Architecture** from the shapes (width, layers, MLP width, vocabulary, positions,
projection); the head count is not in any shape: width / 64 (the head size of every
released CLIP text model), at least 1.

**What is built** (:func:`build_text_encoder_pipe`): a diffusers pipeline without UNet and
VAE around the encoder(s) and easel's CLIP tokenizer (:mod:`runner.models.tokenizer`), so
CLIPTextEncode and the other prompt nodes use it exactly as a checkpoint's own:
CLIP-L -> ``sd1``; ViT-H -> ``sd2`` (``!`` padding); CLIP-L + bigG (DualCLIPLoader
``sdxl``) -> ``sdxl``; bigG alone -> the SDXL refiner's encoder, as ComfyUI loads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import ModelError

CLIP_LOADER_TYPES: tuple[str, ...] = (
    "stable_diffusion",
    "stable_cascade",
    "sd3",
    "stable_audio",
    "mochi",
    "ltxv",
    "pixart",
    "cosmos",
    "lumina2",
    "wan",
    "hidream",
    "chroma",
    "ace",
    "omnigen2",
    "qwen_image",
    "hunyuan_image",
    "flux2",
    "ovis",
    "longcat_image",
    "cogvideox",
    "lens",
    "pixeldit",
    "ideogram4",
    "boogu",
    "krea2",
    "joyimage",
    "mage",
    "minimax",
    "yue2",
)
"""CLIPLoader's ``type`` choices, as ComfyUI's ``nodes.py`` lists them."""

DUAL_CLIP_LOADER_TYPES: tuple[str, ...] = (
    "sdxl",
    "sd3",
    "flux",
    "hunyuan_video",
    "hidream",
    "hunyuan_image",
    "hunyuan_video_15",
    "kandinsky5",
    "kandinsky5_image",
    "ltxv",
    "newbie",
    "ace",
)
"""DualCLIPLoader's ``type`` choices, as ComfyUI's ``nodes.py`` lists them."""

SUPPORTED_SINGLE = ("stable_diffusion",)
SUPPORTED_DUAL = ("sdxl",)

CLIP_L, CLIP_H, CLIP_G = "clip_l", "clip_h", "clip_g"
_NAMES = {CLIP_L: "CLIP ViT-L", CLIP_H: "OpenCLIP ViT-H", CLIP_G: "OpenCLIP ViT-bigG"}
_HEAD_SIZE = 64
_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.")
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def check_type(type_: str, supported: tuple[str, ...], choices: tuple[str, ...], node: str) -> None:
    """ValueError naming ``type_`` unless it is one easel loads (see the module docstring)."""
    if type_ not in choices:
        raise ValueError(f"{node} type {type_!r} is not one of ComfyUI's: {', '.join(choices)}")
    if type_ not in supported:
        raise ValueError(
            f"{node} type {type_!r} is not supported: easel loads Stable Diffusion text "
            f"encoders only (CLIPLoader type stable_diffusion for an SD1 CLIP-L, SD2 "
            f"OpenCLIP-H or SDXL refiner OpenCLIP-G file; DualCLIPLoader type sdxl for "
            f"SDXL's CLIP-L + OpenCLIP-G pair)"
        )


def _split_prefix(sd: Mapping[str, Any], source: str) -> tuple[str, str]:
    """``(prefix, form)`` of the one text encoder in ``sd``: form ``hf`` (``text_model.``
    keys), ``bare`` (Hugging Face keys without ``text_model.``) or ``openclip``."""
    found = []
    for key in sd:
        if key.endswith("text_model.embeddings.token_embedding.weight"):
            found.append((key[: -len("text_model.embeddings.token_embedding.weight")], "hf"))
        elif key.endswith("embeddings.token_embedding.weight"):
            found.append((key[: -len("embeddings.token_embedding.weight")], "bare"))
        elif key.endswith("token_embedding.weight"):
            found.append((key[: -len("token_embedding.weight")], "openclip"))
    if not found:
        sample = ", ".join(sorted(sd)[:3]) or "none"
        raise ModelError(
            f"{source}: not a CLIP text encoder (no token_embedding.weight in any of its "
            f"{len(sd)} tensors; first keys: {sample}). easel's CLIPLoader reads CLIP and "
            f"OpenCLIP text encoders; T5 and other language models are not supported"
        )
    if len(found) > 1:
        prefixes = ", ".join(repr(p) for p, _ in found)
        raise ModelError(
            f"{source}: holds {len(found)} text encoders (under {prefixes}); give each "
            f"encoder its own file (or load the whole checkpoint with CheckpointLoaderSimple)"
        )
    return found[0]


def to_hf_keys(sd: Mapping[str, Any], source: str = "<text encoder>") -> tuple[dict, str]:
    """``(state dict, form)``: a text encoder's tensors in Hugging Face form (``text_model.``
    keys, ``text_projection.weight`` when there is a projection), from any of the key forms
    of the module docstring; ``form`` says which it was. ``position_ids`` and
    ``logit_scale`` are dropped."""
    prefix, form = _split_prefix(sd, source)
    inner = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    out: dict[str, Any] = {}
    if form == "openclip":
        out["text_model.embeddings.token_embedding.weight"] = inner["token_embedding.weight"]
        out["text_model.embeddings.position_embedding.weight"] = inner["positional_embedding"]
        for kind in ("weight", "bias"):
            out[f"text_model.final_layer_norm.{kind}"] = inner[f"ln_final.{kind}"]
        if "text_projection" in inner:
            out["text_projection.weight"] = inner["text_projection"].T.contiguous()
        for key, value in inner.items():
            m = _RESBLOCK.fullmatch(key)
            if not m:
                continue
            dst = f"text_model.encoder.layers.{m[1]}."
            rest = m[2]
            if rest.startswith("attn.in_proj_"):
                kind = rest.removeprefix("attn.in_proj_")
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{dst}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            module, _, kind = rest.rpartition(".")
            if module not in _OPENCLIP_LAYER:
                raise ModelError(f"{source}: unexpected OpenCLIP key {prefix + key!r}")
            out[f"{dst}{_OPENCLIP_LAYER[module]}.{kind}"] = value
        return out, form
    for key, value in inner.items():
        if key.endswith("position_ids") or key.endswith("logit_scale"):
            continue
        if key == "text_projection":  # ComfyUI's old CLIPSave: the bare matrix
            out["text_projection.weight"] = value.T.contiguous()
        elif key == "text_projection.weight" or key.startswith("text_model."):
            out[key] = value
        elif form == "bare":
            out["text_model." + key] = value
    return out, form


def _layers(sd: Mapping[str, Any]) -> int:
    return 1 + max((int(m[1]) for k in sd if (m := _LAYER.match(k))), default=-1)


def encoder_kind(sd: Mapping[str, Any], form: str) -> str:
    """``clip_l``, ``clip_h`` or ``clip_g`` for a Hugging Face-form state dict (the rule of
    the module docstring)."""
    layers = _layers(sd)
    if layers >= 31:
        return CLIP_G
    if layers >= 23:
        return CLIP_H
    return CLIP_H if form == "openclip" else CLIP_L


def text_config(sd: Mapping[str, Any], kind: str, source: str) -> dict[str, Any]:
    """A ``CLIPTextConfig``'s arguments read off the shapes (see the module docstring)."""
    try:
        vocab, width = sd["text_model.embeddings.token_embedding.weight"].shape
        positions = sd["text_model.embeddings.position_embedding.weight"].shape[0]
        mlp = sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise ModelError(f"{source}: the text encoder has no tensor {exc.args[0]!r}") from None
    projection = sd.get("text_projection.weight")
    return {
        "vocab_size": int(vocab),
        "hidden_size": int(width),
        "intermediate_size": int(mlp),
        "num_hidden_layers": _layers(sd),
        "num_attention_heads": max(1, int(width) // _HEAD_SIZE),
        "max_position_embeddings": int(positions),
        "hidden_act": "quick_gelu" if kind == CLIP_L else "gelu",
        "projection_dim": int(projection.shape[0]) if projection is not None else int(width),
        # eos id 2 selects the pooled token by argmax, which is the end token with CLIP's ids.
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


def build_encoder(sd: Mapping[str, Any], kind: str, *, projection: bool, source: str, dtype: Any):
    """A ``CLIPTextModel`` (or ``CLIPTextModelWithProjection`` when ``projection``) holding
    ``sd``'s tensors; ModelError naming the tensors that are missing or do not fit."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(**text_config(sd, kind, source))
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    if projection and "text_projection.weight" not in sd:
        raise ModelError(f"{source}: {_NAMES[kind]} without text_projection: no pooled output")
    with torch.device("meta"):
        model = cls(config)
    expected = model.state_dict()
    wants_prefix = any(k.startswith("text_model.") for k in expected)
    state = {}
    for key, value in sd.items():
        name = key if wants_prefix or not key.startswith("text_model.") else key[11:]
        if name in expected:
            state[name] = value
    missing = sorted(k for k in expected if k not in state and not k.endswith("position_ids"))
    if missing:
        raise ModelError(
            f"{source}: the {_NAMES[kind]} text encoder is missing {len(missing)} tensors, "
            f"e.g. {missing[:3]}"
        )
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: the tensors do not fit a CLIP text encoder: {exc}") from exc
    for name, buffer in list(model.named_buffers()):
        if buffer.device.type == "meta" and name.endswith("position_ids"):
            module = model.get_submodule(name.rpartition(".")[0])
            module.register_buffer(
                "position_ids",
                torch.arange(config.max_position_embeddings).expand((1, -1)),
                persistent=False,
            )
    return model.to(dtype or torch.float32).eval()


def read_encoder(path: Path, allow_pickle: bool) -> tuple[dict, str]:
    """``(Hugging Face-form state dict, kind)`` of the text encoder file at ``path``."""
    from runner.models.vae import read_weights

    sd, _ = read_weights(path, allow_pickle)
    hf, form = to_hf_keys(sd, str(path))
    return hf, encoder_kind(hf, form)


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    from runner.models.configs import CONFIGS_DIR

    return EulerDiscreteScheduler.from_pretrained(str(CONFIGS_DIR / "sd1" / "scheduler"))


def build_text_encoder_pipe(
    encoders: list[tuple[dict, str, str]], *, cache_dir: Path, dtype: Any
) -> tuple[Any, str]:
    """``(pipeline, family)`` around one or two encoders given as ``(state dict, kind,
    source)``: see the module docstring. Two encoders must be CLIP-L and OpenCLIP-G (in
    either order); with files too small for the layer rule, the deeper (then wider) one is
    taken as OpenCLIP-G."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from runner.models.tokenizer import EOS_TOKEN, load_clip_tokenizer

    if len(encoders) == 1:
        sd, kind, source = encoders[0]
        if kind == CLIP_G:
            second = build_encoder(sd, kind, projection=True, source=source, dtype=dtype)
            pipe = StableDiffusionXLPipeline(
                vae=None,
                text_encoder=None,
                text_encoder_2=second,
                tokenizer=None,
                tokenizer_2=load_clip_tokenizer(cache_dir, pad_token="!"),
                unet=None,
                scheduler=_scheduler(),
                add_watermarker=False,
            )
            return pipe, "sdxl"
        model = build_encoder(sd, kind, projection=False, source=source, dtype=dtype)
        pad = EOS_TOKEN if kind == CLIP_L else "!"
        pipe = StableDiffusionPipeline(
            vae=None,
            text_encoder=model,
            tokenizer=load_clip_tokenizer(cache_dir, pad_token=pad),
            unet=None,
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        return pipe, "sd1" if kind == CLIP_L else "sd2"
    if len(encoders) != 2:
        raise ModelError(f"expected one or two text encoders, got {len(encoders)}")
    first, second = _order_sdxl_pair(encoders)
    text_encoder = build_encoder(first[0], CLIP_L, projection=False, source=first[2], dtype=dtype)
    text_encoder_2 = build_encoder(
        second[0], CLIP_G, projection=True, source=second[2], dtype=dtype
    )
    pipe = StableDiffusionXLPipeline(
        vae=None,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=load_clip_tokenizer(cache_dir, pad_token=EOS_TOKEN),
        tokenizer_2=load_clip_tokenizer(cache_dir, pad_token="!"),
        unet=None,
        scheduler=_scheduler(),
        add_watermarker=False,
    )
    return pipe, "sdxl"


def _order_sdxl_pair(encoders: list[tuple[dict, str, str]]) -> tuple[tuple, tuple]:
    """``(CLIP-L, OpenCLIP-G)`` of SDXL's pair, or ModelError naming both files."""
    kinds = {kind for _, kind, _ in encoders}
    names = " and ".join(f"{source} ({_NAMES[kind]})" for _, kind, source in encoders)
    if kinds == {CLIP_L, CLIP_G}:
        a, b = encoders
        return (a, b) if a[1] == CLIP_L else (b, a)
    if any(_layers(sd) >= 23 for sd, _, _ in encoders):
        raise ModelError(
            f"DualCLIPLoader type sdxl needs SDXL's CLIP-L and OpenCLIP-G encoders; got {names}"
        )

    def size(item: tuple) -> tuple[int, int, bool]:
        sd = item[0]
        width = sd["text_model.embeddings.token_embedding.weight"].shape[1]
        return _layers(sd), int(width), "text_projection.weight" in sd

    a, b = encoders
    if size(a) == size(b):
        raise ModelError(
            f"DualCLIPLoader type sdxl: cannot tell which of {names} is OpenCLIP-G (same "
            f"depth and width)"
        )
    return (a, b) if size(a) < size(b) else (b, a)


__all__ = [
    "CLIP_LOADER_TYPES",
    "DUAL_CLIP_LOADER_TYPES",
    "SUPPORTED_DUAL",
    "SUPPORTED_SINGLE",
    "build_encoder",
    "build_text_encoder_pipe",
    "check_type",
    "encoder_kind",
    "read_encoder",
    "text_config",
    "to_hf_keys",
]
