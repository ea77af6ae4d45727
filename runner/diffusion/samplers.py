"""ComfyUI's sampler and scheduler names, KSampler's lists and which path runs a pair.

A pair runs on a diffusers scheduler where one computes the same thing (the tables below;
existing images stay as they were), else on easel's own sigma-based samplers
(:mod:`runner.diffusion.k_samplers` with :mod:`runner.diffusion.schedules`). A pair neither
path computes faithfully is a validation error listing what is supported, never swapped
silently.

Samplers map to a scheduler class with fixed options; ComfyUI's "schedulers" (the sigma
spacing) map to options of that class:

=============  =============================================
normal         ``timestep_spacing="linspace"`` (evenly spaced timesteps, sigma_max to 0)
karras         ``use_karras_sigmas=True``
exponential    ``use_exponential_sigmas=True``
beta           ``use_beta_sigmas=True``
sgm_uniform    ``timestep_spacing="trailing"``
simple         ``timestep_spacing="trailing"`` (every n-th training sigma from the end)
ddim_uniform   ``timestep_spacing="leading"`` with ``steps_offset=1``
=============  =============================================
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers

from runner.diffusion import k_samplers
from runner.diffusion.schedules import SCHEDULER_NAMES

COMFY_SAMPLER_NAMES = (
    "euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp heun heunpp2 exp_heun_2_x0 "
    "exp_heun_2_x0_sde dpm_2 dpm_2_ancestral lms dpm_fast dpm_adaptive dpmpp_2s_ancestral "
    "dpmpp_2s_ancestral_cfg_pp dpmpp_sde dpmpp_sde_gpu dpmpp_2m dpmpp_2m_cfg_pp dpmpp_2m_sde "
    "dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde dpmpp_3m_sde_gpu "
    "ddpm lcm ipndm ipndm_v deis cfgpp_ud10_ab res_multistep res_multistep_cfg_pp "
    "res_multistep_ancestral res_multistep_ancestral_cfg_pp gradient_estimation "
    "gradient_estimation_cfg_pp er_sde seeds_2 seeds_3 sa_solver sa_solver_pece "
    "ddim uni_pc uni_pc_bh2"
).split()
"""ComfyUI's ``comfy.samplers.SAMPLER_NAMES``, in its order (KSampler's sampler list)."""

DIFFUSERS_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_ancestral": ("KDPM2AncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_3m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    ),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "ddim": ("DDIMScheduler", {"eta": 0.0}),
    "ddpm": ("DDPMScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    # bh1's last step to sigma 0 divides by an infinite log-SNR step and gives NaN; ComfyUI
    # stops UniPC just above 0 (0.001), diffusers' nearest option is the smallest sigma.
    "uni_pc": ("UniPCMultistepScheduler", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    "uni_pc_bh2": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "lcm": ("LCMScheduler", {}),
}
"""ComfyUI sampler name -> (diffusers scheduler class, fixed constructor options)."""

DIFFUSERS_SCHEDULERS: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
}
"""ComfyUI scheduler name -> diffusers scheduler options."""

SAMPLER_NAMES = tuple(
    n for n in COMFY_SAMPLER_NAMES if n in DIFFUSERS_SAMPLERS or n in k_samplers.SAMPLERS
)
"""The sampler names KSampler offers: ComfyUI's that easel runs faithfully, in its order."""

SAMPLERS: dict[str, tuple[str, dict[str, Any]] | None] = {
    n: DIFFUSERS_SAMPLERS.get(n) for n in SAMPLER_NAMES
}
"""Every KSampler sampler name -> its diffusers scheduler, or None (sigma path only)."""

SCHEDULERS: dict[str, dict[str, Any] | None] = {
    n: DIFFUSERS_SCHEDULERS.get(n) for n in SCHEDULER_NAMES
}
"""Every KSampler scheduler name (ComfyUI's, in its order) -> diffusers options, or None."""

_STEP_ONLY = {"eta"}  # options passed to step(), not to the constructor


def _init_params(class_name: str) -> set[str]:
    cls = getattr(diffusers, class_name)
    return set(inspect.signature(cls.__init__).parameters)


def diffusers_schedulers(sampler: str) -> list[str]:
    """The scheduler names that ``sampler``'s diffusers scheduler computes faithfully."""
    if sampler not in DIFFUSERS_SAMPLERS:
        return []
    class_name, _ = DIFFUSERS_SAMPLERS[sampler]
    params = _init_params(class_name)
    return [
        name
        for name in SCHEDULER_NAMES
        if name in DIFFUSERS_SCHEDULERS and set(DIFFUSERS_SCHEDULERS[name]) <= params
    ]


def supported_schedulers(sampler: str) -> list[str]:
    """The scheduler names ``sampler`` runs faithfully with, on either path (ComfyUI's order)."""
    if sampler in k_samplers.SAMPLERS:
        return list(SCHEDULER_NAMES)
    return diffusers_schedulers(sampler)


def uses_sigma_path(
    sampler: str, scheduler: str, prediction: str | None = None, zsnr: bool = False
) -> bool:
    """Whether KSampler runs the pair on easel's sigma samplers: diffusers has no faithful
    equivalent for the sampler, the scheduler or the pair, or the MODEL asks for LCM
    sampling or zero terminal SNR (ModelSamplingDiscrete), which diffusers' schedulers
    compute differently."""
    if sampler not in k_samplers.SAMPLERS:
        return False
    if prediction == "lcm" or zsnr:
        return True
    return scheduler not in diffusers_schedulers(sampler)


def check_combination(sampler: str, scheduler: str) -> str | None:
    """None if the pair runs faithfully on either path, else a sentence listing what does."""
    if sampler not in SAMPLERS or scheduler not in SCHEDULERS:
        return None  # the COMBO check reports unknown names
    supported = supported_schedulers(sampler)
    if scheduler in supported:
        return None
    return (
        f"sampler {sampler!r} has no faithful implementation with scheduler {scheduler!r}; "
        f"with {sampler} use one of: {', '.join(supported)}"
    )


def make_scheduler(sampler: str, scheduler: str, base_config: dict[str, Any]):
    """A fresh diffusers scheduler for the pair, keeping the checkpoint's betas and
    prediction type from ``base_config``. Returns ``(scheduler, step_kwargs)``."""
    if scheduler not in diffusers_schedulers(sampler):
        raise ValueError(
            f"sampler {sampler!r} with scheduler {scheduler!r} has no faithful diffusers "
            f"equivalent; with {sampler} diffusers computes: "
            f"{', '.join(diffusers_schedulers(sampler)) or 'none'}"
        )
    class_name, fixed = DIFFUSERS_SAMPLERS[sampler]
    cls = getattr(diffusers, class_name)
    params = _init_params(class_name)
    # Keep only what this class accepts (a PNDM config has keys Euler would warn about).
    config = {k: v for k, v in dict(base_config).items() if k in params}
    # Options the base config carries that this class would misread are dropped; the
    # spacing options are then set by the ComfyUI scheduler name.
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        config.pop(key, None)
    options = {k: v for k, v in fixed.items() if k not in _STEP_ONLY}
    options.update(DIFFUSERS_SCHEDULERS[scheduler])
    if "timestep_spacing" in params and "timestep_spacing" not in options:
        options["timestep_spacing"] = "linspace"
    step_kwargs = {k: v for k, v in fixed.items() if k in _STEP_ONLY}
    return cls.from_config(config, **options), step_kwargs
