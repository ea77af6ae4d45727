"""ControlNet and T2I-Adapter residuals for the sampling loop (ComfyUI's ``comfy/controlnet.py``
semantics, on diffusers' ``ControlNetModel`` and ``T2IAdapter``).

A conditioning entry's ``control`` is the last :class:`~runner.handles.ControlSpec` of a
chain. For one UNet call, every control of the chain that is active at the step (its own
start..end percent, see :func:`runner.diffusion.entries.timestep_bounds`) adds its
residuals, and the chain's residuals are summed:

* a ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion
  Models") runs on the same scaled latent input, timestep and prompt embeddings as the UNet
  (SDXL ControlNets also on the pooled embedding and size ids), with its hint resized to
  the UNet input's size times 8 (a centred crop to the aspect ratio, then nearest-exact, as
  ComfyUI resizes hints; an area entry's hint is fitted to its area); its down and middle
  residuals are scaled by the control's strength;
* a T2I-Adapter (Mou et al. 2023, "T2I-Adapter") turns its hint, resized the same way to a
  multiple of its pixel-unshuffle factor, into one feature map per UNet down block,
  scaled by strength, added inside the down blocks (``down_intrablock_additional_residuals``);
  the features depend only on the hint and the size, so they are computed once per size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from runner.diffusion.entries import center_resize, is_active, tile_rows, timestep_bounds

if TYPE_CHECKING:
    from runner.handles import ControlSpec

KINDS = ("controlnet", "t2i_adapter")


def hint_to_size(hint: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An IMAGE hint ``[b, h, w, c]`` (0..1) as ``[b, c, height, width]``: centred crop to
    the target aspect ratio, then nearest-exact resampling (ComfyUI's ``common_upscale``
    with ``"center"``)."""
    if hint.dim() != 4:
        raise ValueError(
            f"a control hint must be an IMAGE [batch, height, width, channels], got {tuple(hint.shape)}"
        )
    return center_resize(hint.movedim(-1, 1).float(), height, width, "nearest-exact")


def _per_chunk(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """``t``'s rows given to each chunk of a batch: all of them when it has one row,
    else cycled to each chunk's length (ComfyUI's ``broadcast_image_to``)."""
    if t.shape[0] == 1:
        return t.expand(sum(counts), *t.shape[1:])
    return torch.cat([tile_rows(t, n) for n in counts])


def _ready(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """The module on the UNet's device and dtype (moved once, where it lives)."""
    param = next(module.parameters(), None)
    if param is not None and (param.device != torch.device(device) or param.dtype != dtype):
        module.to(device=device, dtype=dtype)
    return module


class ControlResiduals:
    """The residuals of control chains for UNet calls, with the per-size hints and T2I
    features of one sampling run cached."""

    def __init__(self, device, dtype):
        self.device = torch.device(device)
        self.dtype = dtype
        self._hints: dict[tuple, torch.Tensor] = {}
        self._features: dict[tuple, list[torch.Tensor]] = {}
        self._keep: list[Any] = []  # the specs the caches are keyed by (ids stay unique)

    def _hint(self, spec: ControlSpec, height: int, width: int, channels: int) -> torch.Tensor:
        key = (id(spec), height, width, channels)
        if key not in self._hints:
            hint = hint_to_size(spec.hint, height, width)
            if channels == 1 and hint.shape[1] > 1:
                hint = hint.mean(1, keepdim=True)
            self._hints[key] = hint.to(self.device, self.dtype)
            self._keep.append(spec)
        return self._hints[key]

    def _adapter_features(self, spec: ControlSpec, h: int, w: int) -> list[torch.Tensor]:
        key = (id(spec), h, w)
        if key not in self._features:
            adapter = _ready(spec.model.module, self.device, self.dtype)
            factor = int(getattr(adapter, "downscale_factor", 8))
            height = math.ceil(h * 8 / factor) * factor
            width = math.ceil(w * 8 / factor) * factor
            hint = self._hint(spec, height, width, int(adapter.config.in_channels))
            self._features[key] = [f * spec.strength for f in adapter(hint)]
            self._keep.append(spec)
        return self._features[key]

    def __call__(
        self,
        control: ControlSpec,
        sample: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        added: dict[str, torch.Tensor] | None,
        counts: list[int],
        num_train_timesteps: int = 1000,
    ) -> dict[str, Any]:
        """The UNet keyword arguments for ``control``'s chain on ``sample`` (the scaled
        latent input of one UNet call, its chunks ``counts`` rows each) at timestep ``t``;
        empty when no control of the chain is active."""
        h, w = sample.shape[-2:]
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        intra: list[torch.Tensor] | None = None
        for spec in control.chain():
            kind = getattr(spec.model, "kind", None)
            if kind not in KINDS:
                raise ValueError(f"unknown control model kind {kind!r}; expected one of {KINDS}")
            bounds = timestep_bounds(spec.start_percent, spec.end_percent, num_train_timesteps)
            if not is_active(bounds, float(t)):
                continue
            if kind == "controlnet":
                net = _ready(spec.model.module, self.device, self.dtype)
                channels = int(net.config.conditioning_channels)
                hint = _per_chunk(self._hint(spec, h * 8, w * 8, channels), counts)
                net_added = added if net.config.get("addition_embed_type") else None
                d, m = net(
                    sample,
                    t,
                    encoder_hidden_states=embeds,
                    controlnet_cond=hint,
                    conditioning_scale=float(spec.strength),
                    added_cond_kwargs=net_added,
                    return_dict=False,
                )
                down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
                mid = m if mid is None else mid + m
            else:
                feats = [_per_chunk(f, counts) for f in self._adapter_features(spec, h, w)]
                intra = (
                    feats if intra is None else [a + b for a, b in zip(intra, feats, strict=True)]
                )
        out: dict[str, Any] = {}
        if down is not None:
            out["down_block_additional_residuals"] = tuple(down)
            out["mid_block_additional_residual"] = mid
        if intra is not None:
            out["down_intrablock_additional_residuals"] = list(intra)
        return out
