"""Second-order single-step ODE samplers: Heun (Karras et al. 2022, Algorithm 1: an Euler
predictor and the trapezoidal corrector) and DPM-2 (the midpoint in log sigma, after
Lu et al. 2022's DPM-Solver-2 in Karras et al.'s formulation), and DPM-2 ancestral.
The last step (to sigma 0) is a plain Euler step: the corrector would divide by 0."""

from __future__ import annotations

import math

import torch

from runner.diffusion.k_samplers.common import ancestral_step, no_callback, sigma_list, to_d


def sample_heun(model, x, sigmas, *, noise=None, callback=no_callback) -> torch.Tensor:
    """``x' = x + h d(x)``, then ``x_{i+1} = x + h (d(x) + d(x')) / 2`` with ``h = sigma_{i+1} - sigma_i``."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        d = to_d(x, s[i], denoised)
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, s[i + 1], model(x2, s[i + 1]))
            x = x + (d + d2) * (dt / 2)
        callback(i, x, denoised)
    return x


def _midpoint(a: float, b: float) -> float:
    return math.exp((math.log(a) + math.log(b)) / 2)


def sample_dpm_2(model, x, sigmas, *, noise=None, callback=no_callback) -> torch.Tensor:
    """The derivative at the log-sigma midpoint ``sqrt(sigma_i sigma_{i+1})`` drives the step."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        d = to_d(x, s[i], denoised)
        if s[i + 1] == 0:
            x = x + d * (s[i + 1] - s[i])
        else:
            mid = _midpoint(s[i], s[i + 1])
            x2 = x + d * (mid - s[i])
            d2 = to_d(x2, mid, model(x2, mid))
            x = x + d2 * (s[i + 1] - s[i])
        callback(i, x, denoised)
    return x


def sample_dpm_2_ancestral(
    model, x, sigmas, *, noise, callback=no_callback, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    """DPM-2 to ``sigma_down``, then ``sigma_up`` of fresh noise."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1], eta)
        d = to_d(x, s[i], denoised)
        if down == 0:
            x = x + d * (down - s[i])
        else:
            mid = _midpoint(s[i], down)
            x2 = x + d * (mid - s[i])
            d2 = to_d(x2, mid, model(x2, mid))
            x = x + d2 * (down - s[i])
            x = x + noise(s[i], s[i + 1]) * (s_noise * up)
        callback(i, x, denoised)
    return x
