"""Conditioning entries resolved for one sampling run, and the UNet-call items made of them.

ComfyUI's conditioning model (its ``comfy/samplers.py``) resolves every entry of every side
of every job once, before the first step: an area (latent cells or percent) and a mask
(resized bilinearly to the latent, optionally turning into its bounding box) become a box
``(h, w, y, x)`` and a weight ``mult`` over it (the entry's strength times its mask times
mask_strength, or for an area without a mask its strength with the inner edges feathered
linearly over up to 8 cells); areas are mirrored onto the other sides and ControlNetApply's
controls onto the negative side. Each result is an :class:`Item`: what one UNet input is
made of (prompt embeddings, SDXL pooled embedding and size ids, the inpainting concat,
unCLIP class labels, GLIGEN boxes, the control chain) and the timesteps it is active
between. :class:`runner.diffusion.guidance.Guidance` batches compatible items into UNet
calls and combines their predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from runner.handles import CondEntry

if TYPE_CHECKING:
    from runner.diffusion.sampling import SampleJob
    from runner.handles import Conditioning, ControlSpec

FEATHER = 8
"""ComfyUI's feathering of an area's inner edges: at most this many latent cells."""

BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)
"""The SD latent (UNet scale) of a black image, per channel: the masked image an inpainting
UNet is given when the sampler has no mask (ComfyUI's ``blank_inpaint_image_like``)."""


def repeat_rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` with ``batch`` rows: as it is, or its first row repeated."""
    return t if t.shape[0] == batch else t[:1].repeat(batch, *([1] * (t.dim() - 1)))


def tile_rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` with ``batch`` rows, its rows cycled (one row is repeated)."""
    if t.shape[0] == batch:
        return t
    reps = -(-batch // t.shape[0])
    return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch]


def cat_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors joined along the batch (one is returned as it is)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def timestep_bounds(
    start_percent: float, end_percent: float, num_train_timesteps: int = 1000
) -> tuple[float, float] | None:
    """The UNet timesteps ``(highest, lowest)`` an entry or control with this schedule
    range is active between, or None when it is never active.

    ComfyUI turns a percent ``p`` into the sigma of timestep ``(1 - p) * 999`` (0 % is
    above every sigma, 100 % is sigma 0) and keeps an entry while ``sigma(end) <= sigma <=
    sigma(start)``; sigma is increasing in the timestep for every noise schedule, so the
    same test on timesteps gives the same steps.
    """
    if start_percent >= 1.0 or end_percent <= 0.0:
        return None  # sigma <= 0, or sigma >= infinity: no step qualifies
    last = num_train_timesteps - 1
    high = math.inf if start_percent <= 0.0 else (1.0 - start_percent) * last
    low = -math.inf if end_percent >= 1.0 else (1.0 - end_percent) * last
    if low > high:
        return None
    return high, low


def unclip_dim(unet) -> int:
    """The class-label width of an unCLIP UNet (image embeds and noise-level embedding),
    0 for any other UNet (:mod:`runner.diffusion.unclip`)."""
    from runner.diffusion.unclip import is_unclip_unet

    if not is_unclip_unet(unet):
        return 0
    return int(unet.config.projection_class_embeddings_input_dim)


def is_active(bounds: tuple[float, float] | None, t: float) -> bool:
    """Whether timestep ``t`` lies in ``bounds`` (see :func:`timestep_bounds`)."""
    return bounds is not None and bounds[1] <= t <= bounds[0]


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A MASK (``[h, w]``, ``[b, h, w]`` or ``[b, 1, h, w]``) as ``[b, height, width]``
    float32, resized bilinearly when its size differs (ComfyUI resizes masks so)."""
    mask = mask.float()
    if mask.dim() == 2:
        mask = mask[None]
    elif mask.dim() == 4:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(
            f"a mask must be [height, width] or [batch, height, width], got {tuple(mask.shape)}"
        )
    if tuple(mask.shape[-2:]) != (height, width):
        mask = F.interpolate(
            mask[:, None], size=(height, width), mode="bilinear", align_corners=False
        )[:, 0]
    return mask


def center_resize(t: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """``[b, c, h, w]`` resized to ``height x width`` by ``mode`` (a
    ``torch.nn.functional.interpolate`` mode) after a centred crop to that aspect ratio
    (ComfyUI's ``common_upscale(..., "center")``); as it is when the size already matches."""
    if tuple(t.shape[-2:]) == (height, width):
        return t
    old_h, old_w = t.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    y = x = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    t = t[..., y : old_h - y, x : old_w - x]
    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(t.float(), size=(height, width), mode=mode, **corners)


def _mask_bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """ComfyUI's ``set_area_to_bounds``: the ``(h, w, y, x)`` box around the mask's nonzero
    cells over the batch, at least 8 cells each way; ``(8, 8, 0, 0)`` for an empty mask."""
    nonzero = mask.abs().amax(dim=0) != 0
    if not bool(nonzero.any()):
        return 8, 8, 0, 0
    ys, xs = torch.where(nonzero)
    y, x = int(ys.min()), int(xs.min())
    return max(8, int(ys.max()) - y + 1), max(8, int(xs.max()) - x + 1), y, x


def _feather(size: int, offset: int, full: int) -> torch.Tensor:
    """The weights along one side of an area: edges inside the image ramp up linearly over
    ``min(8, size // 4)`` cells (ComfyUI's area feathering)."""
    ramp = torch.ones(size)
    rr = min(FEATHER, size // 4)
    for k in range(rr):
        if offset != 0:
            ramp[k] *= (k + 1) / rr
        if offset + size < full:
            ramp[size - 1 - k] *= (k + 1) / rr
    return ramp


@dataclass
class _Resolved:
    """One entry of one side of one job, its area and mask resolved to the latent."""

    entry: CondEntry
    area: tuple[int, int, int, int] | None  # (h, w, y, x) in latent cells
    mask: torch.Tensor | None  # [b, H, W] at the latent size


@dataclass
class Item:
    """What one UNet input of a step is made of (ComfyUI's ``get_area_and_mult``)."""

    side: int
    job: int
    area: tuple[int, int, int, int] | None
    mult: torch.Tensor  # [1 or n, 1, h, w] float32
    bounds: tuple[float, float] | None
    embeds: torch.Tensor  # [n, tokens, dim]
    added: dict[str, torch.Tensor] | None
    concat: torch.Tensor | None  # [n, 5, h, w] for inpainting UNets
    control: ControlSpec | None
    labels: torch.Tensor | None = None  # [n, dim]: an unCLIP UNet's class labels
    gligen: Any = None  # the entry's GLIGEN boxes (runner.models.gligen.GligenBoxes)

    def compatible(self, other: Item) -> bool:
        """Whether ``other`` can share a UNet call with this item."""
        mine = self.area[:2] if self.area else None
        theirs = other.area[:2] if other.area else None
        if mine != theirs or self.control is not other.control:
            return False
        if (self.concat is None) != (other.concat is None):
            return False
        # Extension inputs: class labels concatenate; GLIGEN boxes only with the same boxes.
        if (self.labels is None) != (other.labels is None) or self.gligen is not other.gligen:
            return False
        if (self.added is None) != (other.added is None):
            return False
        if self.added is not None and any(
            self.added[k].shape[1:] != other.added[k].shape[1:] for k in self.added
        ):
            return False
        a, b = self.embeds.shape[1], other.embeds.shape[1]
        if self.embeds.shape[2] != other.embeds.shape[2]:
            return False
        # Token lengths that differ are repeated to a common length (attention over
        # repeated keys is unchanged), as ComfyUI does, up to 4 times the shorter.
        return a == b or math.lcm(a, b) // min(a, b) <= 4


def _area_inside(inner: tuple, outer: tuple) -> bool:
    return (
        inner[2] >= outer[2]
        and inner[3] >= outer[3]
        and inner[0] + inner[2] <= outer[0] + outer[2]
        and inner[1] + inner[3] <= outer[1] + outer[3]
    )


def _model_conds(target: CondEntry, source: CondEntry) -> CondEntry:
    """``target``'s options with ``source``'s model inputs (prompt, pooled, size, concat)."""
    return target.replace(
        embeds=source.embeds,
        pooled=source.pooled,
        size=source.size,
        aesthetic_score=source.aesthetic_score,
        concat_latent=source.concat_latent,
        concat_mask=source.concat_mask,
    )


def _mirror_areas(sides: list[list[_Resolved]]) -> None:
    """ComfyUI's ``create_cond_with_same_area_if_none``: for every entry with an area, each
    other side gets an entry with the same area and options, made of that side's smallest
    entry enclosing the area (or its first entry without one), unless one has it already."""
    for i, side in enumerate(sides):
        for item in side:
            if item.area is None:
                continue
            for j, other in enumerate(sides):
                if j == i:
                    continue
                smallest = None
                for cand in other:
                    if cand.area is not None:
                        if _area_inside(item.area, cand.area) and (
                            smallest is None
                            or smallest.area is None
                            or smallest.area[0] * smallest.area[1] > cand.area[0] * cand.area[1]
                        ):
                            smallest = cand
                    elif smallest is None:
                        smallest = cand
                if smallest is None or smallest.area == item.area:
                    continue
                other.append(
                    _Resolved(_model_conds(item.entry, smallest.entry), item.area, item.mask)
                )


def _controls_to_uncond(sides: list[list[_Resolved]]) -> None:
    """ComfyUI's ``apply_empty_x_to_equal_area`` for controls the positive side marks
    ``control_apply_to_uncond`` (ControlNetApply): when no full-image negative entry has a
    control, the negative full-image entries get them in turn."""
    if len(sides) < 2:
        return
    controls = [
        r.entry.control
        for r in sides[0]
        if r.area is None
        and r.entry.control is not None
        and r.entry.extra.get("control_apply_to_uncond")
    ]
    if not controls:
        return
    for other in sides[1:]:
        free = [k for k, r in enumerate(other) if r.area is None]
        if not free or any(other[k].entry.control is not None for k in free):
            continue
        for n, control in enumerate(controls):
            k = free[n % len(free)]
            other[k] = _Resolved(
                other[k].entry.replace(control=control), other[k].area, other[k].mask
            )


def pooled_of(c) -> torch.Tensor:
    """The pooled prompt embedding an SDXL model needs, or a ValueError saying it is missing."""
    if c.pooled is None:
        raise ValueError(
            "an SDXL model needs a pooled prompt embedding; this conditioning has none"
        )
    return c.pooled


class ItemBuilder:
    """Resolves the entries of a sampling run's jobs into items (:class:`Item`), in the terms of
    one UNet: its device and dtype, the latent's shape, and which extra inputs it takes
    (an inpainting concat, unCLIP class labels, SDXL size ids)."""

    def __init__(
        self,
        checkpoint,
        jobs: Sequence[SampleJob],
        *,
        latent_shape: tuple[int, ...],
        device,
        dtype,
        inpaint: bool,
        unclip_dim: int,
        time_ids_len: int,
        num_train_timesteps: int,
    ):
        self.checkpoint = checkpoint
        self.jobs = list(jobs)
        self.latent_shape = tuple(latent_shape)
        self.device, self.dtype = device, dtype
        self.inpaint = inpaint
        self.unclip_dim = unclip_dim
        self.time_ids_len = time_ids_len
        self.num_train_timesteps = num_train_timesteps

    def resolve(self, entry: CondEntry, h: int, w: int) -> _Resolved:
        """``entry``'s area and mask on an ``h x w`` latent (a mask with
        ``set_area_to_bounds`` also sets the area to its bounding box)."""
        area = entry.area.in_latent(h, w) if entry.area is not None else None
        mask = None
        if entry.mask is not None:
            mask = resize_mask(entry.mask.to(self.device), h, w)
            if entry.set_area_to_bounds:
                bh, bw, by, bx = _mask_bounds(mask)
                area = (min(bh, h - by), min(bw, w - bx), by, bx)
        return _Resolved(entry, area, mask)

    def prepare(self, sides: Sequence[Sequence[Conditioning]]) -> list[Item]:
        """Every (side, job, entry) of ``sides`` resolved once for the whole sampling."""
        h, w = self.latent_shape[-2:]
        items: list[Item] = []
        for j, job in enumerate(self.jobs):
            resolved = [[self.resolve(e, h, w) for e in side[j]] for side in sides]
            _mirror_areas(resolved)
            _controls_to_uncond(resolved)
            for s, side in enumerate(resolved):
                for r in side:
                    items.append(self.item(s, j, job, r, h, w))
        return items

    def item(self, side: int, j: int, job: SampleJob, r: _Resolved, h: int, w: int) -> Item:
        """The UNet-call item of one resolved entry of side ``side`` of job ``j``."""
        entry, n = r.entry, job.count
        area = r.area
        ah, aw, ay, ax = area if area is not None else (h, w, 0, 0)
        if r.mask is not None:
            mask = tile_rows(r.mask[:n], n)[:, None, ay : ay + ah, ax : ax + aw]
            mult = mask * (entry.mask_strength * entry.strength)
        else:
            mult = torch.full((1, 1, ah, aw), float(entry.strength), device=self.device)
            if area is not None:
                mult = mult * (_feather(ah, ay, h)[:, None] * _feather(aw, ax, w)[None, :]).to(
                    self.device
                )
        embeds = repeat_rows(entry.embeds, n).to(self.device, self.dtype)
        added = self.added(entry, side, n, h, w) if self.checkpoint.is_xl else None
        concat = None
        if self.inpaint:
            concat = self.concat(entry, job, h, w)[:, :, ay : ay + ah, ax : ax + aw]
        labels = None
        if self.checkpoint.is_xl and entry.extra.get("unclip"):
            # ComfyUI's SDXL "Revision": the augmented image embeds replace the pooled prompt.
            raise ValueError(
                "unCLIPConditioning on an SDXL model (image embeds as the pooled prompt, "
                "ComfyUI's Revision) is not supported yet; use an SD 2.1 unCLIP checkpoint"
            )
        if self.unclip_dim:
            from runner.diffusion.unclip import class_labels

            row = class_labels(
                entry.extra.get("unclip"), self.checkpoint.pipe, self.unclip_dim, job.seed
            )
            labels = row.repeat(n, 1).to(self.device, self.dtype)
        return Item(
            side=side,
            job=j,
            area=area,
            mult=mult.float(),
            bounds=timestep_bounds(
                entry.start_percent, entry.end_percent, self.num_train_timesteps
            ),
            embeds=embeds,
            added=added,
            concat=concat,
            control=entry.control,
            labels=labels,
            gligen=entry.extra.get("gligen"),
        )

    def added(self, entry: CondEntry, side: int, n: int, h: int, w: int) -> dict:
        """SDXL's pooled embedding and size ids for an entry (ComfyUI's ``encode_adm``):
        ``(height, width, crop_h, crop_w, target_height, target_width)`` for the base
        model, ``(height, width, crop_h, crop_w, aesthetic_score)`` for the refiner."""
        pooled = repeat_rows(pooled_of(entry), n).to(self.device, self.dtype)
        width, height, crop_w, crop_h, target_w, target_h = entry.size or (
            w * 8,
            h * 8,
            0,
            0,
            w * 8,
            h * 8,
        )
        if self.time_ids_len == 5:
            score = entry.aesthetic_score
            if score is None:
                score = 2.5 if side == 1 else 6.0
            ids = [height, width, crop_h, crop_w, score]
        elif self.time_ids_len == 6:
            ids = [height, width, crop_h, crop_w, target_h, target_w]
        else:
            raise ValueError(
                f"{self.checkpoint.name}'s UNet expects {self.time_ids_len} size ids; "
                "only SDXL base (6) and refiner (5) layouts are known"
            )
        time_ids = torch.tensor([ids], device=self.device, dtype=self.dtype).repeat(n, 1)
        return {"text_embeds": pooled, "time_ids": time_ids}

    def concat(self, entry: CondEntry, job: SampleJob, h: int, w: int) -> torch.Tensor:
        """``[mask, masked image latent]`` for a 9-channel inpainting UNet (ComfyUI's
        ``concat_cond``): the entry's concat_mask/concat_latent (InpaintModelConditioning)
        or the sampler's noise mask and input latent; a mask of ones and a blank image
        latent when there is no mask."""
        n = job.count
        mask = entry.concat_mask if entry.concat_mask is not None else job.noise_mask
        if mask is None:
            ones = torch.ones(n, 1, h, w, device=self.device)
            blank = torch.tensor(BLANK_INPAINT_LATENT, device=self.device)[None, :, None, None]
            return torch.cat([ones, blank.expand(n, -1, h, w)], 1).to(self.dtype)
        latent = entry.concat_latent if entry.concat_latent is not None else job.latent
        latent = tile_rows(center_resize(latent.to(self.device).float(), h, w), n)
        mask = mask.to(self.device).float()
        if mask.dim() == 4:
            mask = mask[:, :1]
        mask = mask.reshape(-1, 1, *mask.shape[-2:])
        mask = tile_rows(center_resize(mask, h, w).round(), n)
        return torch.cat([mask, latent], 1).to(self.dtype)
