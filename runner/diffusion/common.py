"""What the core node modules share (not a plugin): ComfyUI's largest image side, its
resizing of NCHW tensors (``common_upscale``, with ``bislerp``), LatentUpscale's size
rule, masked compositing (LatentCompositeMasked, ImageCompositeMasked) and tiled
application of a VAE (VAEDecodeTiled, VAEEncodeTiled)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

MAX_RESOLUTION = 16384
"""ComfyUI's largest width or height an input may ask for (the settings may lower it)."""


def target_size(in_w: int, in_h: int, width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` with a 0 side filled in from the aspect ratio (ImageScale's rule:
    at least 1)."""
    if width == 0 and height == 0:
        return in_w, in_h
    if width == 0:
        width = max(1, round(in_w * height / in_h))
    elif height == 0:
        height = max(1, round(in_h * width / in_w))
    return width, height


def latent_upscale_size(lat_w: int, lat_h: int, width: int, height: int) -> tuple[int, int]:
    """ComfyUI's LatentUpscale size rule: the target ``(width, height)`` in latent cells for a
    latent of ``lat_w`` x ``lat_h`` cells asked to become ``width`` x ``height`` pixels.

    Each side asked for is raised to at least 64 px; a side given as 0 is computed in
    pixels from the latent's aspect ratio, ``round(other_px * lat_side / lat_other)``, also
    at least 64 px; then both are floored to whole latent cells (``px // 8``). Both 0 keeps
    the latent's own size. (Rounding in latent cells instead, as easel did before, gives a
    different side for many sizes.)"""
    if width == 0 and height == 0:
        return lat_w, lat_h
    if width == 0:
        height = max(64, height)
        width = max(64, round(lat_w * height / lat_h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(lat_h * width / lat_w))
    else:
        width, height = max(64, width), max(64, height)
    return width // 8, height // 8


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


def _slerp_rows(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between the rows of ``a`` and ``b`` ``[N, C]`` by ``t``
    ``[N, 1]``: the direction is slerped (Shoemake 1985, ``sin((1-t)w)/sin w * a^ +
    sin(t w)/sin w * b^``), the length linearly interpolated. Nearly parallel rows keep
    ``a``; nearly opposite ones are interpolated linearly (ComfyUI's ``bislerp`` cases)."""
    na = a.norm(dim=-1, keepdim=True)
    nb = b.norm(dim=-1, keepdim=True)
    ua = torch.where(na == 0, torch.zeros_like(a), a / na)
    ub = torch.where(nb == 0, torch.zeros_like(b), b / nb)
    dot = (ua * ub).sum(-1, keepdim=True)
    omega = torch.acos(dot.clamp(-1.0, 1.0))
    sin_omega = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / sin_omega
    out = out * (na * (1 - t) + nb * t)
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * (1 - t) + b * t, out)


def _bislerp_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resize NCHW ``x`` along ``dim`` (2 or 3) to ``size`` by slerping channel vectors."""
    old = x.shape[dim]
    # Source position of each output cell, as bilinear interpolation (half-pixel centres,
    # clamped at the borders) places it.
    pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * old / size - 0.5).clamp(0, old - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=old - 1)
    t = pos - lo.float()
    a = x.index_select(dim, lo).movedim(1, -1)
    b = x.index_select(dim, hi).movedim(1, -1)
    shape = [1, 1, 1]
    shape[dim - 1] = size
    tt = t.view(shape).expand(a.shape[:-1]).unsqueeze(-1)
    c = x.shape[1]
    out = _slerp_rows(a.reshape(-1, c), b.reshape(-1, c), tt.reshape(-1, 1))
    return out.reshape(a.shape).movedim(-1, 1)


def bislerp(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's ``bislerp`` resize of NCHW latents: bilinear sampling positions, but each
    pair of neighbouring channel vectors is joined by spherical interpolation (see
    :func:`_slerp_rows`) rather than a straight line, first along the width, then along
    the height. Keeps the input's dtype."""
    dtype = x.dtype
    out = _bislerp_axis(x.float(), width, 3)
    return _bislerp_axis(out, height, 2).to(dtype)


def resize_nchw(x: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize an NCHW tensor, optionally center-cropping to the target aspect first (ComfyUI's
    ``common_upscale``; ``method`` is a ``torch.nn.functional.interpolate`` mode or
    ``bislerp``). A width or height of 0 keeps the aspect ratio."""
    width, height = target_size(x.shape[-1], x.shape[-2], width, height)
    if crop == "center":
        x = center_crop_nchw(x, width, height)
    if method == "bislerp":
        return bislerp(x, width, height)
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(x.float(), size=(height, width), mode=method, **kwargs)


def repeat_to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` cut or repeated along dim 0 to ``batch`` entries (ComfyUI's
    ``repeat_to_batch_size``)."""
    if x.shape[0] >= batch:
        return x[:batch]
    reps = [math.ceil(batch / x.shape[0])] + [1] * (x.ndim - 1)
    return x.repeat(*reps)[:batch]


def composite_masked(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None,
    multiplier: int,
    resize_source: bool,
) -> torch.Tensor:
    """Paste NCHW ``source`` into a copy of ``destination`` with its top-left corner at
    ``(x, y)`` (in pixels: ``multiplier`` pixels per cell, 8 for latents, 1 for images),
    blended by ``mask`` (any size, resized to the source bilinearly; None pastes fully).

    ComfyUI's LatentCompositeMasked / ImageCompositeMasked: the source is resized to the
    destination first when ``resize_source``, repeated to its batch, and clipped where it
    overhangs the destination."""
    out = destination.clone()
    if resize_source:
        source = F.interpolate(source, size=out.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source.to(out.dtype), out.shape[0])
    left, top = x // multiplier, y // multiplier
    vis_w = max(0, min(source.shape[-1], out.shape[-1] - left))
    vis_h = max(0, min(source.shape[-2], out.shape[-2] - top))
    if vis_w == 0 or vis_h == 0:
        return out
    if mask is None:
        m = torch.ones_like(source[:, :1])
    else:
        m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(out.dtype)
        m = F.interpolate(m, size=source.shape[-2:], mode="bilinear")
        m = repeat_to_batch(m, source.shape[0])
    m = m[..., :vis_h, :vis_w]
    region = out[..., top : top + vis_h, left : left + vis_w]
    out[..., top : top + vis_h, left : left + vis_w] = (
        m * source[..., :vis_h, :vis_w] + (1 - m) * region
    )
    return out


def tiled_apply(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile_h: int,
    tile_w: int,
    overlap: int,
    scale: float,
    out_channels: int,
) -> torch.Tensor:
    """Apply ``fn`` (NCHW in, NCHW out ``scale`` times the size) to overlapping tiles of
    ``x`` and join the results (ComfyUI's ``tiled_scale``): tiles of ``tile_h`` x ``tile_w``
    cells step by ``tile - overlap``; each result is weighted by a mask that ramps
    linearly, ``(t + 1) / feather`` for ``t < feather = round(overlap * scale)``, from each
    tile edge, and the weighted sum is divided by the summed weights. An input that fits
    in one tile goes through ``fn`` whole."""
    n, _, h, w = x.shape
    out_h, out_w = round(h * scale), round(w * scale)
    outputs = []
    for b in range(n):
        s = x[b : b + 1]
        if h <= tile_h and w <= tile_w:
            outputs.append(fn(s).float())
            continue
        acc = torch.zeros((1, out_channels, out_h, out_w))
        weight = torch.zeros((1, 1, out_h, out_w))
        ys = range(0, h - overlap, tile_h - overlap) if h > tile_h else [0]
        xs = range(0, w - overlap, tile_w - overlap) if w > tile_w else [0]
        for y0 in ys:
            for x0 in xs:
                py, px = max(0, min(h - overlap, y0)), max(0, min(w - overlap, x0))
                part = s[..., py : py + min(tile_h, h - py), px : px + min(tile_w, w - px)]
                result = fn(part).float().cpu()
                ramp = torch.ones((1, 1) + tuple(result.shape[-2:]))
                feather = round(overlap * scale)
                for d in (2, 3):
                    if feather >= ramp.shape[d]:
                        continue
                    for t in range(feather):
                        a = (t + 1) / feather
                        ramp.narrow(d, t, 1).mul_(a)
                        ramp.narrow(d, ramp.shape[d] - 1 - t, 1).mul_(a)
                oy, ox = round(py * scale), round(px * scale)
                lh, lw = min(result.shape[-2], out_h - oy), min(result.shape[-1], out_w - ox)
                acc[..., oy : oy + lh, ox : ox + lw] += (result * ramp)[..., :lh, :lw]
                weight[..., oy : oy + lh, ox : ox + lw] += ramp[..., :lh, :lw]
        outputs.append(acc / weight)
    return torch.cat(outputs)


def check_latent_channels(samples: torch.Tensor, checkpoint) -> None:
    """Raise a ValueError unless ``samples`` has the channels ``checkpoint``'s UNet denoises.

    An inpainting UNet (9 input channels) takes a 4-channel latent plus the mask and the
    masked image latent, which the sampling loop adds."""
    in_channels = checkpoint.pipe.unet.config.in_channels
    expected = 4 if in_channels == 9 else in_channels
    if samples.shape[1] != expected:
        raise ValueError(
            f"the latent has {samples.shape[1]} channels but {checkpoint.name}'s model "
            f"expects {expected}"
        )
