"""Tiny model files for the loader tests, written in each layout a loader accepts.

Everything is made in code with random weights (seeded), then saved the way the files are
shared: a VAE in the original (``first_stage_model.`` / bare LDM keys) and diffusers
layouts, as a folder and as a ``.pt`` pickle; TAESD's encoder and decoder in madebyollin's
``nn.Sequential`` keys; pickles holding only tensors and one holding a callable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tests.helpers.sd_layout import vae_to_original


def tiny_vae(seed: int = 123) -> Any:
    """A 4-level, 16-channel AutoencoderKL (the tiny pipelines' shape), seeded."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=16,
        layers_per_block=1,
        sample_size=64,
    ).eval()


def _save(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def write_vae_layouts(vae: Any, folder: Path) -> dict[str, Path]:
    """``vae`` saved in every layout VAELoader reads, under ``folder`` (a ``models/vae``):
    name -> path."""
    original = vae_to_original(vae.state_dict(), vae.config)
    out = {
        "cut-from-checkpoint.safetensors": _save(
            {f"first_stage_model.{k}": v for k, v in original.items()},
            folder / "cut-from-checkpoint.safetensors",
        ),
        "sd15/original.safetensors": _save(original, folder / "sd15" / "original.safetensors"),
        "diffusers-keys.safetensors": _save(
            vae.state_dict(), folder / "diffusers-keys.safetensors"
        ),
    }
    torch.save({"state_dict": original, "global_step": 3}, folder / "ema-pruned.pt")
    out["ema-pruned.pt"] = folder / "ema-pruned.pt"
    vae.save_pretrained(folder / "diffusers-folder", safe_serialization=True)
    out["diffusers-folder"] = folder / "diffusers-folder"
    return out


def tiny_taesd(seed: int = 7) -> Any:
    """diffusers' AutoencoderTiny with TAESD's real (small) shapes, seeded."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny().eval()


def write_taesd_original(taesd: Any, folder: Path, name: str = "taesd") -> tuple[Path, Path]:
    """``taesd``'s encoder and decoder as madebyollin's files (``<name>_encoder`` /
    ``<name>_decoder``, Sequential keys; the decoder's index 0 is its parameterless clamp)."""
    sd = taesd.state_dict()
    enc = {k.removeprefix("encoder.layers."): v for k, v in sd.items() if k.startswith("encoder.")}
    dec = {}
    for key, value in sd.items():
        if key.startswith("decoder.layers."):
            index, _, rest = key.removeprefix("decoder.layers.").partition(".")
            dec[f"{int(index) + 1}.{rest}"] = value
    return (
        _save(enc, folder / f"{name}_encoder.safetensors"),
        _save(dec, folder / f"{name}_decoder.safetensors"),
    )


class RunsCode:
    """Pickles to a call of ``os.system`` that would create ``marker``: a malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def write_malicious_pickle(path: Path, marker: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A ``torch.save`` file holding ``tensors`` and an object whose unpickling runs code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": dict(tensors), "payload": RunsCode(marker)}, path)
    return path


def tiny_esrgan(seed: int = 5, ups: int = 2, unshuffle: int = 1) -> Any:
    """A tiny RRDBNet (8 features, growth 4, one block), seeded: x4 by default."""
    from runner.models.upscalers import RRDBConfig, RRDBNet

    torch.manual_seed(seed)
    return RRDBNet(RRDBConfig(3, 3, 8, 4, 1, ups, unshuffle)).eval()


def esrgan_original_keys(model: Any) -> dict[str, torch.Tensor]:
    """``model``'s weights in the original ESRGAN layout (``model.0``, ``model.1.sub.N.RDBk
    .convj.0``, trunk ``model.1.sub.<nb>``, then upsampling convs at 3, 6..., HR conv and
    last conv), as the first ESRGAN .pth files are laid out."""
    sd = model.state_dict()
    nb, ups = model.config.nb, model.config.ups
    index = {"conv_first": 0}
    at = 3
    for i in range(ups):
        index[f"conv_up{i + 1}"] = at
        at += 3
    index["conv_hr"] = at - 1
    index["conv_last"] = at + 1
    out = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module in index:
            out[f"model.{index[module]}.{param}"] = value
        elif module == "conv_body":
            out[f"model.1.sub.{nb}.{param}"] = value
        else:
            _, block, rdb, conv = module.split(".")
            out[f"model.1.sub.{block}.{rdb.upper()}.{conv}.0.{param}"] = value
    return out
