"""Tiny control models and an inpainting UNet for the guidance tests, made in code.

* :func:`tiny_controlnet`: ``ControlNetModel.from_unet`` of a tiny UNet, its zero
  convolutions given random weights (a fresh ControlNet's residuals are all zero, which
  would make every test pass trivially);
* :func:`tiny_t2i_adapter`: a ``T2IAdapter`` whose feature maps match the tiny UNet's two
  down blocks (32 and 64 channels, at 1/8 and 1/16 of the image);
* :func:`tiny_inpaint_checkpoint`: the tiny SD1 checkpoint with a 9-input-channel UNet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ControlModel:
    """What a ControlSpec's ``model`` is: a kind and a diffusers module."""

    kind: str
    module: Any


def tiny_controlnet(unet, seed: int = 0) -> ControlModel:
    """A ControlNet made from ``unet`` (its weights copied), with random zero convs."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    with torch.no_grad():
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0, 0.05)
            conv.bias.normal_(0, 0.05)
        for p in net.controlnet_cond_embedding.conv_out.parameters():
            p.normal_(0, 0.05)
    return ControlModel("controlnet", net.eval())


def tiny_t2i_adapter(seed: int = 0) -> ControlModel:
    """A full T2I-Adapter for the tiny UNet (block widths 32 and 64)."""
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    adapter = T2IAdapter(
        in_channels=3,
        channels=[32, 64],
        num_res_blocks=1,
        downscale_factor=8,
        adapter_type="full_adapter",
    )
    return ControlModel("t2i_adapter", adapter.eval())


def tiny_inpaint_checkpoint(base):
    """A Checkpoint like ``base`` (the tiny SD1) whose UNet takes 9 channels: the noisy
    latent, the mask and the masked image latent (SD inpainting models' layout)."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    config = dict(base.pipe.unet.config)
    config["in_channels"] = 9
    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config(config).eval()
    components = {**base.pipe.components, "unet": unet}
    pipe = StableDiffusionInpaintPipeline(**components)
    return dataclasses.replace(base, name="tiny-inpaint", pipe=pipe, lock=type(base.lock)())


def tiny_sdxl_checkpoint(cache_folder, refiner: bool = False):
    """The tiny SDXL pipeline of tests/helpers/tiny.py as a Checkpoint; with ``refiner``
    its UNet takes the refiner's five size ids (height, width, crops, aesthetic score)."""
    from diffusers import UNet2DConditionModel

    from runner.models.checkpoint import Checkpoint
    from runner.models.tokenizer import clip_tokenizer_dir
    from tests.helpers.tiny import make_tiny_sdxl_pipeline

    pipe = make_tiny_sdxl_pipeline(clip_tokenizer_dir(cache_folder))
    if refiner:
        config = dict(pipe.unet.config)
        config["projection_class_embeddings_input_dim"] = 5 * 8 + 64
        torch.manual_seed(2)
        pipe.unet = UNet2DConditionModel.from_config(config).eval()
    return Checkpoint(
        name="tiny-sdxl-refiner" if refiner else "tiny-sdxl",
        family="sdxl",
        pipe=pipe,
        device=torch.device("cpu"),
        dtype=torch.float32,
        source="memory",
        size_bytes=0,
    )
