"""Sigma-based samplers (k-diffusion style: ``x``, a schedule of sigmas and a denoiser
``D(x, sigma) -> x0``), written for easel from their papers, one module per family:
:mod:`.euler`, :mod:`.heun`, :mod:`.lms`, :mod:`.dpmpp`, :mod:`.multistep`, :mod:`.lcm`,
:mod:`.cfg_pp`; what they share is in :mod:`.common` and the loop that runs them on a
checkpoint for a batch of jobs in :mod:`.driver`.

:data:`SAMPLERS` maps ComfyUI's sampler names (``comfy.samplers.KSAMPLER_NAMES``, in its
order, those easel runs) to a :class:`Sampler`. The ``_gpu`` names are ComfyUI's SDE
samplers with the Brownian tree kept on the GPU, which makes their noise depend on the
device; easel runs the same algorithm with the tree on the CPU from the job's seed, so
the image is the same on every device (and equals the name without ``_gpu``).
``ddim`` is ComfyUI's: Euler on the sigma schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.diffusion.k_samplers.cfg_pp import sample_euler_ancestral_cfg_pp, sample_euler_cfg_pp
from runner.diffusion.k_samplers.dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from runner.diffusion.k_samplers.euler import sample_euler, sample_euler_ancestral
from runner.diffusion.k_samplers.heun import sample_dpm_2, sample_dpm_2_ancestral, sample_heun
from runner.diffusion.k_samplers.lcm import sample_ddpm, sample_lcm
from runner.diffusion.k_samplers.lms import sample_lms
from runner.diffusion.k_samplers.multistep import sample_ipndm, sample_res_multistep


@dataclass(frozen=True)
class Sampler:
    """SAMPLER: a sampler function with fixed options and the kind of step noise it draws
    (``"gaussian"``, ``"brownian"`` or None for deterministic samplers)."""

    name: str
    function: Callable[..., Any] = field(compare=False)
    options: tuple[tuple[str, Any], ...] = ()
    noise: str | None = None
    discard_penultimate_sigma: bool = False
    """KSampler builds one step more and drops the second-to-last sigma (ComfyUI's DPM-2)."""


def _s(name, fn, noise=None, discard=False, **options) -> Sampler:
    return Sampler(name, fn, tuple(sorted(options.items())), noise, discard)


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        _s("euler", sample_euler),
        _s("euler_cfg_pp", sample_euler_cfg_pp, "gaussian"),
        _s("euler_ancestral", sample_euler_ancestral, "gaussian"),
        _s("euler_ancestral_cfg_pp", sample_euler_ancestral_cfg_pp, "gaussian"),
        _s("heun", sample_heun),
        _s("dpm_2", sample_dpm_2, discard=True),
        _s("dpm_2_ancestral", sample_dpm_2_ancestral, "gaussian", discard=True),
        _s("lms", sample_lms),
        _s("dpmpp_2s_ancestral", sample_dpmpp_2s_ancestral, "gaussian"),
        _s("dpmpp_sde", sample_dpmpp_sde, "brownian"),
        _s("dpmpp_sde_gpu", sample_dpmpp_sde, "brownian"),
        _s("dpmpp_2m", sample_dpmpp_2m),
        _s("dpmpp_2m_sde", sample_dpmpp_2m_sde, "brownian"),
        _s("dpmpp_2m_sde_gpu", sample_dpmpp_2m_sde, "brownian"),
        _s("dpmpp_3m_sde", sample_dpmpp_3m_sde, "brownian"),
        _s("dpmpp_3m_sde_gpu", sample_dpmpp_3m_sde, "brownian"),
        _s("ddpm", sample_ddpm, "gaussian"),
        _s("lcm", sample_lcm, "gaussian"),
        _s("ipndm", sample_ipndm),
        _s("res_multistep", sample_res_multistep, "gaussian"),
        _s("ddim", sample_euler),
    )
}
"""ComfyUI sampler name -> sampler, in ComfyUI's order (``ddim`` last, as in SAMPLER_NAMES)."""

SAMPLER_NAMES = tuple(SAMPLERS)


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``; a ValueError listing the names otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "SAMPLER_NAMES", "Sampler", "get_sampler"]
