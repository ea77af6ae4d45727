"""ComfyUI's sampler and scheduler names on diffusers schedulers: every supported pair runs
and gives a finite image; unsupported pairs and unknown names are validation errors that
list what is supported."""

from __future__ import annotations

import numpy as np
import pytest
from runner_testlib import image_of, txt2img_workflow, with_inputs

from runner.diffusion.samplers import (
    SAMPLERS,
    SCHEDULERS,
    check_combination,
    make_scheduler,
    supported_schedulers,
)
from runner.validation import validate

ISSUE_SAMPLERS = (
    "euler euler_ancestral heun dpm_2 dpm_2_ancestral lms dpmpp_2m dpmpp_2m_sde dpmpp_sde ddim uni_pc lcm"
).split()
ISSUE_SCHEDULERS = "normal karras exponential sgm_uniform simple ddim_uniform".split()

SUPPORTED = [(s, k) for s in SAMPLERS for k in SCHEDULERS if k in supported_schedulers(s)]
UNSUPPORTED = [(s, k) for s in SAMPLERS for k in SCHEDULERS if k not in supported_schedulers(s)]


@pytest.fixture(scope="module")
def base(module_env):
    return txt2img_workflow(module_env, steps=2, cfg=5.0)


def test_the_issue_names_are_all_known():
    assert set(ISSUE_SAMPLERS) <= set(SAMPLERS)
    assert set(ISSUE_SCHEDULERS) <= set(SCHEDULERS)


def test_every_sampler_has_normal_and_every_scheduler_has_euler():
    for sampler in SAMPLERS:
        assert "normal" in supported_schedulers(sampler), sampler
    for scheduler in SCHEDULERS:
        assert scheduler in supported_schedulers("euler"), scheduler


@pytest.mark.parametrize(
    ("sampler", "scheduler"), SUPPORTED, ids=[f"{s}-{k}" for s, k in SUPPORTED]
)
def test_every_supported_combination_runs_and_gives_a_finite_image(
    module_env, base, sampler, scheduler
):
    events = []
    workflow = with_inputs(base, "3", sampler_name=sampler, scheduler=scheduler)
    result = module_env.run(workflow, on_event=events.append)
    image = image_of(result)
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all()
    assert np.isfinite(result.values["3"][0]["samples"].numpy()).all()
    progress = [(e.step, e.total) for e in events if e.type == "progress"]
    assert progress == [(1, 2), (2, 2)]  # sampler steps, also for second-order samplers


STOCHASTIC = [
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "dpmpp_sde",
    "ddpm",
    "lcm",
]
"""Samplers that add fresh noise at each step: their noise must come from the seed too."""


@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_stochastic_samplers_are_deterministic(module_env, base, sampler):
    workflow = with_inputs(base, "3", sampler_name=sampler, seed=31)
    first = image_of(module_env.run(workflow))
    module_env.node_cache.clear()
    assert np.array_equal(image_of(module_env.run(workflow)), first)


def test_samplers_give_different_images(module_env, base):
    euler = image_of(module_env.run(with_inputs(base, "3", sampler_name="euler", steps=3)))
    ancestral = image_of(
        module_env.run(with_inputs(base, "3", sampler_name="euler_ancestral", steps=3))
    )
    dpmpp = image_of(module_env.run(with_inputs(base, "3", sampler_name="dpmpp_2m", steps=3)))
    assert not np.array_equal(euler, ancestral)
    assert not np.array_equal(euler, dpmpp)


@pytest.mark.parametrize(
    ("sampler", "scheduler"), UNSUPPORTED, ids=[f"{s}-{k}" for s, k in UNSUPPORTED]
)
def test_unsupported_combinations_are_validation_errors_listing_the_supported(
    module_env, base, sampler, scheduler
):
    workflow = with_inputs(base, "3", sampler_name=sampler, scheduler=scheduler)
    issues = validate(workflow, module_env.node_types, module_env).issues
    assert [(i.type, i.node_id, i.input_name, i.value) for i in issues] == [
        ("custom_validation_failed", "3", "scheduler", scheduler)
    ]
    for name in supported_schedulers(sampler):
        assert name in issues[0].message


@pytest.mark.parametrize(
    ("sampler", "scheduler"), [("ddim", "karras"), ("euler_ancestral", "karras"), ("lcm", "karras")]
)
def test_known_unfaithful_pairs_are_refused(sampler, scheduler):
    message = check_combination(sampler, scheduler)
    assert message is not None and sampler in message and scheduler in message
    with pytest.raises(ValueError):
        make_scheduler(sampler, scheduler, {})


def test_unsupported_combination_through_ksampler_advanced(module_env, base):
    workflow = with_inputs(base, "3")
    inputs = workflow["3"]["inputs"]
    workflow["3"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **{
                k: inputs[k]
                for k in ("model", "positive", "negative", "latent_image", "steps", "cfg")
            },
            "add_noise": "enable",
            "noise_seed": 1,
            "sampler_name": "ddim",
            "scheduler": "karras",
            "start_at_step": 0,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        },
    }
    issues = validate(workflow, module_env.node_types, module_env).issues
    assert [(i.type, i.input_name) for i in issues] == [("custom_validation_failed", "scheduler")]


@pytest.mark.parametrize(
    ("name", "value"), [("sampler_name", "euler_turbo"), ("scheduler", "cosine")]
)
def test_unknown_names_are_value_not_in_list_listing_the_names(module_env, base, name, value):
    issues = validate(
        with_inputs(base, "3", **{name: value}), module_env.node_types, module_env
    ).issues
    assert [(i.type, i.input_name, i.value) for i in issues] == [("value_not_in_list", name, value)]
    for known in SAMPLERS if name == "sampler_name" else SCHEDULERS:
        assert known in issues[0].message


def test_scheduler_names_map_onto_diffusers_options():
    import diffusers

    base = dict(diffusers.EulerDiscreteScheduler().config)
    karras, _ = make_scheduler("euler", "karras", base)
    assert karras.config.use_karras_sigmas is True
    normal, _ = make_scheduler("euler", "normal", base)
    assert normal.config.timestep_spacing == "linspace" and not normal.config.use_karras_sigmas
    ddim, step_kwargs = make_scheduler("ddim", "ddim_uniform", base)
    assert type(ddim).__name__ == "DDIMScheduler" and step_kwargs == {"eta": 0.0}
    assert ddim.config.timestep_spacing == "leading" and ddim.config.steps_offset == 1
    sde, _ = make_scheduler("dpmpp_2m_sde", "exponential", base)
    assert sde.config.algorithm_type == "sde-dpmsolver++" and sde.config.use_exponential_sigmas


def test_karras_sigmas_follow_the_karras_formula():
    """ComfyUI's karras schedule: rho 7 between the model's sigma_max and sigma_min."""
    import diffusers
    import torch

    from runner.models.tiny import SD1_SCHEDULER

    scheduler, _ = make_scheduler("euler", "karras", SD1_SCHEDULER)
    scheduler.set_timesteps(6)
    plain = diffusers.EulerDiscreteScheduler.from_config(SD1_SCHEDULER)
    alphas = plain.alphas_cumprod
    all_sigmas = ((1 - alphas) / alphas) ** 0.5
    sigma_min, sigma_max, rho = float(all_sigmas[0]), float(all_sigmas[-1]), 7.0
    ramp = torch.linspace(0, 1, 6, dtype=torch.float64)
    expected = (
        sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    ) ** rho
    np.testing.assert_allclose(scheduler.sigmas[:-1].double().numpy(), expected.numpy(), rtol=1e-4)
    assert float(scheduler.sigmas[-1]) == 0.0
