"""Tiny ControlNets and T2I-Adapters made in code, and writers for every file layout the
loaders accept (diffusers folder, diffusers-keyed single file, original single file, diff
ControlNet).

The original-layout writers enumerate lllyasviel's cldm and TencentARC's adapter key
schemes from the diffusers module's config, written in the diffusers -> original
direction, independently of the loader's original -> diffusers conversion.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, T2IAdapter, UNet2DConditionModel
from safetensors.torch import save_file

HINT_CHANNELS = (8, 16, 16, 32)
"""The hint encoder's widths (three stride-2 convolutions: 8x down, as the real ones)."""


def _seeded(seed: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    return state


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values in every tensor (zero convolutions too, so control has an effect)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def controlnet_from_unet(unet: UNet2DConditionModel, seed: int = 1) -> ControlNetModel:
    """A ControlNet copied from ``unet`` (ControlNetModel.from_unet), all weights random."""
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    return _randomize(cn, seed)


def tiny_sd1_unet(seed: int = 0) -> UNet2DConditionModel:
    """A tiny SD1-shaped UNet whose unreadable values are SD1's stock ones (8 heads, 32 groups)."""
    state = _seeded(seed)
    try:
        return UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
    finally:
        torch.random.set_rng_state(state)


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """A tiny SDXL-shaped UNet with SDXL's stock head width (64) and size embedding (256)."""
    state = _seeded(seed)
    try:
        return UNet2DConditionModel(
            block_out_channels=(64, 128),
            layers_per_block=1,
            sample_size=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            transformer_layers_per_block=(1, 2),
            projection_class_embeddings_input_dim=6 * 256 + 64,
            cross_attention_dim=96,
        )
    finally:
        torch.random.set_rng_state(state)


def tiny_adapter(xl: bool = False, seed: int = 2) -> T2IAdapter:
    """A tiny T2I-Adapter whose features fit the tiny UNets' two down levels (32 and 64
    channels; SDXL: pixel unshuffle by 16 and no downsampling between them)."""
    adapter = T2IAdapter(
        in_channels=3,
        channels=[32, 64] if not xl else [64, 128],
        num_res_blocks=2,
        downscale_factor=16 if xl else 8,
        adapter_type="full_adapter_xl" if xl else "full_adapter",
    )
    return _randomize(adapter, seed)


def tiny_light_adapter(seed: int = 3) -> T2IAdapter:
    """A tiny light T2I-Adapter (LightAdapter: three levels plus a final one)."""
    adapter = T2IAdapter(
        in_channels=3, channels=[32, 64, 64], num_res_blocks=2, adapter_type="light_adapter"
    )
    return _randomize(adapter, seed)


# ---------------------------------------------------------------- writers


def save_folder(module, folder: Path) -> Path:
    """The diffusers folder layout (config.json + diffusion_pytorch_model.safetensors)."""
    module.save_pretrained(str(folder), safe_serialization=True)
    return folder


def save_diffusers_file(module, path: Path) -> Path:
    """One .safetensors file with diffusers' key names and no config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


_RESNET_BACK = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def controlnet_original_keys(cn: ControlNetModel) -> dict[str, str]:
    """diffusers name -> original (cldm) name, for every tensor of ``cn``, without prefix."""
    cfg = cn.config
    per = cfg.layers_per_block
    n_hint = len(cfg.conditioning_embedding_out_channels) - 1
    out = {}
    for key in cn.state_dict():
        p = key.split(".")
        if p[0] == "time_embedding":
            new = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[p[1]] + "." + p[2]
        elif p[0] == "add_embedding":
            new = {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}[p[1]] + "." + p[2]
        elif p[0] == "conv_in":
            new = "input_blocks.0.0." + p[1]
        elif p[0] == "down_blocks":
            b = int(p[1])
            if p[2] == "downsamplers":
                new = f"input_blocks.{1 + b * (per + 1) + per}.0.op." + p[-1]
            else:
                block = 1 + b * (per + 1) + int(p[3])
                if p[2] == "resnets":
                    new = f"input_blocks.{block}.0.{_RESNET_BACK[p[4]]}." + ".".join(p[5:])
                else:
                    new = f"input_blocks.{block}.1." + ".".join(p[4:])
        elif p[0] == "mid_block":
            if p[1] == "resnets":
                new = f"middle_block.{2 * int(p[2])}.{_RESNET_BACK[p[3]]}." + ".".join(p[4:])
            else:
                new = "middle_block.1." + ".".join(p[3:])
        elif p[0] == "controlnet_down_blocks":
            new = f"zero_convs.{p[1]}.0." + p[2]
        elif p[0] == "controlnet_mid_block":
            new = "middle_block_out.0." + p[1]
        elif p[0] == "controlnet_cond_embedding":
            if p[1] == "conv_in":
                new = "input_hint_block.0." + p[2]
            elif p[1] == "conv_out":
                new = f"input_hint_block.{2 * (2 * n_hint) + 2}." + p[2]
            else:
                new = f"input_hint_block.{2 * int(p[2]) + 2}." + p[3]
        else:
            raise KeyError(key)
        out[key] = new
    return out


def original_controlnet_state(
    cn: ControlNetModel, prefix: bool = True, subtract: dict | None = None
) -> dict[str, torch.Tensor]:
    """``cn``'s weights under original names (``control_model.`` when ``prefix``); with
    ``subtract`` (a UNet state dict by diffusers name) each shared tensor minus the
    UNet's, and the ``difference`` marker: a diff ControlNet."""
    names = controlnet_original_keys(cn)
    head = "control_model." if prefix else ""
    out = {}
    for key, value in cn.state_dict().items():
        if subtract is not None and key in subtract and subtract[key].shape == value.shape:
            value = value - subtract[key]
        out[head + names[key]] = value.contiguous().clone()
    if subtract is not None:
        out["difference"] = torch.tensor([])
    return out


def save_original_controlnet(
    cn: ControlNetModel, path: Path, prefix: bool = True, subtract: dict | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_controlnet_state(cn, prefix, subtract), str(path))
    return path


def original_adapter_state(adapter: T2IAdapter) -> dict[str, torch.Tensor]:
    """A full adapter's weights under TencentARC's names (``body.K``, K = level * blocks + block);
    a light adapter's as ``body.I.body.J`` with ``in_conv``/``out_conv``."""
    cfg = adapter.config
    out = {}
    for key, value in adapter.state_dict().items():
        p = key.split(".")[1:]  # drop "adapter"
        if p[0] == "body" and cfg.adapter_type == "light_adapter":
            if p[2] == "resnets":
                new = f"body.{p[1]}.body.{p[3]}." + ".".join(p[4:])
            else:
                new = ".".join(p)
        elif p[0] == "body":
            level = int(p[1])
            if p[2] == "in_conv":
                new = f"body.{level * cfg.num_res_blocks}.in_conv." + p[3]
            else:
                new = f"body.{level * cfg.num_res_blocks + int(p[3])}." + ".".join(p[4:])
        else:
            new = ".".join(p)
        out[new] = value.contiguous().clone()
    return out


def save_original_adapter(adapter: T2IAdapter, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_adapter_state(adapter), str(path))
    return path


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules hold the same tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
