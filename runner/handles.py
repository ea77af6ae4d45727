"""The values that flow between model nodes: what a node receives for a MODEL, CLIP, VAE,
CONDITIONING or LATENT input, and what it returns for such an output.

These are public (exported from :mod:`runner`) so that a third-party node can take a
MODEL or a CONDITIONING without reaching into private modules:

* MODEL is a :class:`ModelHandle`: a loaded :class:`~runner.models.manager.Checkpoint`
  (its diffusers pipeline, device, dtype and lock) plus the LoRAs to apply to its UNet;
* CLIP is a :class:`ClipHandle`: the same checkpoint's text encoder(s), their LoRAs and
  ComfyUI's stop layer (clip skip);
* VAE is a :class:`VaeHandle`: the checkpoint's AutoencoderKL;
* CONDITIONING is a :class:`Conditioning`: a list of :class:`CondEntry`, each per-token
  prompt embeddings (and SDXL's pooled vector, on the CPU in float32) with ComfyUI's
  options (area, mask, timestep range, ControlNet...);
* LATENT is a :class:`Latent` dict, ``{"samples": tensor}`` in the scale the UNet works in,
  optionally ``"noise_mask"`` (``[batch or 1, 1, height, width]``, 1 where the sampler may
  change the latent: SetLatentNoiseMask, VAEEncodeForInpaint) and ``"batch_index"``;
  other keys a node does not know are passed on unchanged;
* IMAGE (not here: a plain tensor) is ``[batch, height, width, channels]`` in 0..1.

Handles are frozen: a node that changes a model (adds a LoRA, sets a stop layer) returns a
new handle and never changes the one it was given (outputs are cached and shared).
Use a checkpoint's modules with its ``lock`` held.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    """MODEL: a checkpoint's denoiser with the LoRAs (file, strength) to apply to it.

    ``prediction`` overrides what the UNet is taken to predict (ComfyUI's
    ModelSamplingDiscrete: ``"eps"``, ``"v_prediction"``, ``"lcm"``, ``"x0"``; None keeps
    the checkpoint's own), ``zsnr`` rescales the noise schedule to zero terminal SNR.
    ``patches`` are applied to the UNet while this MODEL samples and removed afterwards
    (HypernetworkLoader's hypernetworks, :func:`runner.models.hypernetworks.applied`)."""

    checkpoint: Checkpoint
    loras: LoraStack = ()
    prediction: str | None = None
    zsnr: bool = False
    patches: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ClipHandle:
    """CLIP: a checkpoint's text encoder(s) with LoRAs and clip skip (ComfyUI's stop layer:
    -1 is the last layer, -2 the penultimate...; None, the default, is the model's own
    choice: the last layer for SD1/SD2, the penultimate for SDXL's encoders)."""

    checkpoint: Checkpoint
    loras: LoraStack = ()
    stop_at_layer: int | None = None


@dataclass(frozen=True)
class VaeHandle:
    """VAE: a checkpoint's AutoencoderKL (``checkpoint.pipe.vae``)."""

    checkpoint: Checkpoint
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Area:
    """Where a conditioning entry applies (ComfyUI's ``area``).

    In latent units (pixels / 8) when ``percentage`` is False, as ConditioningSetArea
    stores it; as fractions of the image (0..1) when True (ConditioningSetAreaPercentage).
    """

    height: float
    width: float
    y: float
    x: float
    percentage: bool = False

    def in_latent(self, latent_h: int, latent_w: int) -> tuple[int, int, int, int]:
        """``(height, width, y, x)`` in latent cells for a latent of that size, clipped to it
        (at least one cell high and wide)."""
        if self.percentage:
            h, w = round(self.height * latent_h), round(self.width * latent_w)
            y, x = round(self.y * latent_h), round(self.x * latent_w)
        else:
            h, w, y, x = int(self.height), int(self.width), int(self.y), int(self.x)
        y, x = min(max(y, 0), latent_h - 1), min(max(x, 0), latent_w - 1)
        h, w = max(1, min(h, latent_h - y)), max(1, min(w, latent_w - x))
        return h, w, y, x


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet or T2I-Adapter applied to a conditioning entry (ComfyUI's ``control``):
    the loaded control model, its hint image (IMAGE, ``[batch, height, width, 3]`` in
    0..1), strength and the part of the schedule it acts in. ``previous`` is the control
    applied before this one: a chain whose residuals are summed."""

    model: Any
    hint: torch.Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    previous: ControlSpec | None = None

    def chain(self) -> list[ControlSpec]:
        """Every control of the chain, the first applied first."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.previous
        return out[::-1]


@dataclass(frozen=True)
class CondEntry:
    """One entry of a CONDITIONING list (ComfyUI's ``[tensor, {options}]`` pair).

    ``embeds`` ``[batch, tokens, dim]`` and SDXL's ``pooled`` ``[batch, dim]`` (float32, on
    the CPU); the rest are the options ComfyUI's conditioning nodes set:

    * ``area`` and ``strength``: the entry acts only inside its area, weighted by strength
      where areas overlap (ConditioningSetArea...);
    * ``mask`` (``[batch or 1, height, width]``, any resolution, resized to the latent),
      ``mask_strength`` and ``set_area_to_bounds`` (ConditioningSetMask);
    * ``start_percent`` .. ``end_percent``: the part of the schedule the entry is active in
      (ConditioningSetTimestepRange), 0 the first step and 1 the end;
    * ``control``: the last ControlNet/T2I-Adapter of a chain (ControlNetApply...);
    * ``size``: SDXL's size conditioning ``(width, height, crop_w, crop_h, target_width,
      target_height)``, None for the image's own size (CLIPTextEncodeSDXL);
      ``aesthetic_score`` for the SDXL refiner;
    * ``concat_latent`` / ``concat_mask``: what an inpainting UNet (9 input channels) gets
      besides the noisy latent (InpaintModelConditioning);
    * ``extra``: anything else a plugin attaches (unCLIP image embeds, GLIGEN boxes...).

    Entries are frozen: a node changes an entry with :meth:`replace`.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    area: Area | None = None
    strength: float = 1.0
    mask: torch.Tensor | None = None
    mask_strength: float = 1.0
    set_area_to_bounds: bool = False
    start_percent: float = 0.0
    end_percent: float = 1.0
    control: ControlSpec | None = None
    size: tuple[int, int, int, int, int, int] | None = None
    aesthetic_score: float | None = None
    concat_latent: torch.Tensor | None = None
    concat_mask: torch.Tensor | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> CondEntry:
        """A copy with ``changes`` applied (the entry itself is unchanged)."""
        return dataclasses.replace(self, **changes)

    @property
    def plain(self) -> bool:
        """True for a bare prompt: no area, mask, timestep range, control or other option,
        which the sampling loop runs on its fast path."""
        return (
            self.area is None
            and self.mask is None
            and self.strength == 1.0
            and self.start_percent <= 0.0
            and self.end_percent >= 1.0
            and self.control is None
            and self.size is None
            and self.aesthetic_score is None
            and self.concat_latent is None
            and self.concat_mask is None
            and not self.extra
        )


class Conditioning:
    """CONDITIONING: a list of :class:`CondEntry` (ComfyUI's list of ``[tensor, dict]``).

    ``Conditioning(embeds, pooled)`` is one plain entry, what CLIPTextEncode gives;
    ``Conditioning(entries=[...])`` any list. ``embeds`` and ``pooled`` read the first
    entry (for code that knows there is one). Immutable: nodes build new ones.
    """

    __slots__ = ("entries",)

    def __init__(
        self,
        embeds: torch.Tensor | None = None,
        pooled: torch.Tensor | None = None,
        *,
        entries: Iterable[CondEntry] | None = None,
    ):
        if entries is not None:
            if embeds is not None or pooled is not None:
                raise TypeError("give Conditioning either embeds/pooled or entries, not both")
            found = tuple(entries)
        elif embeds is not None:
            found = (CondEntry(embeds, pooled),)
        else:
            found = ()
        object.__setattr__(self, "entries", found)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Conditioning is immutable; build a new one")

    def __iter__(self) -> Iterator[CondEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Conditioning({len(self.entries)} entries)"

    @property
    def embeds(self) -> torch.Tensor:
        """The first entry's per-token embeddings."""
        return self._first().embeds

    @property
    def pooled(self) -> torch.Tensor | None:
        """The first entry's pooled embedding (SDXL), or None."""
        return self._first().pooled

    @property
    def plain(self) -> bool:
        """One entry with no options: the sampling loop's fast path."""
        return len(self.entries) == 1 and self.entries[0].plain

    def map(self, fn: Callable[[CondEntry], CondEntry]) -> Conditioning:
        """A new list with ``fn`` applied to every entry."""
        return Conditioning(entries=[fn(e) for e in self.entries])

    def with_options(self, **changes: Any) -> Conditioning:
        """A new list with ``changes`` set on every entry (ComfyUI's
        ``conditioning_set_values``)."""
        return self.map(lambda e: e.replace(**changes))

    def __add__(self, other: Conditioning) -> Conditioning:
        return Conditioning(entries=self.entries + other.entries)

    def _first(self) -> CondEntry:
        if not self.entries:
            raise ValueError("the conditioning is empty (no entries)")
        return self.entries[0]


class Latent(TypedDict):
    """LATENT: ``{"samples": tensor}``, latents ``[batch, channels, height / 8, width / 8]``
    scaled as the UNet sees them."""

    samples: torch.Tensor


__all__ = [
    "Area",
    "ClipHandle",
    "CondEntry",
    "Conditioning",
    "ControlSpec",
    "Latent",
    "LoraStack",
    "ModelHandle",
    "VaeHandle",
]
