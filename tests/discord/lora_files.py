"""A real small LoRA for the tiny model, made with peft as shared/NOTES.md describes."""

from __future__ import annotations

import tempfile
from pathlib import Path

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def tiny_lora_bytes(cache_folder: Path, seed: int = 1) -> bytes:
    """The bytes of a ``.safetensors`` LoRA (diffusers keys, r=4, non-zero weights)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from runner.models.tiny import tiny_model_dir

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model_dir(cache_folder), local_files_only=True
    )
    torch.manual_seed(seed)
    # The default init makes lora_B zero (a no-op); init_lora_weights=False changes images.
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=UNET_TARGETS)
    )
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=TEXT_TARGETS),
        pipe.text_encoder,
    )
    with tempfile.TemporaryDirectory() as folder:
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
            weight_name="lora.safetensors",
            safe_serialization=True,
        )
        return (Path(folder) / "lora.safetensors").read_bytes()
