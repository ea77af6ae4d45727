"""The values that flow between model nodes: what a node receives for a MODEL, CLIP, VAE,
CONDITIONING or LATENT input, and what it returns for such an output.

These are public (exported from :mod:`runner`) so that a third-party node can take a
MODEL or a CONDITIONING without reaching into private modules:

* MODEL is a :class:`ModelHandle`: a loaded :class:`~runner.models.manager.Checkpoint`
  (its diffusers pipeline, device, dtype and lock) plus the LoRAs to apply to its UNet;
* CLIP is a :class:`ClipHandle`: the same checkpoint's text encoder(s), their LoRAs and
  ComfyUI's stop layer (clip skip);
* VAE is a :class:`VaeHandle`: the checkpoint's AutoencoderKL;
* CONDITIONING is a :class:`Conditioning`: per-token prompt embeddings (and SDXL's pooled
  vector), on the CPU in float32;
* LATENT is a :class:`Latent` dict, ``{"samples": tensor}`` in the scale the UNet works in;
  other keys a node does not know are passed on unchanged;
* IMAGE (not here: a plain tensor) is ``[batch, height, width, channels]`` in 0..1.

Handles are frozen: a node that changes a model (adds a LoRA, sets a stop layer) returns a
new handle and never changes the one it was given (outputs are cached and shared).
Use a checkpoint's modules with its ``lock`` held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # torch and the model manager are imported only where they are used
    import torch

    from runner.models.manager import Checkpoint

LoraStack = tuple[tuple[Path, float], ...]
"""LoRAs to apply, in order: ``(file, strength)`` pairs."""


@dataclass(frozen=True)
class ModelHandle:
    """MODEL: a checkpoint's denoiser with the LoRAs (file, strength) to apply to it."""

    checkpoint: Checkpoint
    loras: LoraStack = ()


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: a checkpoint's text encoder(s) with LoRAs and clip skip (ComfyUI's stop layer:
    -1 is the last layer, -2 the penultimate...)."""

    checkpoint: Checkpoint
    loras: LoraStack = ()
    stop_at_layer: int = -1


@dataclass(frozen=True)
class VaeHandle:
    """VAE: a checkpoint's AutoencoderKL (``checkpoint.pipe.vae``)."""

    checkpoint: Checkpoint
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class Conditioning:
    """CONDITIONING: a prompt encoded by a text encoder: per-token embeddings
    ``[batch, tokens, dim]`` (and SDXL's pooled vector ``[batch, dim]``)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


class Latent(TypedDict):
    """LATENT: ``{"samples": tensor}``, latents ``[batch, channels, height / 8, width / 8]``
    scaled as the UNet sees them."""

    samples: torch.Tensor


__all__ = ["ClipHandle", "Conditioning", "Latent", "LoraStack", "ModelHandle", "VaeHandle"]
