"""The model's guided prediction at one step, for a batch of jobs: what every sampler calls.

:class:`Guidance` turns each job's positive and negative CONDITIONING into UNet calls and
combines their outputs with classifier-free guidance. Both steppers use it: the diffusers
scheduler loop of :mod:`runner.diffusion.sampling` and the sigma-based samplers of the
custom sampler family. It works in the UNet's own terms: it takes the scaled model input
(``scheduler.scale_model_input`` already applied) and the UNet timestep, and returns what
the UNet predicts (noise for eps models, velocity for v-prediction models).

A job whose prompts are plain (one entry per side, no options) takes the fast path: one
UNet call for the whole batch, exactly the computation of diffusers' pipelines.

Otherwise ComfyUI's conditioning model applies (its ``comfy/samplers.py``: areas and
masks resolved once, then at every step each *active* entry predicted inside its area and
combined). Per side, the prediction at a latent cell is

    sum_e  mult_e * pred_e  /  (1e-37 + sum_e mult_e)

over the entries ``e`` active at the step that cover the cell, where ``mult_e`` is the
entry's strength times its mask (resized bilinearly, times mask_strength), or, for an area
without a mask, its strength with the area's inner edges feathered linearly over up to 8
cells. Entries whose UNet inputs share a shape are concatenated into one UNet call, across
sides and jobs. Guidance is then ``uncond + cfg * (cond - uncond)``; the negative side is
not computed at all when ``cfg == 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from runner.diffusion.control import ControlResiduals
from runner.handles import CondEntry

if TYPE_CHECKING:
    from runner.diffusion.sampling import SampleJob
    from runner.handles import Conditioning, ControlSpec

FEATHER = 8
"""ComfyUI's feathering of an area's inner edges: at most this many latent cells."""

BLANK_INPAINT_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)
"""The SD latent (UNet scale) of a black image, per channel: the masked image an inpainting
UNet is given when the sampler has no mask (ComfyUI's ``blank_inpaint_image_like``)."""

_TINY = 1e-37  # ComfyUI's starting weight: cells no entry covers predict 0, not NaN


def _repeat(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` with ``batch`` rows: as it is, or its first row repeated."""
    return t if t.shape[0] == batch else t[:1].repeat(batch, *([1] * (t.dim() - 1)))


def _tile(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` with ``batch`` rows, its rows cycled (one row is repeated)."""
    if t.shape[0] == batch:
        return t
    reps = -(-batch // t.shape[0])
    return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch]


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def is_cfg(cfg: float) -> bool:
    """Whether the negative side is computed: always except at ``cfg == 1`` (ComfyUI)."""
    return not math.isclose(cfg, 1.0)


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


def _unclip_dim(unet) -> int:
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


def _center_resize(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[b, c, h, w]`` resized bilinearly to ``height x width`` after a centred crop to
    that aspect ratio (ComfyUI's ``common_upscale(..., "center")``)."""
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
    return F.interpolate(t.float(), size=(height, width), mode="bilinear", align_corners=False)


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
class _Item:
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

    def compatible(self, other: _Item) -> bool:
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


class Guidance:
    """The guided UNet prediction for the latents of ``jobs`` (one batch, in job order).

    ``cfg`` is the classifier-free guidance scale. Call it with the scaled model input
    ``[batch, 4, h, w]`` and the UNet timestep; it returns the guided prediction, the same
    shape. Build it with the checkpoint's lock held and call it under inference mode.
    """

    def __init__(
        self,
        checkpoint,
        jobs: Sequence[SampleJob],
        cfg: float,
        *,
        latent_shape: tuple[int, ...],
        device,
        dtype,
    ):
        self.checkpoint = checkpoint
        self.jobs = list(jobs)
        self.cfg = cfg
        self.unet = checkpoint.pipe.unet
        self.device, self.dtype = device, dtype
        self.latent_shape = tuple(latent_shape)
        self.do_cfg = is_cfg(cfg)
        config = self.unet.config
        self.inpaint = config.in_channels == 9
        self.num_train_timesteps = int(
            checkpoint.pipe.scheduler.config.get("num_train_timesteps", 1000)
        )
        self.time_ids_len = self._time_ids_len() if checkpoint.is_xl else 0
        self.unclip_dim = _unclip_dim(self.unet)
        self.offsets = [0]
        for job in self.jobs:
            self.offsets.append(self.offsets[-1] + job.count)
        self.fast = (
            not self.inpaint
            and not self.unclip_dim
            and self.time_ids_len in (0, 6)
            and all(j.positive.plain and j.negative.plain for j in self.jobs)
        )
        self.controls = ControlResiduals(device, dtype)
        self._prepared: dict[tuple, tuple[Any, list[_Item]]] = {}
        if self.fast:
            self.embeds, self.added = self._plain_conditioning(latent_shape, device, dtype)
        else:
            sides = [[j.positive for j in self.jobs], [j.negative for j in self.jobs]]
            self.items = self._prepare(sides)

    # -- the fast path: one plain prompt per side ------------------------------------------

    def _time_ids_len(self) -> int:
        """How many size ids the SDXL UNet takes: 6 (base) or 5 (refiner, with the
        aesthetic score), from its projection size less the pooled embedding's width."""
        config = self.unet.config
        encoder = getattr(self.checkpoint.pipe, "text_encoder_2", None)
        per_id = config.get("addition_time_embed_dim")
        total = config.get("projection_class_embeddings_input_dim")
        if encoder is None or not per_id or not total:
            return 6
        return (total - int(encoder.config.projection_dim)) // per_id

    def _plain_conditioning(self, latent_shape, device, dtype):
        """``(encoder_hidden_states, added_cond_kwargs)`` for the batch: each job's prompt
        embeddings repeated to its share of the batch (unconditional half first under CFG,
        as diffusers orders them) and SDXL's pooled embeddings and size ids."""
        jobs, do_cfg = self.jobs, self.do_cfg
        batch = latent_shape[0]
        cond = _cat([_repeat(j.positive.embeds, j.count) for j in jobs]).to(device, dtype)
        uncond = _cat([_repeat(j.negative.embeds, j.count) for j in jobs]).to(device, dtype)
        if do_cfg and cond.shape[1] != uncond.shape[1]:
            # Long prompts are 77-token chunks: repeat both sides to a common length, as ComfyUI does.
            common = math.lcm(cond.shape[1], uncond.shape[1])
            cond = cond.repeat(1, common // cond.shape[1], 1)
            uncond = uncond.repeat(1, common // uncond.shape[1], 1)
        embeds = torch.cat([uncond, cond]) if do_cfg else cond
        if not self.checkpoint.is_xl:
            return embeds, None
        height, width = latent_shape[-2] * 8, latent_shape[-1] * 8
        time_ids = torch.tensor(
            [[height, width, 0, 0, height, width]], device=device, dtype=dtype
        ).repeat(batch, 1)
        pooled = _cat([_repeat(self._pooled(j.positive), j.count) for j in jobs]).to(device, dtype)
        if do_cfg:
            negative = _cat([_repeat(self._pooled(j.negative), j.count) for j in jobs]).to(
                device, dtype
            )
            pooled = torch.cat([negative, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        return embeds, {"text_embeds": pooled, "time_ids": time_ids}

    @staticmethod
    def _pooled(c) -> torch.Tensor:
        if c.pooled is None:
            raise ValueError(
                "an SDXL model needs a pooled prompt embedding; this conditioning has none"
            )
        return c.pooled

    # -- ComfyUI's conditioning model ------------------------------------------------------

    def _resolve(self, entry: CondEntry, h: int, w: int) -> _Resolved:
        area = entry.area.in_latent(h, w) if entry.area is not None else None
        mask = None
        if entry.mask is not None:
            mask = resize_mask(entry.mask.to(self.device), h, w)
            if entry.set_area_to_bounds:
                bh, bw, by, bx = _mask_bounds(mask)
                area = (min(bh, h - by), min(bw, w - bx), by, bx)
        return _Resolved(entry, area, mask)

    def _prepare(self, sides: Sequence[Sequence[Conditioning]]) -> list[_Item]:
        """Every (side, job, entry) of ``sides`` resolved once for the whole sampling."""
        h, w = self.latent_shape[-2:]
        items: list[_Item] = []
        for j, job in enumerate(self.jobs):
            resolved = [[self._resolve(e, h, w) for e in side[j]] for side in sides]
            _mirror_areas(resolved)
            _controls_to_uncond(resolved)
            for s, side in enumerate(resolved):
                for r in side:
                    items.append(self._item(s, j, job, r, h, w))
        return items

    def _item(self, side: int, j: int, job: SampleJob, r: _Resolved, h: int, w: int) -> _Item:
        entry, n = r.entry, job.count
        area = r.area
        ah, aw, ay, ax = area if area is not None else (h, w, 0, 0)
        if r.mask is not None:
            mask = _tile(r.mask[:n], n)[:, None, ay : ay + ah, ax : ax + aw]
            mult = mask * (entry.mask_strength * entry.strength)
        else:
            mult = torch.full((1, 1, ah, aw), float(entry.strength), device=self.device)
            if area is not None:
                mult = mult * (_feather(ah, ay, h)[:, None] * _feather(aw, ax, w)[None, :]).to(
                    self.device
                )
        embeds = _repeat(entry.embeds, n).to(self.device, self.dtype)
        added = self._added(entry, side, n, h, w) if self.checkpoint.is_xl else None
        concat = None
        if self.inpaint:
            concat = self._concat(entry, job, h, w)[:, :, ay : ay + ah, ax : ax + aw]
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
        return _Item(
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

    def _added(self, entry: CondEntry, side: int, n: int, h: int, w: int) -> dict:
        """SDXL's pooled embedding and size ids for an entry (ComfyUI's ``encode_adm``):
        ``(height, width, crop_h, crop_w, target_height, target_width)`` for the base
        model, ``(height, width, crop_h, crop_w, aesthetic_score)`` for the refiner."""
        pooled = _repeat(self._pooled(entry), n).to(self.device, self.dtype)
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

    def _concat(self, entry: CondEntry, job: SampleJob, h: int, w: int) -> torch.Tensor:
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
        latent = _tile(_center_resize(latent.to(self.device).float(), h, w), n)
        mask = mask.to(self.device).float()
        if mask.dim() == 4:
            mask = mask[:, :1]
        mask = mask.reshape(-1, 1, *mask.shape[-2:])
        mask = _tile(_center_resize(mask, h, w).round(), n)
        return torch.cat([mask, latent], 1).to(self.dtype)

    def _combined(self, model_in: torch.Tensor, t: torch.Tensor, items: list[_Item], n_sides: int):
        """Each side's combined prediction (ComfyUI's ``calc_cond_batch``)."""
        tf = float(t)
        out = [torch.zeros(model_in.shape, device=model_in.device) for _ in range(n_sides)]
        count = [
            torch.full((model_in.shape[0], 1, *model_in.shape[2:]), _TINY, device=model_in.device)
            for _ in range(n_sides)
        ]
        todo = [it for it in items if it.side < n_sides and is_active(it.bounds, tf)]
        while todo:
            first = todo[0]
            group = [it for it in todo if first.compatible(it)]
            taken = {id(it) for it in group}
            todo = [it for it in todo if id(it) not in taken]
            preds = self._run(model_in, t, group)
            for it, pred in zip(group, preds, strict=True):
                rows = slice(self.offsets[it.job], self.offsets[it.job + 1])
                o, c = out[it.side][rows], count[it.side][rows]
                if it.area is not None:
                    ah, aw, ay, ax = it.area
                    o = o[:, :, ay : ay + ah, ax : ax + aw]
                    c = c[:, :, ay : ay + ah, ax : ax + aw]
                o += pred.float() * it.mult
                c += it.mult
        return [o / c for o, c in zip(out, count, strict=True)]

    def _run(
        self, model_in: torch.Tensor, t: torch.Tensor, group: list[_Item]
    ) -> list[torch.Tensor]:
        """One UNet call for a group of compatible items; each item's prediction."""
        xs = []
        for it in group:
            x = model_in[self.offsets[it.job] : self.offsets[it.job + 1]]
            if it.area is not None:
                ah, aw, ay, ax = it.area
                x = x[:, :, ay : ay + ah, ax : ax + aw]
            xs.append(x)
        sample = _cat(xs)
        lengths = [it.embeds.shape[1] for it in group]
        common = math.lcm(*lengths)
        embeds = _cat([it.embeds.repeat(1, common // it.embeds.shape[1], 1) for it in group])
        added = None
        if group[0].added is not None:
            added = {k: _cat([it.added[k] for it in group]) for k in group[0].added}
        extra: dict[str, Any] = {}
        control = group[0].control
        if control is not None:
            extra = self.controls(
                control,
                sample,
                t,
                embeds,
                added,
                [x.shape[0] for x in xs],
                self.num_train_timesteps,
            )
        unet_in = sample
        if group[0].concat is not None:
            unet_in = torch.cat([sample, _cat([it.concat for it in group])], 1)
        if group[0].labels is not None:
            extra["class_labels"] = _cat([it.labels for it in group])
        gligen = group[0].gligen
        if gligen is None:
            pred = self.unet(
                unet_in,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs=added,
                return_dict=False,
                **extra,
            )[0]
        else:
            from runner.models.gligen import installed

            inputs = gligen.inputs(sample.shape, self.device, self.dtype)
            with installed(self.unet, gligen.model):
                pred = self.unet(
                    unet_in,
                    t,
                    encoder_hidden_states=embeds,
                    added_cond_kwargs=added,
                    cross_attention_kwargs={"gligen": inputs},
                    return_dict=False,
                    **extra,
                )[0]
        return list(pred.split([x.shape[0] for x in xs]))

    # -- entry points -----------------------------------------------------------------------

    def predict_sides(
        self, model_in: torch.Tensor, t: torch.Tensor, sides: Sequence[Sequence]
    ) -> list[torch.Tensor]:
        """Each side's combined (unguided) prediction for ``model_in`` at timestep ``t``.

        ``sides`` is a list of sides, each a list with one CONDITIONING per job (in job
        order); guiders combine the results (CFG, DualCFG, CFG++...). The second side
        counts as the negative one (the SDXL refiner's default aesthetic score)."""
        plain = all(c.plain for side in sides for c in side)
        if not plain or self.inpaint or self.unclip_dim or self.time_ids_len not in (0, 6):
            key = tuple(id(c) for side in sides for c in side)
            if key not in self._prepared:
                self._prepared[key] = (sides, self._prepare(sides))
            items = self._prepared[key][1]
            return [o.to(model_in.dtype) for o in self._combined(model_in, t, items, len(sides))]
        out = []
        height, width = model_in.shape[-2] * 8, model_in.shape[-1] * 8
        for side in sides:
            embeds = _cat(
                [_repeat(c.embeds, j.count) for c, j in zip(side, self.jobs, strict=True)]
            )
            added = None
            if self.checkpoint.is_xl:
                pooled = _cat(
                    [
                        _repeat(self._pooled(c), j.count)
                        for c, j in zip(side, self.jobs, strict=True)
                    ]
                )
                time_ids = torch.tensor(
                    [[height, width, 0, 0, height, width]],
                    device=model_in.device,
                    dtype=model_in.dtype,
                ).repeat(model_in.shape[0], 1)
                added = {
                    "text_embeds": pooled.to(model_in.device, model_in.dtype),
                    "time_ids": time_ids,
                }
            pred = self.unet(
                model_in,
                t,
                encoder_hidden_states=embeds.to(model_in.device, model_in.dtype),
                added_cond_kwargs=added,
                return_dict=False,
            )[0]
            out.append(pred)
        return out

    def __call__(self, model_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided prediction for ``model_in`` at UNet timestep ``t``: on the fast path
        one UNet call and classifier-free guidance, as diffusers' pipelines combine them;
        otherwise every active entry, combined per side, then CFG."""
        if not self.fast:
            sides = self._combined(model_in, t, self.items, 2 if self.do_cfg else 1)
            if not self.do_cfg:
                return sides[0].to(model_in.dtype)
            cond, uncond = sides
            return (uncond + (cond - uncond) * self.cfg).to(model_in.dtype)
        batch_in = torch.cat([model_in] * 2) if self.do_cfg else model_in
        noise_pred = self.unet(
            batch_in,
            t,
            encoder_hidden_states=self.embeds,
            added_cond_kwargs=self.added,
            return_dict=False,
        )[0]
        if not self.do_cfg:
            return noise_pred
        noise_uncond, noise_cond = noise_pred.chunk(2)
        return noise_uncond + self.cfg * (noise_cond - noise_uncond)
