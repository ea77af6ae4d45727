"""Tiny random-weight models of the conditioning-model kinds (made in code, seeded): a
CLIP vision encoder, an SD 2.1 unCLIP pipeline, a T2I style adapter, an A1111
hypernetwork and a GLIGEN text-box model, with writers for the file layouts the loaders
accept."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

VISION_WIDTH = 64
VISION_PROJECTION = 32
"""The tiny encoder's width and image-embed width (the tiny UNet's cross-attention is 32)."""


def _seeded_randomize(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def tiny_clip_vision(seed: int = 0, projection_dim: int = VISION_PROJECTION):
    """A CLIPVisionModelWithProjection: width 64 (one 64-wide head, width / 64 as the
    loader assumes), 2 layers, 32 px images in 8 px patches, quick GELU."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=VISION_WIDTH,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        image_size=32,
        patch_size=8,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
    )
    return CLIPVisionModelWithProjection(config).eval()


def save_clip_vision_file(model, path: Path) -> Path:
    """The encoder as one safetensors file in Hugging Face's key layout (ComfyUI's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return path


def make_tiny_unclip_pipeline(tokenizer_dir: Path):
    """A tiny StableUnCLIPImg2ImgPipeline: the tiny SD2 pipeline's parts with a UNet whose
    class embedding is a projection of ``2 * 32`` inputs (image embeds + noise-level
    embedding), the tiny CLIP vision encoder, a random image normaliser and a
    squaredcos DDPM image noising schedule (SD 2.1 unCLIP's)."""
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor

    from tests.helpers.tiny import make_tiny_sd2_pipeline

    base = make_tiny_sd2_pipeline(tokenizer_dir, prediction_type="v_prediction")
    config = {k: v for k, v in base.unet.config.items() if not k.startswith("_")}
    config.update(
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * VISION_PROJECTION,
    )
    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_config(config)
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=VISION_PROJECTION)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        normalizer.mean.copy_(torch.randn(1, VISION_PROJECTION, generator=gen) * 0.1)
        normalizer.std.copy_(torch.rand(1, VISION_PROJECTION, generator=gen) + 0.5)
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=tiny_clip_vision(seed=5),
        image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"
        ),
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        unet=unet,
        scheduler=base.scheduler,
        vae=base.vae,
    )


# -- T2I style adapter -----------------------------------------------------------------------


def tiny_style_adapter(seed: int = 0, width: int = VISION_WIDTH, context_dim: int = 32):
    """A StyleAdapter (runner.models.style_models) for the tiny encoder: 8 style tokens of
    the tiny UNet's context width, 2 transformer layers."""
    from runner.models.style_models import StyleAdapter

    torch.manual_seed(seed)
    model = StyleAdapter(width=width, context_dim=context_dim, num_head=8, n_layers=2, num_token=8)
    return _seeded_randomize(model, seed + 1)


def save_style_adapter(model, path: Path) -> Path:
    """The adapter in TencentARC's key layout (``style_embedding``, ``transformer_layes.N``
    (their spelling), ``ln_post``, ``proj``...), as one safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# -- A1111 hypernetwork ----------------------------------------------------------------------


def hypernetwork_state(
    dims=(32, 64), layers=(1, 2, 1), activation: str = "linear", seed: int = 0, **flags
) -> dict:
    """A1111's hypernetwork file content: for each context width a pair (k, v) of MLPs
    ``linear.0``, ``linear.1``... with ``layers`` as width multipliers, plus the options."""
    gen = torch.Generator().manual_seed(seed)
    out: dict = {
        "activation_func": activation,
        "is_layer_norm": flags.get("is_layer_norm", False),
        "use_dropout": False,
        "activate_output": flags.get("activate_output", False),
        "last_layer_dropout": False,
        "layer_structure": list(layers),
        "name": "tiny",
    }
    for dim in dims:
        pair = []
        for _ in range(2):
            sd = {}
            index = 0
            for a, b in zip(layers, layers[1:], strict=False):
                sd[f"linear.{index}.weight"] = (
                    torch.randn(int(dim * b), int(dim * a), generator=gen) * 0.2
                )
                sd[f"linear.{index}.bias"] = torch.randn(int(dim * b), generator=gen) * 0.2
                index += 1
                if out["is_layer_norm"]:
                    sd[f"linear.{index}.weight"] = 1 + 0.1 * torch.randn(
                        int(dim * b), generator=gen
                    )
                    sd[f"linear.{index}.bias"] = 0.1 * torch.randn(int(dim * b), generator=gen)
                    index += 1
            pair.append(sd)
        out[dim] = pair
    return out


def save_hypernetwork_pt(state: dict, path: Path) -> Path:
    """A1111's ``.pt`` (a pickle of dicts and tensors, what the restricted unpickler reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def save_hypernetwork_safetensors(state: dict, path: Path) -> Path:
    """The same content as safetensors: ``<dim>.<0|1>.linear.N.weight`` keys, the options
    in the metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, meta = {}, {}
    for key, value in state.items():
        if isinstance(key, int):
            for i, sd in enumerate(value):
                for name, t in sd.items():
                    tensors[f"{key}.{i}.{name}"] = t.contiguous()
        else:
            meta[key] = str(value)
    save_file(tensors, str(path), metadata=meta)
    return path


# -- GLIGEN -----------------------------------------------------------------------------------


def gligen_state(unet, seed: int = 0, key_dim: int = 32) -> dict:
    """A GLIGEN text-box file for ``unet`` in ComfyUI's layout: ``position_net.*`` (text
    embedding + Fourier box features -> 512 -> 512 -> ``key_dim``) and one gated
    self-attention ``fuser`` per transformer block, keyed by the original UNet's block
    numbering (``input_blocks.1.1.transformer_blocks.0.fuser.*`` ...), all random (the
    gates ``alpha_attn``/``alpha_dense`` too, so the boxes have an effect)."""
    from diffusers.models.attention import BasicTransformerBlock, GatedSelfAttentionDense
    from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

    gen = torch.Generator().manual_seed(seed)

    def rand(module):
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        return module

    sd: dict = {}
    net = rand(GLIGENTextBoundingboxProjection(positive_len=key_dim, out_dim=key_dim))
    for k, v in net.state_dict().items():
        if not k.startswith("fourier"):
            sd[f"position_net.{k}"] = v
    for name, block in _ldm_block_names(unet):
        assert isinstance(block, BasicTransformerBlock)
        dim = block.norm1.normalized_shape[0]
        heads = 8 if key_dim == 768 else max(1, dim // 64)
        fuser = rand(GatedSelfAttentionDense(dim, key_dim, heads, dim // heads))
        for k, v in fuser.state_dict().items():
            sd[f"{name}.fuser.{k}"] = v
    return {k: v.contiguous() for k, v in sd.items()}


def _ldm_block_names(unet):
    """``(original key prefix, diffusers transformer block)`` for the tiny two-level UNet
    (SD's numbering: input block 1 + 3 per level, middle block 1, output blocks by 3)."""
    out = []
    index = 1
    for down in unet.down_blocks:
        for i in range(len(down.resnets)):
            if getattr(down, "attentions", None):
                for k, blk in enumerate(down.attentions[i].transformer_blocks):
                    out.append((f"input_blocks.{index}.1.transformer_blocks.{k}", blk))
            index += 1
        if down.downsamplers:
            index += 1
    for k, blk in enumerate(unet.mid_block.attentions[0].transformer_blocks):
        out.append((f"middle_block.1.transformer_blocks.{k}", blk))
    index = 0
    for up in unet.up_blocks:
        for i in range(len(up.resnets)):
            if getattr(up, "attentions", None):
                for k, blk in enumerate(up.attentions[i].transformer_blocks):
                    out.append((f"output_blocks.{index}.1.transformer_blocks.{k}", blk))
            index += 1
    return out
