"""The model's guided prediction at one step, for a batch of jobs: what every sampler calls.

:class:`Guidance` turns each job's positive and negative CONDITIONING into UNet calls and
combines their outputs with classifier-free guidance. Both steppers use it: the diffusers
scheduler loop of :mod:`runner.diffusion.sampling` and the sigma-based samplers of the
custom sampler family. It works in the UNet's own terms: it takes the scaled model input
(``scheduler.scale_model_input`` already applied) and the UNet timestep, and returns what
the UNet predicts (noise for eps models, velocity for v-prediction models).

A job whose prompts are plain (one entry per side, no options) takes the fast path: one
UNet call for the whole batch, exactly the computation of diffusers' pipelines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from runner.diffusion.sampling import SampleJob


def _repeat(t: torch.Tensor, batch: int) -> torch.Tensor:
    """``t`` with ``batch`` rows: as it is, or its first row repeated."""
    return t if t.shape[0] == batch else t[:1].repeat(batch, *([1] * (t.dim() - 1)))


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


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
        self.do_cfg = cfg > 1.0
        self.embeds, self.added = self._plain_conditioning(latent_shape, device, dtype)

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
        pooled = _cat([_repeat(j.positive.pooled, j.count) for j in jobs]).to(device, dtype)
        if do_cfg:
            negative = _cat([_repeat(j.negative.pooled, j.count) for j in jobs]).to(device, dtype)
            pooled = torch.cat([negative, pooled])
            time_ids = torch.cat([time_ids, time_ids])
        return embeds, {"text_embeds": pooled, "time_ids": time_ids}

    def predict_sides(
        self, model_in: torch.Tensor, t: torch.Tensor, sides: Sequence[Sequence]
    ) -> list[torch.Tensor]:
        """Each side's combined (unguided) prediction for ``model_in`` at timestep ``t``.

        ``sides`` is a list of sides, each a list with one CONDITIONING per job (in job
        order); guiders combine the results (CFG, DualCFG, CFG++...)."""
        out = []
        for side in sides:
            embeds = _cat(
                [_repeat(c.embeds, j.count) for c, j in zip(side, self.jobs, strict=True)]
            )
            added = None
            if self.checkpoint.is_xl:
                pooled = _cat(
                    [_repeat(c.pooled, j.count) for c, j in zip(side, self.jobs, strict=True)]
                )
                added = {
                    "text_embeds": pooled.to(model_in.device, model_in.dtype),
                    "time_ids": self.added["time_ids"][: model_in.shape[0]],
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
        """The guided prediction for ``model_in`` at UNet timestep ``t``: one UNet call and
        classifier-free guidance, as diffusers' pipelines combine them."""
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
