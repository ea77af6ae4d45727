"""ComfyUI's sampler and scheduler names: pairs diffusers computes faithfully run on its
schedulers, the others on easel's sigma samplers; every supported pair runs and gives a
finite image; pairs neither path computes and unknown names are validation errors that
list what is supported."""

from __future__ import annotations

import numpy as np
import pytest
from runner_testlib import image_of, txt2img_workflow, with_inputs

from runner.diffusion import k_samplers
from runner.diffusion.samplers import (
    COMFY_SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULERS,
    check_combination,
    diffusers_schedulers,
    make_scheduler,
    supported_schedulers,
    uses_sigma_path,
)
from runner.diffusion.schedules import SCHEDULER_NAMES
from runner.validation import validate

ISSUE_SAMPLERS = (
    "euler euler_ancestral heun dpm_2 dpm_2_ancestral lms dpmpp_2m dpmpp_2m_sde dpmpp_sde ddim uni_pc lcm"
).split()
ISSUE_SCHEDULERS = "normal karras exponential sgm_uniform simple ddim_uniform".split()
NEW_IN_ISSUE_11 = (
    "dpmpp_2s_ancestral dpmpp_sde_gpu dpmpp_2m_sde_gpu dpmpp_3m_sde_gpu ipndm res_multistep "
    "euler_cfg_pp euler_ancestral_cfg_pp"
).split()

ALL_PAIRS = [(s, k) for s in SAMPLERS for k in SCHEDULERS if k in supported_schedulers(s)]
DIFFUSERS_PAIRS = [(s, k) for s, k in ALL_PAIRS if not uses_sigma_path(s, k)]
SIGMA_PAIRS = [(s, k) for s, k in ALL_PAIRS if uses_sigma_path(s, k)]
# The fast suite runs every diffusers pair, every sigma-path sampler once and every
# scheduler once on the sigma path; the whole cross product is marked slow.
_SIGMA_SAMPLERS = sorted({s for s, _ in SIGMA_PAIRS})
SIGMA_SAMPLE = sorted(
    {(s, "linear_quadratic") for s in _SIGMA_SAMPLERS}
    | {("dpmpp_2s_ancestral", k) for k in SCHEDULER_NAMES}
)
SUPPORTED = DIFFUSERS_PAIRS + SIGMA_SAMPLE
UNSUPPORTED = [(s, k) for s in SAMPLERS for k in SCHEDULERS if k not in supported_schedulers(s)]


@pytest.fixture(scope="module")
def base(module_env):
    return txt2img_workflow(module_env, steps=2, cfg=5.0)


def test_the_issue_names_are_all_known():
    assert set(ISSUE_SAMPLERS) <= set(SAMPLERS)
    assert set(ISSUE_SCHEDULERS) <= set(SCHEDULERS)


def test_the_lists_are_comfyuis_in_its_order():
    assert set(NEW_IN_ISSUE_11) <= set(SAMPLERS)
    assert {"linear_quadratic", "kl_optimal"} <= set(SCHEDULERS)
    names = list(SAMPLERS)
    assert names == [n for n in COMFY_SAMPLER_NAMES if n in names]
    assert names[0] == "euler" and names[-3:] == ["ddim", "uni_pc", "uni_pc_bh2"]
    assert list(SCHEDULERS) == list(SCHEDULER_NAMES)
    assert list(k_samplers.SAMPLERS) == [n for n in COMFY_SAMPLER_NAMES if n in k_samplers.SAMPLERS]


def test_which_path_runs_a_pair():
    assert not uses_sigma_path("euler", "karras")  # diffusers computes it: pixels unchanged
    assert not uses_sigma_path("dpmpp_2m", "normal")
    assert uses_sigma_path("euler", "kl_optimal")  # no diffusers schedule
    assert uses_sigma_path("euler_ancestral", "karras")  # no Karras option on that class
    assert uses_sigma_path("ipndm", "normal")  # no diffusers sampler
    assert uses_sigma_path("euler", "normal", prediction="lcm")
    assert uses_sigma_path("euler", "normal", zsnr=True)
    assert not uses_sigma_path("uni_pc", "karras")  # not a sigma sampler: diffusers only
    for s, k in DIFFUSERS_PAIRS:
        assert k in diffusers_schedulers(s)


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
    "euler_ancestral_cfg_pp",
    "dpmpp_2s_ancestral",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde_gpu",
    "dpmpp_sde_gpu",
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
    ("sampler", "scheduler"),
    [("uni_pc", "kl_optimal"), ("uni_pc_bh2", "linear_quadratic"), ("deis", "kl_optimal")],
)
def test_known_unfaithful_pairs_are_refused(sampler, scheduler):
    message = check_combination(sampler, scheduler)
    assert message is not None and sampler in message and scheduler in message
    with pytest.raises(ValueError):
        make_scheduler(sampler, scheduler, {})


@pytest.mark.parametrize(
    ("sampler", "scheduler"), [("ddim", "karras"), ("euler_ancestral", "karras"), ("lcm", "karras")]
)
def test_pairs_diffusers_cannot_compute_now_run_on_the_sigma_path(
    module_env, base, sampler, scheduler
):
    assert check_combination(sampler, scheduler) is None
    with pytest.raises(ValueError, match="no faithful diffusers equivalent"):
        make_scheduler(sampler, scheduler, {})
    image = image_of(
        module_env.run(with_inputs(base, "3", sampler_name=sampler, scheduler=scheduler))
    )
    assert np.isfinite(image).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampler", "scheduler"), SIGMA_PAIRS, ids=[f"{s}-{k}" for s, k in SIGMA_PAIRS]
)
def test_every_sigma_path_pair_runs(module_env, base, sampler, scheduler):
    result = module_env.run(with_inputs(base, "3", sampler_name=sampler, scheduler=scheduler))
    assert np.isfinite(image_of(result)).all()


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
            "sampler_name": "uni_pc",
            "scheduler": "kl_optimal",
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
