"""A tiny random-weight inpainting pipeline (SD1 shape, a UNet with 9 input channels:
noisy latent, mask, encoded masked image), saved in the layouts the loader accepts."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from tests.helpers.sd_layout import write_original_layout
from tests.helpers.tiny import make_tiny_sd1_pipeline


def make_tiny_inpaint_pipeline(tokenizer_dir: Path):
    """The tiny SD1 pipeline of :mod:`tests.helpers.tiny` with its UNet replaced by a
    9-input-channel one (same sizes otherwise), seeded so two calls give the same weights."""
    pipe = make_tiny_sd1_pipeline(tokenizer_dir)
    config = dict(pipe.unet.config)
    config["in_channels"] = 9
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config(config)
    pipe.register_modules(unet=unet)
    return pipe


def save_inpaint_folder(pipe, folder: Path) -> Path:
    """``pipe`` as a diffusers folder (``save_pretrained``, safetensors)."""
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_inpaint_single_file(pipe, path: Path, tokenizer_dir: Path) -> Path:
    """``pipe`` as one ``.safetensors`` file in the original SD1 key layout (its
    ``model.diffusion_model.input_blocks.0.0.weight`` is ``[32, 9, 3, 3]``), with a
    ``<stem>.config/`` companion holding the configs, and no weights, of the ordinary
    4-channel tiny SD1 model: the loader must take the 9 channels from the file."""
    write_original_layout(pipe, path, "sd1")
    companion = path.with_suffix(".config")
    make_tiny_sd1_pipeline(tokenizer_dir).save_pretrained(companion)
    for f in list(companion.rglob("*")):
        if f.suffix in {".safetensors", ".bin"}:
            f.unlink()
    return path
