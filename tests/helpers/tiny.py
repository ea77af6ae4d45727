"""Tiny random-weight Stable Diffusion pipelines for tests (sizes from shared/NOTES.md).

The tokenizers are the real CLIP tokenizer (``runner.models.tokenizer``), so the text
encoders keep CLIP's vocabulary size, 49,408, and 77 positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)


def _text_config(
    hidden: int, act: str = "quick_gelu", projection_dim: int | None = None
) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection_dim or hidden,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
        sample_size=64,
    )


def _scheduler(prediction_type: str = "epsilon") -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _tokenizer(tokenizer_dir: Path, pad_token: str | None = None) -> CLIPTokenizer:
    kwargs = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, **kwargs)


def make_tiny_sd1_pipeline(tokenizer_dir: Path) -> StableDiffusionPipeline:
    """A tiny SD1-shaped pipeline (0.8M-parameter UNet, 16-channel VAE, 32-wide CLIP),
    seeded with ``torch.manual_seed(0)`` so two calls give the same weights."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(32))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(tokenizer_dir),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_sd2_pipeline(
    tokenizer_dir: Path, prediction_type: str = "epsilon"
) -> StableDiffusionPipeline:
    """A tiny SD2-shaped pipeline: linear projections in the transformers, a GELU text
    encoder (OpenCLIP's activation) and ``!`` padding."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(32, act="gelu"))
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(tokenizer_dir, pad_token="!"),
        unet=unet,
        scheduler=_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_sdxl_pipeline(tokenizer_dir: Path) -> StableDiffusionXLPipeline:
    """A tiny SDXL-shaped pipeline. The two text encoders have different widths (32 and
    64), as CLIP-L and OpenCLIP-G do: diffusers tells them apart by width."""
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
        projection_class_embeddings_input_dim=6 * 8 + 64,
        cross_attention_dim=32 + 64,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config(32))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(64, act="gelu"))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(tokenizer_dir),
        tokenizer_2=_tokenizer(tokenizer_dir, pad_token="!"),
        unet=unet,
        scheduler=_scheduler(),
        add_watermarker=False,
    )
