"""ComfyUI's sampler and scheduler names, mapped onto the diffusers schedulers that compute
the same thing. A name (or a combination) with no faithful diffusers equivalent is not
listed, so validation rejects it and lists what is supported instead of swapping silently.

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

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
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

SCHEDULERS: dict[str, dict[str, Any]] = {
    "normal": {"timestep_spacing": "linspace"},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "sgm_uniform": {"timestep_spacing": "trailing"},
    "simple": {"timestep_spacing": "trailing"},
    "ddim_uniform": {"timestep_spacing": "leading", "steps_offset": 1},
}
"""ComfyUI scheduler name -> diffusers scheduler options."""

_STEP_ONLY = {"eta"}  # options passed to step(), not to the constructor


def _init_params(class_name: str) -> set[str]:
    cls = getattr(diffusers, class_name)
    return set(inspect.signature(cls.__init__).parameters)


def supported_schedulers(sampler: str) -> list[str]:
    """The scheduler names that ``sampler`` has a faithful diffusers equivalent for."""
    class_name, _ = SAMPLERS[sampler]
    params = _init_params(class_name)
    return [name for name, options in SCHEDULERS.items() if set(options) <= params]


def check_combination(sampler: str, scheduler: str) -> str | None:
    """None if the pair maps faithfully onto diffusers, else a sentence listing what does."""
    if sampler not in SAMPLERS or scheduler not in SCHEDULERS:
        return None  # the COMBO check reports unknown names
    supported = supported_schedulers(sampler)
    if scheduler in supported:
        return None
    return (
        f"sampler {sampler!r} has no faithful diffusers equivalent with scheduler {scheduler!r}; "
        f"with {sampler} use one of: {', '.join(supported)}"
    )


def make_scheduler(sampler: str, scheduler: str, base_config: dict[str, Any]):
    """A fresh diffusers scheduler for the pair, keeping the checkpoint's betas and
    prediction type from ``base_config``. Returns ``(scheduler, step_kwargs)``."""
    problem = check_combination(sampler, scheduler)
    if problem:
        raise ValueError(problem)
    class_name, fixed = SAMPLERS[sampler]
    cls = getattr(diffusers, class_name)
    params = _init_params(class_name)
    # Keep only what this class accepts (a PNDM config has keys Euler would warn about).
    config = {k: v for k, v in dict(base_config).items() if k in params}
    # Options the base config carries that this class would misread are dropped; the
    # spacing options are then set by the ComfyUI scheduler name.
    for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        config.pop(key, None)
    options = {k: v for k, v in fixed.items() if k not in _STEP_ONLY}
    options.update(SCHEDULERS[scheduler])
    if "timestep_spacing" in params and "timestep_spacing" not in options:
        options["timestep_spacing"] = "linspace"
    unknown = set(options) - params
    if unknown:  # pragma: no cover - guarded by check_combination
        raise ValueError(f"{class_name} does not accept {sorted(unknown)}")
    step_kwargs = {k: v for k, v in fixed.items() if k in _STEP_ONLY}
    return cls.from_config(config, **options), step_kwargs
