"""Sigma schedules: the noise levels a sigma-based sampler steps through, from the first
(largest) to the last (0), as ComfyUI's schedulers compute them.

Each takes a step count and either the model's :class:`~runner.diffusion.model_sampling.ModelSampling`
(schedules defined on its training timesteps) or a ``(sigma_min, sigma_max)`` range, and
returns a float32 tensor of ``steps + 1`` sigmas ending in 0:

================  ==========================================================================
normal            evenly spaced timesteps from ``t(sigma_max)`` to ``t(sigma_min)``
sgm_uniform       the same with ``steps + 1`` points, the last dropped (SGM's uniform spacing)
simple            every ``T / steps``-th training sigma from the top
ddim_uniform      every ``T // steps``-th training sigma from timestep 1 (DDIM's uniform)
karras            Karras et al. 2022, eq. 5: ``(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho``, rho 7
exponential       evenly spaced in ``log sigma``
polyexponential   ``log sigma`` spaced by ``ramp^rho`` (k-diffusion's polyexponential)
beta              training sigmas at the quantiles of a Beta(0.6, 0.6) (Lee et al. 2024, arXiv:2407.12173)
linear_quadratic  linear then quadratic in ``1 - sigma/sigma_max`` (Mochi's schedule, threshold 0.025)
kl_optimal        ``tan`` of evenly spaced ``atan sigma`` (Sabour et al. 2024, "Align Your Steps", KL-optimal)
================  ==========================================================================

plus :func:`sdturbo` (SDTurboScheduler: every 100th timestep from 999 down).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from runner.diffusion.model_sampling import ModelSampling


def _with_zero(values) -> torch.Tensor:
    out = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    return torch.cat([out, out.new_zeros(1)]).float()


def _check_steps(steps: int) -> None:
    if int(steps) < 1:
        raise ValueError(f"a schedule needs at least 1 step, got {steps}")


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (EDM), eq. 5: ``rho``-th power spacing between the two sigmas."""
    _check_steps(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _with_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log sigma from ``sigma_max`` to ``sigma_min``."""
    _check_steps(n)
    return _with_zero(
        torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    )


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """``log sigma = log sigma_min + ramp^rho (log sigma_max - log sigma_min)``, ramp 1 -> 0."""
    _check_steps(n)
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return _with_zero((ramp * (hi - lo) + lo).exp())


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The KL-optimal schedule: ``tan((1 - w) atan(sigma_max) + w atan(sigma_min))`` for ``w``
    evenly spaced in 0..1 (one step: ``sigma_max`` only)."""
    _check_steps(n)
    w = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    return _with_zero((w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)).tan())


def normal(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Evenly spaced timesteps from the model's largest to its smallest sigma (``sgm``:
    ``steps + 1`` points with the last dropped). A model whose smallest sigma is 0 gets
    one step more instead of a final 0."""
    _check_steps(steps)
    start = float(ms.timestep(ms.sigma_max))
    end = float(ms.timestep(ms.sigma_min))
    if sgm:
        ts = torch.linspace(start, end, steps + 1, dtype=torch.float64)[:-1]
        return _with_zero(ms.sigma(ts))
    if math.isclose(float(ms.sigma(end)), 0.0, abs_tol=1e-5):
        return ms.sigma(torch.linspace(start, end, steps + 1, dtype=torch.float64)).float()
    return _with_zero(ms.sigma(torch.linspace(start, end, steps, dtype=torch.float64)))


def simple(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every ``len(sigmas) / steps``-th training sigma counted from the largest."""
    _check_steps(steps)
    stride = len(ms.sigmas) / steps
    return _with_zero([float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)])


def ddim_uniform(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Training sigmas ``1, 1 + k, 1 + 2k, ...`` (``k = len // steps``), largest first, then 0
    (no 0 added when the table's sigma at index 1 is already 0)."""
    _check_steps(steps)
    table = [float(s) for s in ms.sigmas]
    if math.isclose(table[1], 0.0, abs_tol=1e-5):
        picked, stride = [], max(len(table) // (steps + 1), 1)
    else:
        picked, stride = [0.0], max(len(table) // steps, 1)
    picked += table[1::stride]
    return torch.tensor(picked[::-1], dtype=torch.float32)


def beta(ms: ModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Training sigmas at the Beta(alpha, beta) quantiles of ``1 - i/steps`` (repeats dropped)."""
    import scipy.stats

    _check_steps(steps)
    last = len(ms.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    picks = np.rint(scipy.stats.beta.ppf(quantiles, alpha, beta_) * last)
    out, previous = [], None
    for t in picks:
        if t != previous:
            out.append(float(ms.sigmas[int(t)]))
        previous = t
    return _with_zero(out)


def linear_quadratic(
    ms: ModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Mochi's linear-quadratic schedule in ``u = 1 - sigma / sigma_max``: ``u`` rises
    linearly to ``threshold_noise`` over the first half of the steps, then quadratically
    (continuous in value and slope) to 1."""
    _check_steps(steps)
    if steps == 1:
        u = [0.0, 1.0]
    else:
        lin = steps // 2 if linear_steps is None else linear_steps
        quad = steps - lin
        gap = lin - threshold_noise * steps
        a = gap / (lin * quad**2)
        b = threshold_noise / lin - 2 * gap / quad**2
        c = a * lin**2
        u = [i * threshold_noise / lin for i in range(lin)]
        u += [a * i * i + b * i + c for i in range(lin, steps)]
        u += [1.0]
    return (torch.tensor([1.0 - v for v in u], dtype=torch.float64) * ms.sigma_max).float()


def sdturbo(ms: ModelSampling, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SDTurboScheduler: the timesteps 999, 899, ..., 99, starting ``10 - int(10 denoise)``
    of them in, ``steps`` of them, then 0."""
    _check_steps(steps)
    start = 10 - int(10 * denoise)
    timesteps = (torch.arange(10, 0, -1, dtype=torch.float64) * 100 - 1)[start : start + steps]
    return _with_zero(ms.sigma(timesteps))


SCHEDULES: dict[str, Callable[[ModelSampling, int], torch.Tensor]] = {
    "simple": simple,
    "sgm_uniform": lambda ms, n: normal(ms, n, sgm=True),
    "karras": lambda ms, n: karras(n, ms.sigma_min, ms.sigma_max),
    "exponential": lambda ms, n: exponential(n, ms.sigma_min, ms.sigma_max),
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": lambda ms, n: kl_optimal(n, ms.sigma_min, ms.sigma_max),
}
"""ComfyUI's scheduler names (``comfy.samplers.SCHEDULER_NAMES``, in its order) -> schedule."""

SCHEDULER_NAMES = tuple(SCHEDULES)


def calculate_sigmas(ms: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """The ``steps + 1`` sigmas of a named schedule for the model."""
    if scheduler not in SCHEDULES:
        raise ValueError(f"unknown scheduler {scheduler!r}; one of {', '.join(SCHEDULES)}")
    return SCHEDULES[scheduler](ms, int(steps))


def denoise_sigmas(ms: ModelSampling, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """BasicScheduler's sigmas: for ``denoise < 1`` the last ``steps + 1`` of a schedule of
    ``int(steps / denoise)`` steps; an empty tensor for ``denoise <= 0``."""
    if denoise <= 0.0:
        return torch.zeros(0)
    total = steps if denoise >= 1.0 else int(steps / denoise)
    return calculate_sigmas(ms, scheduler, total)[-(steps + 1) :]


__all__ = [
    "SCHEDULER_NAMES",
    "SCHEDULES",
    "beta",
    "calculate_sigmas",
    "ddim_uniform",
    "denoise_sigmas",
    "exponential",
    "karras",
    "kl_optimal",
    "linear_quadratic",
    "normal",
    "polyexponential",
    "sdturbo",
    "simple",
]
