"""One sampler call for several jobs (``runner.jobs`` batching).

Each job of a batch runs its own workflow; its KSampler hands a :class:`SamplerCall` to
the batch's meeting point (:class:`runner.jobs.batching.SamplerBatch`), and
:func:`sample_calls` groups the calls that can share a denoising loop (same checkpoint,
LoRAs, sampler options and shapes) and runs each group as one
:func:`~runner.diffusion.sampling.sample` over its jobs, fanning the progress out to each
job. Each job gets the latents it would have got alone, up to the last bits of floating
point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from runner import events as ev
from runner.context import NodeContext
from runner.diffusion.sampling import SampleJob, latent_preview, sample
from runner.errors import JobCancelled
from runner.handles import Conditioning, ModelHandle


@dataclass
class SamplerCall:
    """What one job's sampler node would have sampled alone."""

    ctx: NodeContext
    model: ModelHandle
    """The job's MODEL handle (checkpoint and UNet LoRAs)."""
    positive: Conditioning
    negative: Conditioning
    samples: torch.Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)
    """``sample``'s keyword arguments: seed, steps, cfg, sampler_name, scheduler_name..."""
    noise_mask: torch.Tensor | None = None
    """The LATENT's ``noise_mask`` (inpainting), if any."""


def _shape(c: Conditioning) -> tuple:
    """What decides whether two CONDITIONINGs can share a loop: for a plain one its
    embeddings' shapes (as before entries existed); otherwise every entry's shapes and
    options, with tensors (masks, hints, controls) by identity."""
    if c.plain:
        return (tuple(c.embeds.shape[1:]), None if c.pooled is None else tuple(c.pooled.shape[1:]))
    return ("entries",) + tuple(_entry_key(e) for e in c)


def _entry_key(e) -> tuple:
    def ident(t):
        return None if t is None else id(t)

    return (
        tuple(e.embeds.shape[1:]),
        None if e.pooled is None else tuple(e.pooled.shape[1:]),
        e.area,
        e.strength,
        ident(e.mask),
        e.mask_strength,
        e.set_area_to_bounds,
        e.start_percent,
        e.end_percent,
        ident(e.control),
        e.size,
        e.aesthetic_score,
        ident(e.concat_latent),
        ident(e.concat_mask),
        tuple(sorted((k, id(v)) for k, v in e.extra.items())),
    )


def _group_key(call: SamplerCall) -> tuple:
    rest = tuple(sorted((k, repr(v)) for k, v in call.kwargs.items() if k != "seed"))
    return (
        id(call.model.checkpoint),
        call.model.loras,
        call.model.prediction,
        call.model.zsnr,
        tuple(id(p) for p in call.model.patches),
        rest,
        tuple(call.samples.shape[1:]),
        _shape(call.positive),
        _shape(call.negative),
        None if call.noise_mask is None else tuple(call.noise_mask.shape[1:]),
    )


def sample_calls(items: list[tuple[str, SamplerCall]]) -> list[torch.Tensor]:
    """Sample every call, sharing one denoising loop between compatible ones (same
    checkpoint, LoRAs, size and sampler options); returns each call's latents in order."""
    results: list[torch.Tensor | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for index, (_, call) in enumerate(items):
        groups.setdefault(_group_key(call), []).append(index)
    for indices in groups.values():
        calls = [items[i][1] for i in indices]
        for i, latents in zip(indices, _sample_group(calls), strict=True):
            results[i] = latents
    return results  # type: ignore[return-value]


def _sample_group(calls: list[SamplerCall]) -> list[torch.Tensor]:
    first = calls[0]
    ckpt = first.model.checkpoint
    counts = [c.samples.shape[0] for c in calls]
    bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]

    def on_step(i: int, total: int, latents: torch.Tensor) -> None:
        for call, start, end in zip(calls, bounds, bounds[1:], strict=False):
            ctx = call.ctx
            if ctx.cancel.cancelled:
                continue
            preview = latent_preview(latents[start:end], ckpt.family) if ctx.previews else None
            ctx.emit(
                ev.Progress(ctx.job_id, node_id=ctx.node_id, step=i, total=total, preview=preview)
            )
        # A job cancelled in a batch stops when the batch ends; the batch stops early only
        # when every job in it is cancelled.
        if all(call.ctx.cancel.cancelled for call in calls):
            raise JobCancelled(f"every job of the batch was cancelled at step {i}")

    kwargs = {k: v for k, v in first.kwargs.items() if k != "seed"}
    kwargs.update(prediction=first.model.prediction, zsnr=first.model.zsnr)
    jobs = [
        SampleJob(c.kwargs.get("seed", 0), c.samples, c.positive, c.negative, c.noise_mask)
        for c in calls
    ]
    from runner.models.hypernetworks import applied

    with ckpt.lock, applied(ckpt.pipe.unet, first.model.patches):
        ckpt.activate_loras(unet=first.model.loras, text_encoder=())
        return sample(ckpt, jobs, on_step=on_step, **kwargs)
