"""Tiny models and files for the conditioning tests: an SDXL refiner pipeline (OpenCLIP-G
only, a UNet with aesthetic-score time ids) and textual-inversion embedding files."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextModelWithProjection

from tests.helpers.tiny import _scheduler, _text_config, _tokenizer, _vae

G_WIDTH = 64
"""The tiny SDXL's (and refiner's) OpenCLIP-G width; its CLIP-L is 32 wide."""


def make_tiny_sdxl_refiner_pipeline(tokenizer_dir: Path) -> StableDiffusionXLImg2ImgPipeline:
    """A tiny SDXL refiner: only the second text encoder (64 wide, projection 64) and a UNet
    whose added time ids are 5 (height, width, crop_h, crop_w, aesthetic score)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=5 * 8 + G_WIDTH,
        cross_attention_dim=G_WIDTH,
    )
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(G_WIDTH, act="gelu"))
    return StableDiffusionXLImg2ImgPipeline(
        vae=_vae(),
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=_tokenizer(tokenizer_dir, pad_token="!"),
        unet=unet,
        scheduler=_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def random_vectors(rows: int, width: int, seed: int) -> torch.Tensor:
    """``[rows, width]`` random vectors of a scale like token embeddings'."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=generator) * 0.02


def write_sd1_embedding(path: Path, vectors: torch.Tensor) -> Path:
    """An SD1 embedding file: one tensor ``[n, width]`` (the ``emb_params`` key that
    kohya / A1111 write in safetensors), or A1111's ``.pt`` dict when ``path`` ends in .pt."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save(
            {
                "string_to_token": {"*": 265},
                "string_to_param": {"*": vectors.clone()},
                "name": path.stem,
                "step": 1000,
            },
            path,
        )
    else:
        save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def write_sdxl_embedding(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    """An SDXL embedding file: ``clip_l`` and ``clip_g`` tensors."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path


def write_callable_pickle(path: Path) -> Path:
    """A ``.pt`` file whose pickle calls a function when loaded (must be refused)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"string_to_param": {"*": Evil()}}, protocol=2))
    return path
