"""The built-in ``tiny-random`` model: a deterministic, tiny SD1-architecture pipeline made
in code, for demos and tests. Its images are noise-like (the weights are random), but
every part is the real thing: a CLIP text model with the real CLIP vocabulary, a UNet with
cross-attention, an AutoencoderKL with the real scale factor 8.

It is written once as a diffusers folder (safetensors) under the cache folder and loaded
through the same code as any other diffusers-format checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_NAME = "tiny-random"
TINY_VERSION = "1"

SD1_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def build_tiny_pipeline(tokenizer_dir: Path):
    """A new tiny SD1 pipeline whose weights depend only on torch's RNG seeded with 0."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4),
            norm_num_groups=32,
        )
        torch.manual_seed(0)
        vae = AutoencoderKL(
            block_out_channels=(16, 16, 16, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=16,
            sample_size=256,
            scaling_factor=0.18215,
        )
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                layer_norm_eps=1e-5,
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                projection_dim=32,
                hidden_act="quick_gelu",
            )
        )
    finally:
        torch.random.set_rng_state(state)
    scheduler = EulerDiscreteScheduler.from_config(SD1_SCHEDULER)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_model_dir(cache_dir: Path) -> Path:
    """The tiny model's diffusers folder under ``cache_dir``, written on first use."""
    from runner.models.tokenizer import clip_tokenizer_dir

    target = Path(cache_dir) / "models" / f"{TINY_NAME}-v{TINY_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(clip_tokenizer_dir(Path(cache_dir)))
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "model_index.json").exists():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
