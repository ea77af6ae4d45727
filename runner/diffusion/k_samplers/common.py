"""What the sigma-based samplers share: the denoiser they call, the Karras ODE derivative,
the ancestral step split, and their two noise sources (Gaussian and Brownian).

A sampler is ``fn(model, x, sigmas, *, noise, callback, **options) -> x``: ``model(x, sigma)``
returns the denoised estimate ``x0`` for the whole batch (k-diffusion's convention, Karras
et al. 2022), ``noise(sigma, sigma_next)`` a unit-variance tensor of ``x``'s shape, and
``callback(i, x, denoised)`` is called once at the end of step ``i``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol

import torch


class Denoiser(Protocol):
    """``model(x, sigma) -> x0``. ``needs_uncond``: a CFG++ sampler sets it, and then
    ``uncond`` holds the unconditional side's ``x0`` of the last call."""

    needs_uncond: bool
    uncond: torch.Tensor | None

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor: ...


NoiseFn = Callable[[float, float], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def no_callback(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
    """A callback that does nothing."""


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's ``dx/dsigma = (x - x0) / sigma`` (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` for an ancestral step from ``sigma`` to ``sigma_next``: step
    deterministically down to ``sigma_down`` and add fresh noise of ``sigma_up``, so that
    ``sigma_down^2 + sigma_up^2 = sigma_next^2``; ``eta`` scales the fresh share (0: none).
    ``sigma_up = eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)`` is the DDPM
    posterior's standard deviation in the variance-exploding form (Song et al. 2021, DDIM's
    eta)."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


def sigma_list(sigmas: torch.Tensor) -> list[float]:
    """The schedule as Python floats (coefficients are computed in float64)."""
    return [float(s) for s in sigmas]


class GaussianNoise:
    """Step noise for a batch of jobs: each job's rows come from its own CPU generator
    seeded ``seed + 1`` (as the diffusers loop and ComfyUI on the CPU draw it), so a job gets
    the same noise alone or in a batch, on any device."""

    def __init__(self, seeds: Sequence[int], counts: Sequence[int], like: torch.Tensor):
        self.shapes = [(n, *like.shape[1:]) for n in counts]
        self.generators = [torch.Generator("cpu").manual_seed((int(s) + 1) % 2**64) for s in seeds]
        self.device, self.dtype = like.device, like.dtype

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        parts = [
            torch.randn(shape, generator=g, dtype=torch.float32)
            for shape, g in zip(self.shapes, self.generators, strict=True)
        ]
        return torch.cat(parts).to(self.device, self.dtype)


class BrownianNoise:
    """Brownian-tree step noise for the SDE samplers (Kidger et al. 2021, torchsde's
    ``BrownianTree``), one tree per job with the job's seed as its entropy, on the CPU:
    ``noise(s, s_next) = (W(s_next) - W(s)) / sqrt(|s - s_next|)``, which is unit Gaussian and
    consistent across step sizes (a finer schedule refines the same path)."""

    def __init__(
        self,
        seeds: Sequence[int],
        counts: Sequence[int],
        like: torch.Tensor,
        sigma_min: float,
        sigma_max: float,
    ):
        import torchsde

        self.device, self.dtype = like.device, like.dtype
        t0, t1 = torch.tensor(float(sigma_min)), torch.tensor(float(sigma_max))
        self.trees = [
            torchsde.BrownianTree(t0, torch.zeros((n, *like.shape[1:])), t1, entropy=int(s) % 2**63)
            for s, n in zip(seeds, counts, strict=True)
        ]

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        lo, hi = sorted((float(sigma), float(sigma_next)))
        a, b = torch.tensor(lo), torch.tensor(hi)
        # ComfyUI orients the increment from the smaller to the larger noise level and then
        # flips it for a descending step; the same sign here gives the same path.
        sign = -1.0 if sigma > sigma_next else 1.0
        with warnings.catch_warnings():  # float32 round-off at the tree's ends
            warnings.simplefilter("ignore", UserWarning)
            w = torch.cat([tree(a, b) for tree in self.trees]) * sign
        return (w / math.sqrt(hi - lo)).to(self.device, self.dtype)
