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

Resolving the entries into the items of UNet calls lives in :mod:`runner.diffusion.entries`;
this module batches the items into UNet calls and combines the predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from runner.diffusion.control import ControlResiduals
from runner.diffusion.entries import (
    BLANK_INPAINT_LATENT,
    FEATHER,
    Item,
    ItemBuilder,
    cat_rows,
    is_active,
    pooled_of,
    repeat_rows,
    resize_mask,
    timestep_bounds,
    unclip_dim,
)

if TYPE_CHECKING:
    from runner.diffusion.sampling import SampleJob

__all__ = [
    "BLANK_INPAINT_LATENT",
    "FEATHER",
    "Guidance",
    "is_active",
    "is_cfg",
    "resize_mask",
    "timestep_bounds",
]

_TINY = 1e-37  # ComfyUI's starting weight: cells no entry covers predict 0, not NaN


def is_cfg(cfg: float) -> bool:
    """Whether the negative side is computed: always except at ``cfg == 1`` (ComfyUI)."""
    return not math.isclose(cfg, 1.0)


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
        self.unclip_dim = unclip_dim(self.unet)
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
        self.builder = ItemBuilder(
            checkpoint,
            self.jobs,
            latent_shape=self.latent_shape,
            device=device,
            dtype=dtype,
            inpaint=self.inpaint,
            unclip_dim=self.unclip_dim,
            time_ids_len=self.time_ids_len,
            num_train_timesteps=self.num_train_timesteps,
        )
        self._prepared: dict[tuple, tuple[Any, list[Item]]] = {}
        if self.fast:
            self.embeds, self.added = self._plain_conditioning(latent_shape, device, dtype)
        else:
            sides = [[j.positive for j in self.jobs], [j.negative for j in self.jobs]]
            self.items = self.builder.prepare(sides)

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
        cond = cat_rows([repeat_rows(j.positive.embeds, j.count) for j in jobs]).to(device, dtype)
        uncond = cat_rows([repeat_rows(j.negative.embeds, j.count) for j in jobs]).to(device, dtype)
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
        pooled = cat_rows([repeat_rows(pooled_of(j.positive), j.count) for j in jobs]).to(
            device, dtype
        )
        if do_cfg:
            negative = cat_rows([repeat_rows(pooled_of(j.negative), j.count) for j in jobs]).to(
                device, dtype
            )
            pooled = torch.cat([negative, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        return embeds, {"text_embeds": pooled, "time_ids": time_ids}

    def _combined(self, model_in: torch.Tensor, t: torch.Tensor, items: list[Item], n_sides: int):
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
        self, model_in: torch.Tensor, t: torch.Tensor, group: list[Item]
    ) -> list[torch.Tensor]:
        """One UNet call for a group of compatible items; each item's prediction."""
        xs = []
        for it in group:
            x = model_in[self.offsets[it.job] : self.offsets[it.job + 1]]
            if it.area is not None:
                ah, aw, ay, ax = it.area
                x = x[:, :, ay : ay + ah, ax : ax + aw]
            xs.append(x)
        sample = cat_rows(xs)
        lengths = [it.embeds.shape[1] for it in group]
        common = math.lcm(*lengths)
        embeds = cat_rows([it.embeds.repeat(1, common // it.embeds.shape[1], 1) for it in group])
        added = None
        if group[0].added is not None:
            added = {k: cat_rows([it.added[k] for it in group]) for k in group[0].added}
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
            unet_in = torch.cat([sample, cat_rows([it.concat for it in group])], 1)
        if group[0].labels is not None:
            extra["class_labels"] = cat_rows([it.labels for it in group])
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
                self._prepared[key] = (sides, self.builder.prepare(sides))
            items = self._prepared[key][1]
            return [o.to(model_in.dtype) for o in self._combined(model_in, t, items, len(sides))]
        out = []
        height, width = model_in.shape[-2] * 8, model_in.shape[-1] * 8
        for side in sides:
            embeds = cat_rows(
                [repeat_rows(c.embeds, j.count) for c, j in zip(side, self.jobs, strict=True)]
            )
            added = None
            if self.checkpoint.is_xl:
                pooled = cat_rows(
                    [
                        repeat_rows(pooled_of(c), j.count)
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
