"""Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE, as in
Karras et al. 2022's k-diffusion ``lms``: each step integrates the Lagrange polynomial
through the last ``order`` derivatives ``d_j = (x_j - D(x_j)) / sigma_j`` over
``[sigma_i, sigma_{i+1}]``. The integrals are computed exactly (polynomial antiderivative)."""

from __future__ import annotations

import numpy as np
import torch

from runner.diffusion.k_samplers.common import no_callback, sigma_list, to_d


def lms_coefficients(nodes: list[float], start: float, end: float) -> list[float]:
    """``integral_start^end l_j(tau) dtau`` for each Lagrange basis polynomial ``l_j`` of the
    ``nodes`` (``nodes[0]`` the newest)."""
    out = []
    for j, node in enumerate(nodes):
        poly = np.polynomial.Polynomial([1.0])
        for k, other in enumerate(nodes):
            if k != j:
                poly = poly * np.polynomial.Polynomial([-other, 1.0]) / (node - other)
        anti = poly.integ()
        out.append(float(anti(end) - anti(start)))
    return out


def sample_lms(model, x, sigmas, *, noise=None, callback=no_callback, order: int = 4):
    """Up to ``order``-th order (lower while the history is short); the last step to 0
    returns the denoised estimate."""
    s = sigma_list(sigmas)
    history: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = model(x, s[i])
        history.insert(0, to_d(x, s[i], denoised))
        del history[order:]
        if s[i + 1] == 0:
            x = denoised
        else:
            nodes = [s[i - k] for k in range(len(history))]
            coeffs = lms_coefficients(nodes, s[i], s[i + 1])
            x = x + sum(c * d for c, d in zip(coeffs, history, strict=True))
        callback(i, x, denoised)
    return x
