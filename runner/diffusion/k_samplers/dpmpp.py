"""DPM-Solver++ samplers (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", arXiv:2211.01095), in data prediction and the time
``lambda = -log sigma`` (the half log-SNR of a variance-exploding ``x``):

* ``dpmpp_2s_ancestral``: the single-step second-order solver (2S, midpoint ``r = 1/2``)
  to ``sigma_down``, then ancestral noise;
* ``dpmpp_sde``: the stochastic single-step second-order solver: each of the two stages
  is an ancestral step (``eta``) in lambda, with Brownian-tree noise;
* ``dpmpp_2m``: the multistep second-order solver (2M), eq. 11 / Algorithm 2;
* ``dpmpp_2m_sde`` / ``dpmpp_3m_sde``: the SDE variants (section 4 of the paper, the
  exponential integrator of the reverse SDE with ``eta`` scaling the noise), multistep of
  order 2 (midpoint or Heun correction) and 3.

Every step to sigma 0 returns the denoised estimate (the exact last step of a
data-prediction solver).
"""

from __future__ import annotations

import math

import torch

from runner.diffusion.k_samplers.common import ancestral_step, no_callback, sigma_list, to_d


def _lam(sigma: float) -> float:
    return -math.log(sigma)


def sample_dpmpp_2s_ancestral(
    model, x, sigmas, *, noise, callback=no_callback, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    """DPM-Solver++(2S) from ``sigma_i`` to ``sigma_down`` through the lambda midpoint, then
    ``sigma_up`` of fresh noise."""
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        down, up = ancestral_step(s[i], s[i + 1], eta)
        if down == 0:
            x = x + to_d(x, s[i], denoised) * (down - s[i])
        else:
            h = _lam(down) - _lam(s[i])
            mid = math.exp(-(_lam(s[i]) + h / 2))
            x2 = (mid / s[i]) * x - math.expm1(-h / 2) * denoised
            denoised2 = model(x2, mid)
            x = (down / s[i]) * x - math.expm1(-h) * denoised2
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * (s_noise * up)
        callback(i, x, denoised)
    return x


def sample_dpmpp_sde(
    model,
    x,
    sigmas,
    *,
    noise,
    callback=no_callback,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """Two stages per step: an ancestral first-order step to ``lambda_s + r h``, then from the
    start to ``lambda_t`` with the denoised estimates mixed ``(1 - 1/(2r)) D_1 + 1/(2r) D_2``."""
    s = sigma_list(sigmas)
    fac = 1 / (2 * r)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = _lam(s[i]), _lam(s[i + 1])
            h = lam_t - lam_s
            s_mid = math.exp(-(lam_s + r * h))
            down, up = ancestral_step(s[i], s_mid, eta)
            x2 = (down / s[i]) * x - math.expm1(-(_lam(down) - lam_s)) * denoised
            if eta > 0 and s_noise > 0:
                x2 = x2 + noise(s[i], s_mid) * (s_noise * up)
            denoised2 = model(x2, s_mid)
            down, up = ancestral_step(s[i], s[i + 1], eta)
            mixed = (1 - fac) * denoised + fac * denoised2
            x = (down / s[i]) * x - math.expm1(-(_lam(down) - lam_s)) * mixed
            if eta > 0 and s_noise > 0:
                x = x + noise(s[i], s[i + 1]) * (s_noise * up)
        callback(i, x, denoised)
    return x


def sample_dpmpp_2m(model, x, sigmas, *, noise=None, callback=no_callback) -> torch.Tensor:
    """DPM-Solver++(2M): ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i - (e^{-h} - 1) D'`` with
    ``D' = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}``, ``r = h_{i-1} / h_i`` (first order at the start)."""
    s = sigma_list(sigmas)
    previous = None
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = _lam(s[i + 1]) - _lam(s[i])
            if previous is None:
                mixed = denoised
            else:
                ratio = (_lam(s[i]) - _lam(s[i - 1])) / h
                mixed = (1 + 1 / (2 * ratio)) * denoised - (1 / (2 * ratio)) * previous
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * mixed
        previous = denoised
        callback(i, x, denoised)
    return x


def sample_dpmpp_2m_sde(
    model,
    x,
    sigmas,
    *,
    noise,
    callback=no_callback,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE: ``x = (s_t/s_s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D`` plus the
    second-order correction from the previous estimate, plus
    ``s_t sqrt(1 - e^{-2 eta h})`` of Brownian noise."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    s = sigma_list(sigmas)
    previous, h_last = None, None
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = _lam(s[i + 1]) - _lam(s[i])
            h_eta = h * (eta + 1)
            one_minus = -math.expm1(-h_eta)
            x = (s[i + 1] / s[i]) * math.exp(-h * eta) * x + one_minus * denoised
            if previous is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (one_minus / (-h_eta) + 1) * (1 / r) * (denoised - previous)
                else:
                    x = x + 0.5 * one_minus * (1 / r) * (denoised - previous)
            if eta > 0 and s_noise > 0:
                scale = s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                x = x + noise(s[i], s[i + 1]) * scale
            h_last = h
        previous = denoised
        callback(i, x, denoised)
    return x


def sample_dpmpp_3m_sde(
    model, x, sigmas, *, noise, callback=no_callback, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: the 2M SDE step with first and second divided differences of
    the last three denoised estimates (``phi_2``, ``phi_3`` of ``h (1 + eta)``)."""
    s = sigma_list(sigmas)
    d_1 = d_2 = None
    h_1 = h_2 = None
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        h = None
        if s[i + 1] == 0:
            x = denoised
        else:
            h = _lam(s[i + 1]) - _lam(s[i])
            h_eta = h * (eta + 1)
            x = (s[i + 1] / s[i]) * math.exp(-h * eta) * x - math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                diff0 = (denoised - d_1) / r0
                diff1 = (d_1 - d_2) / r1
                first = diff0 + (diff0 - diff1) * (r0 / (r0 + r1))
                second = (diff0 - diff1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * first - phi_3 * second
            elif h_1 is not None:
                x = x + phi_2 * ((denoised - d_1) / (h_1 / h))
            if eta > 0 and s_noise > 0:
                scale = s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                x = x + noise(s[i], s[i + 1]) * scale
        d_1, d_2 = denoised, d_1
        h_1, h_2 = h, h_1
        callback(i, x, denoised)
    return x
