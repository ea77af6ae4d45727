"""Tiny text encoders and merge inputs for the CLIPLoader / model merging tests.

Text encoders are made in code with random weights (seeded) and a head size of 64, as every
released CLIP text model has (the loader reads the head count off the width), then saved
in each key form shared files use: Hugging Face keys (with and without ``text_model.``),
ComfyUI's old CLIPSave ``text_projection``, OpenCLIP's text tower and a prefix left from a
checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.helpers.sd_layout import openclip_to_original


def tiny_text_encoder(
    width: int = 64,
    *,
    act: str = "quick_gelu",
    projection: bool = False,
    seed: int = 0,
    layers: int = 2,
) -> Any:
    """A ``layers``-layer CLIP text model ``width`` wide with ``width / 64`` heads, CLIP's vocabulary
    and 77 positions (``CLIPTextModelWithProjection`` when ``projection``)."""
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def hf_keys(model: Any) -> dict[str, torch.Tensor]:
    """The encoder's tensors with ``text_model.`` keys (and ``text_projection.weight``)."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key
        out[name] = value
    return out


def key_forms(model: Any) -> dict[str, dict[str, torch.Tensor]]:
    """The encoder's tensors in every key form CLIPLoader reads: form name -> state dict."""
    hf = hf_keys(model)
    bare = {k.removeprefix("text_model."): v for k, v in hf.items()}
    forms = {
        "hf": hf,
        "bare": bare,
        "openclip": openclip_to_original(hf),
        "checkpoint-prefix": {f"cond_stage_model.transformer.{k}": v for k, v in hf.items()},
    }
    if "text_projection.weight" in hf:
        old = {k: v for k, v in hf.items() if k != "text_projection.weight"}
        old["text_projection"] = hf["text_projection.weight"].T.contiguous()
        forms["clipsave-old"] = old
        forms["sgm-prefix"] = {
            f"conditioner.embedders.1.model.{k}": v for k, v in openclip_to_original(hf).items()
        }
    return forms


def save_tensors(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """``sd`` as a safetensors file at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path))
    return path


def perturbed_copy(pipe: Any, folder: Path, seed: int = 11, scale: float = 0.05) -> Path:
    """``pipe`` with seeded noise added to its UNet and text encoder, saved as a diffusers
    folder at ``folder``: a second model of the same architecture to merge with."""
    import copy

    other = copy.deepcopy(pipe)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (other.unet, other.text_encoder):
            for param in module.parameters():
                param.add_(torch.randn(param.shape, generator=gen) * scale)
    other.save_pretrained(folder, safe_serialization=True)
    return folder


def write_unet_lora(model_folder: Path, path: Path, seed: int = 3) -> Path:
    """A LoRA with non-zero random weights on the UNet's attention projections of the model
    in ``model_folder``, in diffusers' key format (``save_lora_weights``)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(model_folder, local_files_only=True)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        path.parent,
        unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        weight_name=path.name,
        safe_serialization=True,
    )
    return path
