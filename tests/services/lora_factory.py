"""Makers of LoRA files for tests: real ones trained-from-nothing with peft for the
built-in tiny model (diffusers and kohya keys), tiny fakes with the key names and shapes
of real SD1, SD2 and SDXL LoRAs, and hand-made broken safetensors files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


# ------------------------------------------------------------------- real LoRA files


def peft_lora_files(cache_folder: Path, out: Path) -> dict[str, Path]:
    """LoRAs for the built-in tiny model, saved by diffusers: ``style`` and ``other``
    (different weights) in diffusers/peft keys, ``style_kohya`` (``style`` converted to
    kohya/A1111 keys)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import load_file, save_file

    from runner.models.tiny import build_tiny_pipeline
    from runner.models.tokenizer import clip_tokenizer_dir

    tokenizer_dir = clip_tokenizer_dir(cache_folder)
    files = {}
    for name, seed in (("style", 1), ("other", 2)):
        pipe = build_tiny_pipeline(tokenizer_dir)
        torch.manual_seed(seed)
        # init_lora_weights=False: the default init is a no-op that would not change images.
        inject_adapter_in_model(
            LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=UNET_TARGETS),
            pipe.unet,
        )
        inject_adapter_in_model(
            LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=TEXT_TARGETS),
            pipe.text_encoder,
        )
        StableDiffusionPipeline.save_lora_weights(
            out,
            unet_lora_layers=get_peft_model_state_dict(pipe.unet),
            text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
            weight_name=f"{name}.safetensors",
            safe_serialization=True,
        )
        files[name] = out / f"{name}.safetensors"
    kohya = convert_state_dict_to_kohya(load_file(files["style"]))
    # kohya's scripts and A1111 name an SD1 text encoder lora_te_text_model_*.
    kohya = {k.replace("lora_te1_", "lora_te_text_model_"): v for k, v in kohya.items()}
    files["style_kohya"] = out / "style_kohya.safetensors"
    save_file(kohya, files["style_kohya"])
    return files


# ------------------------------------------------------------------- fake LoRA files

_WIDTHS = {
    "sd1": {"context": 768, "te": 768},
    "sd2": {"context": 1024, "te": 1024},
    "sdxl": {"context": 2048, "te": 768, "te2": 1280},
}


def safetensors_bytes(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> bytes:
    """A safetensors file's bytes (via the safetensors library)."""
    from safetensors.numpy import save

    return save(tensors, metadata=metadata)


def fake_lora(
    family: str, key_format: str = "diffusers", *, rank: int = 1, text: bool = True
) -> bytes:
    """A tiny LoRA with the key names and shapes of a real ``family`` LoRA: one UNet
    cross-attention ``to_k`` module and (``text``) one text encoder ``q_proj`` (two for
    SDXL). Rank 1, float16: a few kilobytes."""
    widths = _WIDTHS[family]
    tensors: dict[str, np.ndarray] = {}

    def pair(prefix: str, down_suffix: str, up_suffix: str, width_in: int, width_out: int) -> None:
        tensors[prefix + down_suffix] = np.zeros((rank, width_in), np.float16)
        tensors[prefix + up_suffix] = np.zeros((width_out, rank), np.float16)

    if key_format == "diffusers":
        down, up = ".lora_A.weight", ".lora_B.weight"
        unet = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
        pair(unet, down, up, widths["context"], 640)
        if text:
            pair(
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                down,
                up,
                widths["te"],
                widths["te"],
            )
            if "te2" in widths:
                pair(
                    "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj",
                    down,
                    up,
                    widths["te2"],
                    widths["te2"],
                )
    else:
        down, up = ".lora_down.weight", ".lora_up.weight"
        block = "input_blocks_4_1" if family == "sdxl" else "down_blocks_1_attentions_0"
        unet = f"lora_unet_{block}_transformer_blocks_0_attn2_to_k"
        pair(unet, down, up, widths["context"], 640)
        tensors[unet + ".alpha"] = np.array(float(rank), np.float16)
        if text:
            te = "lora_te1_" if family == "sdxl" else "lora_te_"
            module = f"{te}text_model_encoder_layers_0_self_attn_q_proj"
            pair(module, down, up, widths["te"], widths["te"])
            tensors[module + ".alpha"] = np.array(float(rank), np.float16)
            if "te2" in widths:
                module = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
                pair(module, down, up, widths["te2"], widths["te2"])
    return safetensors_bytes(tensors)


def raw_safetensors(header: bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A hand-made file: an 8-byte length (``length`` or the header's), the header, data."""
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def files_under(folder: Path) -> list[Path]:
    """Every file (not folder) under ``folder``, hidden ones included."""
    return (
        sorted(p for p in Path(folder).rglob("*") if p.is_file()) if Path(folder).exists() else []
    )
