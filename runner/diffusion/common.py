"""What the core node modules share (not a plugin): ComfyUI's largest image side and its
resizing of NCHW tensors (``common_upscale``), used by the latent and the image nodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_RESOLUTION = 16384
"""ComfyUI's largest width or height an input may ask for (the settings may lower it)."""


def target_size(in_w: int, in_h: int, width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` with a 0 side filled in from the aspect ratio."""
    if width == 0 and height == 0:
        return in_w, in_h
    if width == 0:
        width = max(1, round(in_w * height / in_h))
    elif height == 0:
        height = max(1, round(in_h * width / in_w))
    return width, height


def center_crop_nchw(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop the middle of an NCHW tensor to the aspect ratio of ``width`` x ``height``."""
    in_h, in_w = x.shape[-2], x.shape[-1]
    old_aspect, new_aspect = in_w / in_h, width / height
    if old_aspect > new_aspect:
        cut = round((in_w - in_w * new_aspect / old_aspect) / 2)
        return x[..., :, cut : in_w - cut]
    if old_aspect < new_aspect:
        cut = round((in_h - in_h * old_aspect / new_aspect) / 2)
        return x[..., cut : in_h - cut, :]
    return x


def resize_nchw(x: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize an NCHW tensor, optionally center-cropping to the target aspect first (ComfyUI's
    ``common_upscale``). A width or height of 0 keeps the aspect ratio."""
    width, height = target_size(x.shape[-1], x.shape[-2], width, height)
    if crop == "center":
        x = center_crop_nchw(x, width, height)
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(x.float(), size=(height, width), mode=method, **kwargs)
