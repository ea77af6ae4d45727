"""Multistep samplers that reuse earlier model evaluations:

* ``ipndm``: improved pseudo-numerical methods (Zhang & Chen 2023, "Fast Sampling of
  Diffusion Models with Exponential Integrator", iPNDM): Adams-Bashforth steps of order up
  to 4 in sigma on ``d = (x - D(x)) / sigma``, with the fixed-step coefficients
  ``(3, -1)/2``, ``(23, -16, 5)/12``, ``(55, -59, 37, -9)/24``, lower order while the history
  is short;
* ``res_multistep``: the second-order multistep exponential integrator of Zhang et al.
  2023 ("Improved Order Analysis and Design of Exponential Integrator for Diffusion
  Models", arXiv:2308.02157, RES): in ``lambda = -log sigma``,
  ``x_{i+1} = e^{-h} x_i + h (b_1 D_i + b_2 D_{i-1})`` with ``b_1 = phi_1(-h) - phi_2(-h)/c``,
  ``b_2 = phi_2(-h)/c``, ``c = (lambda_{i-1} - lambda_i) / h`` the previous step's length
  relative to this one, ``phi_1(z) = (e^z - 1)/z``, ``phi_2(z) = (phi_1(z) - 1)/z``.
"""

from __future__ import annotations

import math

import torch

from runner.diffusion.k_samplers.common import ancestral_step, no_callback, sigma_list, to_d

_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def sample_ipndm(
    model, x, sigmas, *, noise=None, callback=no_callback, max_order: int = 4
) -> torch.Tensor:
    """iPNDM; the last step to 0 returns the denoised estimate."""
    s = sigma_list(sigmas)
    history: list[torch.Tensor] = []  # newest first
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        d = to_d(x, s[i], denoised)
        order = min(max_order, i + 1)
        if s[i + 1] == 0:
            x_next = denoised
        else:
            ds = [d, *history][:order]
            slope = sum(c * v for c, v in zip(_ADAMS_BASHFORTH[order], ds, strict=True))
            x_next = x + (s[i + 1] - s[i]) * slope
        history = [d, *history][: max_order - 1]
        x = x_next
        callback(i, x, denoised)
    return x


def _phi1(z: float) -> float:
    return math.expm1(z) / z


def _phi2(z: float) -> float:
    return (_phi1(z) - 1.0) / z


def res_multistep(
    model,
    x,
    sigmas,
    *,
    noise,
    callback=no_callback,
    eta: float = 0.0,
    s_noise: float = 1.0,
    cfg_pp: bool = False,
) -> torch.Tensor:
    """RES second-order multistep (first step: Euler); ``eta > 0`` makes it ancestral and
    ``cfg_pp`` steps along the unconditional estimate (CFG++)."""
    s = sigma_list(sigmas)
    if cfg_pp:
        model.needs_uncond = True
    previous = None
    old_down = None
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        uncond = model.uncond if cfg_pp else denoised
        down, up = ancestral_step(s[i], s[i + 1], eta)
        if down == 0 or previous is None:
            if cfg_pp:
                x = denoised + to_d(x, s[i], uncond) * down
            else:
                x = x + to_d(x, s[i], denoised) * (down - s[i])
        else:
            lam, lam_old = -math.log(s[i]), -math.log(old_down)
            lam_next, lam_prev = -math.log(down), -math.log(s[i - 1])
            h = lam_next - lam
            c2 = (lam_prev - lam_old) / h
            p1, p2 = _phi1(-h), _phi2(-h)
            b1 = p1 - p2 / c2 if c2 else 0.0
            b2 = p2 / c2 if c2 else 0.0
            if cfg_pp:
                x = x + (denoised - uncond)
                x = math.exp(-h) * x + h * (b1 * uncond + b2 * previous)
            else:
                x = math.exp(-h) * x + h * (b1 * denoised + b2 * previous)
        if s[i + 1] > 0 and up > 0:
            x = x + noise(s[i], s[i + 1]) * (s_noise * up)
        previous = uncond
        old_down = down
        callback(i, x, denoised)
    return x


def sample_res_multistep(model, x, sigmas, *, noise, callback=no_callback) -> torch.Tensor:
    """RES multistep, deterministic (ComfyUI's ``res_multistep``)."""
    return res_multistep(model, x, sigmas, noise=noise, callback=callback, eta=0.0)
