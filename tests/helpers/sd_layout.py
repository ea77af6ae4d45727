"""Write a diffusers Stable Diffusion pipeline as ONE ``.safetensors`` file in the
original (CompVis / Stability "LDM") key layout: the inverse of diffusers' single-file
conversion, for tests.

Layouts:

- ``sd1``: ``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.transformer.text_model.*`` (Hugging Face CLIP keys);
- ``sd2``: as sd1 but the text encoder is OpenCLIP under ``cond_stage_model.model.*``
  (fused ``in_proj`` attention weights, ``resblocks``, ``text_projection``);
- ``sd2-sgm``: SD2 as saved by Stability's generative-models code, the OpenCLIP text
  encoder under ``conditioner.embedders.0.model.*``;
- ``sdxl``: ``conditioner.embedders.0.transformer.text_model.*`` (CLIP-L) and
  ``conditioner.embedders.1.model.*`` (OpenCLIP-G, with ``text_projection``), and the
  UNet's ``label_emb``.

transformers 5 saves ``CLIPTextModel`` keys without the ``text_model.`` prefix; the
original layout has it, so it is added back here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# The key mapping is easel's own (CheckpointSave writes with it); the loader tests stay
# independent because easel reads these files through diffusers' single-file converter.
from runner.models.original_layout import (
    clip_to_original,
    openclip_to_original,
    unet_to_original,
    vae_to_original,
)


def _prefixed(prefix: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def original_state_dict(pipe: Any, layout: str = "sd1") -> dict[str, torch.Tensor]:
    """Return ``pipe``'s weights as one state dict in the original layout ``layout``
    (``sd1``, ``sd2``, ``sd2-sgm`` or ``sdxl``)."""
    out = _prefixed(
        "model.diffusion_model.", unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    )
    out |= _prefixed("first_stage_model.", vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    te = pipe.text_encoder.state_dict()
    if layout == "sd1":
        out |= _prefixed("cond_stage_model.transformer.", clip_to_original(te))
    elif layout == "sd2":
        out |= _prefixed("cond_stage_model.model.", openclip_to_original(te))
    elif layout == "sd2-sgm":
        out |= _prefixed("conditioner.embedders.0.model.", openclip_to_original(te))
    elif layout == "sdxl":
        out |= _prefixed("conditioner.embedders.0.transformer.", clip_to_original(te))
        te2 = pipe.text_encoder_2.state_dict()
        out |= _prefixed("conditioner.embedders.1.model.", openclip_to_original(te2))
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return out


def write_original_layout(
    pipe: Any,
    path: Path,
    layout: str | None = None,
    *,
    metadata: dict[str, str] | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``pipe`` as one ``.safetensors`` file in the original SD key layout.

    ``layout`` defaults to ``sdxl`` for a pipeline with ``text_encoder_2``, else ``sd1``.
    ``extra`` tensors (e.g. a ``v_pred`` marker) and safetensors ``metadata`` are added as
    given. Returns ``path``.
    """
    if layout is None:
        layout = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd1"
    sd = original_state_dict(pipe, layout)
    if extra:
        sd |= dict(extra)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)
    return path
