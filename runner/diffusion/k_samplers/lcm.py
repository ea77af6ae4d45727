"""Samplers that jump to the denoised estimate and re-noise:

* ``lcm``: latent consistency model sampling (Luo et al. 2023, "Latent Consistency Models",
  Algorithm 1, multistep consistency sampling): ``x_{i+1} = D(x_i) + sigma_{i+1} z``;
* ``ddpm``: ancestral DDPM sampling (Ho et al. 2020, Algorithm 2) between the schedule's
  noise levels: in the variance-preserving ``x / sqrt(1 + sigma^2)`` with
  ``alpha_bar = 1 / (1 + sigma^2)``, the posterior mean
  ``(x_t - (1 - a) eps / sqrt(1 - alpha_bar_t)) / sqrt(a)`` (``a = alpha_bar_t / alpha_bar_s``)
  plus the posterior standard deviation ``sqrt((1 - a)(1 - alpha_bar_s)/(1 - alpha_bar_t))`` of noise.
"""

from __future__ import annotations

import math

import torch

from runner.diffusion.k_samplers.common import no_callback, sigma_list


def sample_lcm(model, x, sigmas, *, noise, callback=no_callback) -> torch.Tensor:
    """Denoise, then add ``sigma_{i+1}`` of fresh noise (none at the end)."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        x = denoised
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * s[i + 1]
        callback(i, x, denoised)
    return x


def sample_ddpm(model, x, sigmas, *, noise, callback=no_callback) -> torch.Tensor:
    """One DDPM posterior sample per step (from ``sigma_i``'s level to ``sigma_{i+1}``'s)."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        eps = (x - denoised) / s[i]
        ab_t = 1 / (s[i] ** 2 + 1)
        ab_s = 1 / (s[i + 1] ** 2 + 1)
        a = ab_t / ab_s
        vp = x / math.sqrt(1.0 + s[i] ** 2)
        mean = (vp - (1 - a) * eps / math.sqrt(1 - ab_t)) / math.sqrt(a)
        if s[i + 1] > 0:
            std = math.sqrt((1 - a) * (1 - ab_s) / (1 - ab_t))
            mean = mean + std * noise(s[i], s[i + 1])
            x = mean * math.sqrt(1.0 + s[i + 1] ** 2)
        else:
            x = mean
        callback(i, x, denoised)
    return x
