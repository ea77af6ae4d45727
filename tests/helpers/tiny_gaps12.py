"""Writers for the original file layouts of CLIP image encoders and SD 2.1 unCLIP
checkpoints, for tests: a Hugging Face ``CLIPVisionModelWithProjection`` as OpenCLIP's
``visual.*`` tower, and a tiny unCLIP pipeline as ONE single file in the layout the
released ``sd21-unclip-h`` files have (``model.diffusion_model.*`` with ``label_emb``,
``first_stage_model.*``, ``cond_stage_model.model.*``, ``embedder.model.visual.*``,
``noise_augmentor.*``).

The visual-tower mapping here is written from OpenCLIP's module names (the inverse of what
the loader does), so the loader tests compare against the original model, not against a
second use of the loader's own table."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import save_file

from tests.helpers.sd_layout import original_state_dict


def hf_vision_to_openclip(model: Any, prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """``model``'s weights named as OpenCLIP's ``VisionTransformer`` names them under
    ``prefix``: ``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
    ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc,
    mlp.c_proj}``, ``ln_post`` and ``proj`` (``[width, embed]``)."""
    vm = model.vision_model
    out: dict[str, torch.Tensor] = {
        "class_embedding": vm.embeddings.class_embedding,
        "conv1.weight": vm.embeddings.patch_embedding.weight,
        "positional_embedding": vm.embeddings.position_embedding.weight,
        "ln_pre.weight": vm.pre_layrnorm.weight,
        "ln_pre.bias": vm.pre_layrnorm.bias,
        "ln_post.weight": vm.post_layernorm.weight,
        "ln_post.bias": vm.post_layernorm.bias,
        "proj": model.visual_projection.weight.t(),
    }
    for i, layer in enumerate(vm.encoder.layers):
        att = layer.self_attn
        block = f"transformer.resblocks.{i}."
        out[block + "attn.in_proj_weight"] = torch.cat(
            [att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]
        )
        out[block + "attn.in_proj_bias"] = torch.cat(
            [att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]
        )
        for ours, theirs in (
            ("attn.out_proj", att.out_proj),
            ("ln_1", layer.layer_norm1),
            ("ln_2", layer.layer_norm2),
            ("mlp.c_fc", layer.mlp.fc1),
            ("mlp.c_proj", layer.mlp.fc2),
        ):
            out[block + ours + ".weight"] = theirs.weight
            out[block + ours + ".bias"] = theirs.bias
    return {prefix + k: v.detach().contiguous().clone() for k, v in out.items()}


def save_openclip_vision_file(model: Any, path: Path, extra: dict | None = None) -> Path:
    """The encoder as one safetensors file in OpenCLIP's layout (``visual.*``), with
    ``extra`` tensors (e.g. a text tower's keys, which the loader must ignore)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(hf_vision_to_openclip(model) | dict(extra or {}), str(path))
    return path


def unclip_original_state_dict(pipe: Any, with_stats: bool = True) -> dict[str, torch.Tensor]:
    """A ``StableUnCLIPImg2ImgPipeline`` in the released single-file layout: the SD2 parts
    (the UNet's ``class_embedding`` as ``label_emb.0.0`` / ``label_emb.0.2``), the image
    encoder under ``embedder.model.visual.`` plus the text-tower leftovers the released
    files carry (``embedder.model.logit_scale``...), the noise augmentor's schedule
    buffers and, with ``with_stats``, its ``data_mean`` / ``data_std``."""
    unet_sd = {}
    for key, value in pipe.unet.state_dict().items():
        if key.startswith("class_embedding."):
            # SD2's label_emb is the same two-layer MLP SDXL's add_embedding writes as.
            key = "add_embedding." + key[len("class_embedding.") :]
        unet_sd[key] = value
    unet = SimpleNamespace(state_dict=lambda: unet_sd, config=pipe.unet.config)
    parts = SimpleNamespace(unet=unet, vae=pipe.vae, text_encoder=pipe.text_encoder)
    sd = original_state_dict(parts, "sd2")
    sd |= hf_vision_to_openclip(pipe.image_encoder, "embedder.model.visual.")
    sd["embedder.model.logit_scale"] = torch.tensor(4.6)
    sched = pipe.image_noising_scheduler
    betas = sched.betas.float()
    abar = sched.alphas_cumprod.float()
    sd |= {
        "noise_augmentor.betas": betas,
        "noise_augmentor.alphas_cumprod": abar,
        "noise_augmentor.alphas_cumprod_prev": torch.cat([torch.ones(1), abar[:-1]]),
        "noise_augmentor.sqrt_alphas_cumprod": abar.sqrt(),
        "noise_augmentor.sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
        "noise_augmentor.log_one_minus_alphas_cumprod": (1 - abar).log(),
        "noise_augmentor.sqrt_recip_alphas_cumprod": abar.rsqrt(),
        "noise_augmentor.sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(),
    }
    if with_stats:
        sd["noise_augmentor.data_mean"] = pipe.image_normalizer.mean.detach()
        sd["noise_augmentor.data_std"] = pipe.image_normalizer.std.detach()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def write_unclip_single_file(
    pipe: Any, path: Path, *, with_stats: bool = True, metadata: dict | None = None
) -> Path:
    """:func:`unclip_original_state_dict` as one ``.safetensors`` file (v-prediction said in
    the metadata, as the tiny pipeline is; the weight statistic of random weights would not
    tell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"modelspec.prediction_type": "v"} | dict(metadata or {})
    save_file(unclip_original_state_dict(pipe, with_stats), str(path), metadata=meta)
    return path


def sd2_configs_only(pipe: Any, folder: Path) -> Path:
    """The SD2 parts of an unCLIP pipeline as a diffusers config folder without weights or
    vocabulary (what a ``<stem>.config/`` companion of a non-stock checkpoint holds), its
    UNet config a plain SD2 one (no class embedding), as the shipped ``sd2-v`` folder's is."""
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    plain.save_pretrained(folder)
    for f in list(folder.rglob("*")):
        if f.suffix in {".safetensors", ".bin"} or f.name in {
            "vocab.json",
            "merges.txt",
            "tokenizer.json",
        }:
            f.unlink()
    unet_config = folder / "unet" / "config.json"
    config = json.loads(unet_config.read_text())
    config.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
    unet_config.write_text(json.dumps(config))
    return folder
