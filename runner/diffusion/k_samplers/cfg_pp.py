"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance
for Diffusion Models", arXiv:2406.08070): the step goes to the guided denoised estimate but
re-noises along the *unconditional* noise estimate, ``x_{i+1} = D_cfg(x_i) +
sigma_down (x_i - D_uncond(x_i)) / sigma_i`` (DDIM form with the unconditional epsilon),
with ``sigma_up`` of fresh noise for the ancestral variant. They need the unconditional
prediction at every step, also at cfg 1 (the guided model computes both sides)."""

from __future__ import annotations

import torch

from runner.diffusion.k_samplers.common import ancestral_step, no_callback, sigma_list, to_d


def sample_euler_ancestral_cfg_pp(
    model, x, sigmas, *, noise, callback=no_callback, eta: float = 1.0, s_noise: float = 1.0
) -> torch.Tensor:
    """CFG++ Euler ancestral; the last step returns the guided denoised estimate."""
    model.needs_uncond = True
    s = sigma_list(sigmas)
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        uncond = model.uncond
        if s[i + 1] == 0:
            x = denoised
        else:
            down, up = ancestral_step(s[i], s[i + 1], eta)
            x = denoised + to_d(x, s[i], uncond) * down
            if eta > 0 and s_noise > 0:
                x = x + noise(s[i], s[i + 1]) * (s_noise * up)
        callback(i, x, denoised)
    return x


def sample_euler_cfg_pp(model, x, sigmas, *, noise, callback=no_callback) -> torch.Tensor:
    """CFG++ Euler: the ancestral variant with ``eta = 0`` (no fresh noise)."""
    return sample_euler_ancestral_cfg_pp(
        model, x, sigmas, noise=noise, callback=callback, eta=0.0, s_noise=0.0
    )
