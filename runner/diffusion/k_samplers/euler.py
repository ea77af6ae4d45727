"""Euler and Euler ancestral on the probability-flow ODE (Karras et al. 2022, "Elucidating
the Design Space of Diffusion-Based Generative Models", Algorithm 2 with first-order steps;
the ancestral variant splits each step into a deterministic step to ``sigma_down`` and
fresh noise of ``sigma_up``, as Ho et al. 2020's ancestral sampling does)."""

from __future__ import annotations

import torch

from runner.diffusion.k_samplers.common import (
    ancestral_step,
    no_callback,
    sigma_list,
    to_d,
)


def sample_euler(model, x, sigmas, *, noise=None, callback=no_callback) -> torch.Tensor:
    """``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (x_i - D(x_i)) / sigma_i``."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        x = x + to_d(x, s[i], denoised) * (s[i + 1] - s[i])
        callback(i, x, denoised)
    return x


def sample_euler_ancestral(
    model, x, sigmas, *, noise, callback=no_callback, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    """An Euler step to ``sigma_down``, then ``sigma_up`` of fresh noise; the last step
    (to 0) returns the denoised estimate."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1], eta)
        if down == 0:
            x = denoised
        else:
            x = x + to_d(x, s[i], denoised) * (down - s[i])
            x = x + noise(s[i], s[i + 1]) * (s_noise * up)
        callback(i, x, denoised)
    return x
