"""Standalone VAEs (ComfyUI's ``models/vae`` and ``models/vae_approx``): reading them in
every layout they are shared in, as diffusers modules.

Layouts accepted (:func:`load_vae`):

- **original single file** (CompVis / Stability): keys ``encoder.down.0.block.0...``,
  ``decoder.up...``, ``*.mid.attn_1...``, optionally under ``first_stage_model.`` (a VAE
  cut out of a checkpoint) or ``vae.``; ``.safetensors``, or ``.pt``/``.ckpt`` read with
  the restricted unpickler (:mod:`runner.models.pickle_weights`);
- **diffusers single file**: ``encoder.down_blocks.0.resnets.0...``;
- **diffusers folder**: ``config.json`` + ``diffusion_pytorch_model.safetensors``
  (an ``AutoencoderKL`` or an ``AutoencoderTiny``).

A single file carries no config, so the architecture is read off the tensor shapes
(levels, channels per level, blocks per level, latent channels); GroupNorm's group count
is not in any shape: 32, as in every released SD VAE, unless a level is narrower or not
a multiple of 32 (then the largest divisor of the channel counts up to 32).

**Latent scale.** easel's LATENT is in the scale the UNet works in, and VAEDecode divides
by the VAE's ``scaling_factor``: SD1/SD2 VAEs use 0.18215, SDXL's 0.13025. The weights do
not say which a file is (the architectures are identical), so it is, first match wins:
the folder's ``config.json``; safetensors metadata ``scaling_factor``; ``xl`` in the
file's name (``sdxl_vae.safetensors``, ComfyUI's ``taesdxl``); else 0.18215.

**TAESD** (``taesd`` / ``taesdxl``): ComfyUI's names for the tiny autoencoders whose
``taesd_encoder`` / ``taesd_decoder`` (``taesdxl_...``) files sit in ``models/vae_approx``
(madebyollin's original ``nn.Sequential`` keys), or a diffusers ``AutoencoderTiny``
folder. They load as :class:`TinyVae`: diffusers' AutoencoderTiny whose ``encode`` gives
a distribution-like object, so VAEEncode treats it like an AutoencoderKL. TAESD works on
UNet-scale latents directly (``scaling_factor`` 1).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.errors import ModelError

log = logging.getLogger(__name__)

SD_SCALE = 0.18215
SDXL_SCALE = 0.13025

TAESD_NAMES = {"taesd": "taesd", "taesdxl": "taesdxl"}
"""ComfyUI's names for the tiny autoencoders -> file stem prefix in ``vae_approx``."""

_LDM_PREFIXES = ("first_stage_model.", "vae.")


def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    for prefix in _LDM_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def vae_layout(keys: Any) -> str:
    """``"ldm"`` (original keys), ``"diffusers"`` or a ModelError naming what is missing."""
    keys = set(keys)
    if "encoder.down.0.block.0.conv1.weight" in keys:
        return "ldm"
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in keys:
        return "diffusers"
    sample = ", ".join(sorted(keys)[:3]) or "none"
    raise ModelError(
        f"not a VAE: no encoder.down.0.block.0.conv1.weight (original layout) or "
        f"encoder.down_blocks.0.resnets.0.conv1.weight (diffusers layout); first keys: {sample}"
    )


def _groups(channels: list[int]) -> int:
    g = 0
    for c in channels:
        g = math.gcd(g, c)
    if all(c % 32 == 0 for c in channels):
        return 32
    return max(d for d in range(1, 33) if g % d == 0)


def vae_config_from_shapes(shapes: Mapping[str, Any], layout: str) -> dict[str, Any]:
    """An ``AutoencoderKL`` config read off a state dict's shapes (see the module docstring)."""

    def shape(key: str) -> tuple[int, ...]:
        value = shapes[key]
        return tuple(getattr(value, "shape", value))

    if layout == "ldm":
        level = re.compile(r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight")
        first_conv = "encoder.down.{}.block.0.conv1.weight"
    else:
        level = re.compile(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight")
        first_conv = "encoder.down_blocks.{}.resnets.0.conv1.weight"
    levels, blocks = set(), set()
    for key in shapes:
        if m := level.fullmatch(key):
            levels.add(int(m[1]))
            blocks.add(int(m[2]))
    n = max(levels) + 1
    channels = [shape(first_conv.format(i))[0] for i in range(n)]
    conv_in = shape("encoder.conv_in.weight")
    decoder_in = shape("decoder.conv_in.weight")
    conv_out = shape("decoder.conv_out.weight")
    return {
        "in_channels": conv_in[1],
        "out_channels": conv_out[0],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": channels,
        "layers_per_block": max(blocks) + 1,
        "latent_channels": decoder_in[1],
        "norm_num_groups": _groups(channels),
        "sample_size": 512,
    }


def guess_scaling_factor(name: str, metadata: Mapping[str, str] | None = None) -> float:
    """The latent scale of a VAE file without a config (see the module docstring)."""
    value = (metadata or {}).get("scaling_factor")
    if value is not None:
        try:
            return float(value)
        except ValueError:
            pass
    return SDXL_SCALE if "xl" in Path(name.replace("\\", "/")).name.lower() else SD_SCALE


def vae_from_state_dict(
    sd: Mapping[str, Any], *, source: str, scaling_factor: float, dtype: Any = None
) -> Any:
    """An ``AutoencoderKL`` from a state dict in the original or diffusers layout."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    sd = _strip_prefix(sd)
    try:
        layout = vae_layout(sd)
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None
    config = vae_config_from_shapes(sd, layout)
    config["scaling_factor"] = scaling_factor
    if layout == "ldm":
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        sd = convert_ldm_vae_checkpoint(sd, config)
    with init_empty_weights():
        vae = AutoencoderKL(**config)
    try:
        vae.load_state_dict({k: v for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: the VAE's tensors do not fit its shapes: {exc}") from exc
    if dtype is not None:
        vae.to(dtype)
    else:
        vae.to(torch.float32)
    return vae.eval()


class _Latents:
    """What ``AutoencoderTiny.encode`` gives, shaped like AutoencoderKL's distribution."""

    def __init__(self, latents: Any):
        self.latents = latents

    def mode(self) -> Any:
        return self.latents

    def sample(self, generator: Any = None) -> Any:
        return self.latents


def _tiny_class() -> type:
    from diffusers import AutoencoderTiny

    class TinyVae(AutoencoderTiny):
        """diffusers' AutoencoderTiny (TAESD) whose ``encode`` returns an object with
        ``mode()``/``sample()`` like AutoencoderKL's, so VAE nodes use either alike."""

        def encode(self, x, return_dict: bool = True):  # type: ignore[override]
            latents = AutoencoderTiny.encode(self, x, return_dict=False)[0]
            return (_Latents(latents),)

    return TinyVae


def tiny_vae_class() -> type:
    """The :class:`TinyVae` class (made on first use: it needs diffusers)."""
    global _TINY
    if _TINY is None:
        _TINY = _tiny_class()
    return _TINY


_TINY: type | None = None


def taesd_from_original(encoder: Mapping[str, Any], decoder: Mapping[str, Any], dtype: Any) -> Any:
    """A :class:`TinyVae` from madebyollin's TAESD encoder and decoder state dicts
    (``nn.Sequential`` keys ``0.weight``, ``1.conv.0.weight``...; the decoder's first
    layer is a parameterless clamp, which diffusers' DecoderTiny does in its forward)."""
    import torch

    model = tiny_vae_class()()
    sd: dict[str, Any] = {}
    for key, value in encoder.items():
        sd[f"encoder.layers.{key}"] = value
    for key, value in decoder.items():
        index, _, rest = key.partition(".")
        sd[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"the TAESD files do not fit diffusers' AutoencoderTiny: {exc}") from exc
    return model.to(dtype or torch.float32).eval()


def read_weights(path: Path, allow_pickle: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a weights file: safetensors, or a pickle read with the
    restricted unpickler when ``allow_pickle`` (else refused by name)."""
    from runner.files import check_weights_path, is_pickle_name, read_safetensors_header

    path = Path(path)
    if is_pickle_name(path) and allow_pickle:
        from runner.models.pickle_weights import load_pickle_weights

        return load_pickle_weights(path), {}
    check_weights_path(path)
    header = read_safetensors_header(path)
    from safetensors.torch import load_file

    return load_file(str(path)), header.metadata


def load_vae_folder(folder: Path, dtype: Any) -> Any:
    """A diffusers VAE folder (``config.json`` + weights): AutoencoderKL or AutoencoderTiny."""
    from diffusers import AutoencoderKL

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if config.get("_class_name") == "AutoencoderTiny":
            cls: Any = tiny_vae_class()
        else:
            cls = AutoencoderKL
        return cls.from_pretrained(
            str(folder), torch_dtype=dtype, use_safetensors=True, local_files_only=True
        ).eval()
    except Exception as exc:
        raise ModelError(f"{folder}: cannot load it as a diffusers VAE folder: {exc}") from exc


def load_vae(path: Path, *, dtype: Any, allow_pickle: bool) -> Any:
    """The VAE at ``path``: a diffusers folder or a single file in either layout."""
    path = Path(path)
    if path.is_dir():
        return load_vae_folder(path, dtype)
    sd, metadata = read_weights(path, allow_pickle)
    return vae_from_state_dict(
        sd, source=str(path), scaling_factor=guess_scaling_factor(path.name, metadata), dtype=dtype
    )


def load_taesd(encoder: Path, decoder: Path, *, dtype: Any, allow_pickle: bool) -> Any:
    """A :class:`TinyVae` from TAESD's encoder and decoder files."""
    enc, _ = read_weights(encoder, allow_pickle)
    dec, _ = read_weights(decoder, allow_pickle)
    return taesd_from_original(enc, dec, dtype)


__all__ = [
    "SDXL_SCALE",
    "SD_SCALE",
    "TAESD_NAMES",
    "guess_scaling_factor",
    "load_taesd",
    "load_vae",
    "load_vae_folder",
    "taesd_from_original",
    "tiny_vae_class",
    "vae_config_from_shapes",
    "vae_from_state_dict",
    "vae_layout",
]
