"""unCLIP image conditioning (Stable Diffusion 2.1 unCLIP; Ramesh et al. 2022,
"Hierarchical Text-Conditional Image Generation with CLIP Latents"): the CLIP image embeds
an unCLIP UNet takes as its class labels, noise-augmented as ComfyUI's ``unclip_adm`` does.

An entry's unCLIP inputs (``entry.extra["unclip"]``, set by unCLIPConditioning) are
``(clip_vision_output, strength, noise_augmentation)`` triples. For each image of each
triple (every row of its ``image_embeds``):

* the noise level is ``round((T - 1) * noise_augmentation)`` of the image noising
  schedule's ``T`` (1000) steps;
* the embedding is normalised (the pipeline's ``image_normalizer``: ``(x - mean) / std``),
  noised to that level with the ``image_noising_scheduler`` (``sqrt(abar) x + sqrt(1 -
  abar) noise``, the noise drawn on the CPU from the sampler's seed minus 10, the same
  noise for every image, as ComfyUI reseeds for each), and un-normalised;
* the noise level's sinusoidal embedding (cosine half first, as the UNet's time
  embedding) is appended, and the whole row is multiplied by ``strength``.

With one image that row is the class label. With several they are summed, and the first
half (the image part) is noise-augmented once more at ``noise_augment_merge`` (0.05 for
SD 2.1 unCLIP) with the merged level's embedding appended. An entry without unCLIP inputs
gets zeros, as ComfyUI's ``encode_adm`` gives an unCLIP model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

NOISE_AUGMENT_MERGE = 0.05
"""ComfyUI's ``unclip_noise_augment_merge`` for SD 2.1 unCLIP."""


def is_unclip_unet(unet: Any) -> bool:
    """Whether a UNet takes unCLIP image embeds as class labels (a projection class
    embedding on a model without SDXL's text-time embedding)."""
    config = unet.config
    return (
        config.get("class_embed_type") == "projection"
        and config.get("addition_embed_type") is None
        and bool(config.get("projection_class_embeddings_input_dim"))
    )


def _noising(pipe: Any):
    scheduler = getattr(pipe, "image_noising_scheduler", None)
    if scheduler is None:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    return scheduler, getattr(pipe, "image_normalizer", None)


def augment(
    embeds: torch.Tensor, level: int, pipe: Any, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noised embeds, level embedding)`` for embeds ``[1, d]`` at noise level ``level``
    (see the module docstring), float32 on the CPU."""
    from diffusers.models.embeddings import get_timestep_embedding

    scheduler, normalizer = _noising(pipe)
    x = embeds.float().cpu()
    mean = std = None
    if normalizer is not None:
        mean = normalizer.mean.detach().float().cpu().reshape(1, -1)
        std = normalizer.std.detach().float().cpu().reshape(1, -1)
        x = (x - mean) / std
    generator = torch.Generator("cpu").manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    abar = scheduler.alphas_cumprod[level].float()
    x = abar.sqrt() * x + (1 - abar).sqrt() * noise
    if normalizer is not None:
        x = x * std + mean
    t = torch.tensor([level])
    emb = get_timestep_embedding(t, x.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
    return x, emb.float()


def noise_level(noise_augmentation: float, pipe: Any) -> int:
    """The noising step for a noise augmentation in 0..1."""
    scheduler, _ = _noising(pipe)
    steps = int(scheduler.config.num_train_timesteps)
    return round((steps - 1) * float(noise_augmentation))


def class_labels(
    unclip: Sequence[tuple[Any, float, float]] | None, pipe: Any, dim: int, seed: int
) -> torch.Tensor:
    """The class label row ``[1, dim]`` for an entry's unCLIP inputs (zeros when none)."""
    if not unclip:
        return torch.zeros(1, dim)
    rows = []
    for output, strength, aug in unclip:
        embeds = output.image_embeds if hasattr(output, "image_embeds") else output
        for row in embeds.reshape(-1, embeds.shape[-1]):
            x, emb = augment(row[None], noise_level(aug, pipe), pipe, seed - 10)
            rows.append(torch.cat([x, emb], 1) * float(strength))
    if rows[0].shape[-1] != dim:
        raise ValueError(
            f"the unCLIP image embeds are {rows[0].shape[-1] // 2} wide but the model takes "
            f"{dim // 2}: use the CLIP vision model that came with the unCLIP checkpoint"
        )
    if len(rows) == 1:
        return rows[0]
    total = torch.stack(rows).sum(0)
    half = dim // 2
    x, emb = augment(total[:, :half], noise_level(NOISE_AUGMENT_MERGE, pipe), pipe, seed - 10)
    return torch.cat([x, emb], 1)
