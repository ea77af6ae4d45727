"""easel's sigma-based samplers against independent computations: exact solutions of test
ODEs, diffusers' schedulers stepping the same sigmas with the same model function, and
the properties of their noise (seeded, per job)."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch

from runner.diffusion import k_samplers
from runner.diffusion.k_samplers.common import BrownianNoise, GaussianNoise, ancestral_step
from runner.diffusion.k_samplers.lms import lms_coefficients
from runner.diffusion.schedules import karras
from runner.models.tiny import SD1_SCHEDULER

DETERMINISTIC = ["euler", "heun", "dpm_2", "lms", "dpmpp_2m", "ipndm", "res_multistep", "ddim"]
STOCHASTIC = [
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "euler_ancestral_cfg_pp",
]


class Analytic:
    """A denoiser given by a formula (not easel code): ``D(x, sigma) = fn(x, sigma)``;
    its unconditional side (for CFG++) is the same formula."""

    def __init__(self, fn):
        self.fn, self.needs_uncond, self.uncond, self.calls = fn, False, None, 0

    def __call__(self, x, sigma):
        self.calls += 1
        out = self.fn(x, sigma)
        self.uncond = out
        return out


def _run(name, model, x, sigmas, seed=3):
    sampler = k_samplers.get_sampler(name)
    positive = sigmas[sigmas > 0]
    if sampler.noise == "brownian":
        noise = BrownianNoise([seed], [x.shape[0]], x, float(positive.min()), float(sigmas.max()))
    else:
        noise = GaussianNoise([seed], [x.shape[0]], x)
    return sampler.function(model, x, sigmas, noise=noise, **dict(sampler.options))


@pytest.mark.parametrize("name", DETERMINISTIC + ["euler_cfg_pp"])
def test_constant_denoiser_follows_the_exact_straight_line(name):
    """With ``D = x0`` fixed, the ODE ``dx/dsigma = (x - x0)/sigma`` has the exact solution
    ``x(sigma) = x0 + (x_T - x0) sigma / sigma_T``; every deterministic sampler is exact on it."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    x_t = torch.randn(2, 4, 3, 3, dtype=torch.float64) * 10
    sigmas = torch.tensor([10.0, 6.0, 3.5, 2.0, 1.0], dtype=torch.float64)
    out = _run(name, Analytic(lambda x, s: x0), x_t.clone(), sigmas)
    expected = x0 + (x_t - x0) * (1.0 / 10.0)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", DETERMINISTIC + ["euler_cfg_pp"])
def test_gaussian_data_reaches_the_exact_ode_solution(name):
    """For data ~ N(0, 1) the ideal denoiser is ``x / (1 + sigma^2)`` and the probability-flow
    ODE's solution is ``x(sigma) = x_T sqrt((1 + sigma^2) / (1 + sigma_T^2))``."""
    torch.manual_seed(1)
    x_t = torch.randn(1, 4, 4, 4, dtype=torch.float64) * 14.6
    sigmas = karras(300, 0.03, 14.6).double()
    out = _run(name, Analytic(lambda x, s: x / (1 + s * s)), x_t.clone(), sigmas)
    expected = x_t / math.sqrt(1 + 14.6**2)
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-3)


def test_higher_order_samplers_are_more_accurate_than_euler():
    torch.manual_seed(1)
    x_t = torch.randn(1, 4, 4, 4, dtype=torch.float64) * 14.6
    sigmas = karras(8, 0.03, 14.6).double()
    exact = x_t / math.sqrt(1 + 14.6**2)
    errors = {
        name: float(
            (_run(name, Analytic(lambda x, s: x / (1 + s * s)), x_t.clone(), sigmas) - exact)
            .abs()
            .max()
        )
        for name in ("euler", "heun", "dpmpp_2m", "lms", "ipndm", "res_multistep")
    }
    for name in ("heun", "dpmpp_2m", "lms", "ipndm", "res_multistep"):
        assert errors[name] < errors["euler"], errors


def _eps(x, t=None):
    """An arbitrary smooth 'noise prediction' (a formula, the same for both sides)."""
    return 0.3 * torch.tanh(x) + 0.05 * x


def _diffusers_loop(scheduler, x_start, seed=None):
    import inspect

    generator = None if seed is None else torch.Generator("cpu").manual_seed(seed + 1)
    takes = "generator" in inspect.signature(scheduler.step).parameters
    x = x_start * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        kwargs = {"generator": generator} if generator is not None and takes else {}
        x = scheduler.step(_eps(inp, t), t, x, **kwargs).prev_sample
    return x


def _ours(name, sigmas, x_start, init_scale, seed=3):
    def denoise(x, s):
        return x - s * _eps(x / math.sqrt(s * s + 1))

    return _run(name, Analytic(denoise), x_start * init_scale, sigmas, seed=seed)


DIFFUSERS_EQUIVALENTS = [
    ("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("euler", "EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("heun", "HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    ("lms", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    ("euler_ancestral", "EulerAncestralDiscreteScheduler", {}),
]


@pytest.mark.parametrize(("name", "cls", "options"), DIFFUSERS_EQUIVALENTS)
def test_sampler_equals_the_diffusers_scheduler_on_its_sigmas(name, cls, options):
    torch.manual_seed(2)
    x_start = torch.randn(1, 4, 8, 8)
    scheduler = getattr(diffusers, cls).from_config(SD1_SCHEDULER, **options)
    scheduler.set_timesteps(6)
    expected = _diffusers_loop(scheduler, x_start.clone(), seed=3)
    sigmas = scheduler.sigmas.float()
    if name == "heun":  # Heun interleaves its sigmas: every other one is a corrector's
        sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
    ours = _ours(name, sigmas, x_start.clone(), float(scheduler.init_noise_sigma))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spacing", [{"use_karras_sigmas": True}, {"timestep_spacing": "linspace"}])
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(spacing):
    """DPMSolverMultistep works on the variance-preserving ``x / sqrt(1 + sigma^2)``; at sigma
    0 both forms are the same latent."""
    torch.manual_seed(4)
    x_start = torch.randn(1, 4, 8, 8)
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(
        SD1_SCHEDULER, algorithm_type="dpmsolver++", solver_order=2, **spacing
    )
    scheduler.set_timesteps(7)
    expected = _diffusers_loop(scheduler, x_start.clone())
    sigma0 = float(scheduler.sigmas[0])
    ours = _ours("dpmpp_2m", scheduler.sigmas.float(), x_start.clone(), math.sqrt(1 + sigma0**2))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_ancestral_step_splits_the_variance():
    for sigma, nxt, eta in [(10.0, 5.0, 1.0), (3.0, 0.5, 0.5), (1.0, 0.0, 1.0)]:
        down, up = ancestral_step(sigma, nxt, eta)
        assert down**2 + up**2 == pytest.approx(nxt**2)
        # DDPM's posterior variance in VE form: sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2
        assert up == pytest.approx(eta * math.sqrt(nxt**2 * (sigma**2 - nxt**2) / sigma**2))
    assert ancestral_step(4.0, 2.0, 0.0) == (2.0, 0.0)


def test_lms_coefficients_integrate_the_lagrange_basis_exactly():
    """Against numerical quadrature of the Lagrange basis (numpy trapezoid on a fine grid)."""
    nodes, a, b = [2.0, 3.5, 6.0], 2.0, 1.2
    grid = np.linspace(a, b, 20001)
    for j, coeff in enumerate(lms_coefficients(nodes, a, b)):
        basis = np.prod(
            [(grid - nodes[k]) / (nodes[j] - nodes[k]) for k in range(len(nodes)) if k != j],
            axis=0,
        )
        assert coeff == pytest.approx(np.trapezoid(basis, grid), rel=1e-6)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_are_seeded_and_finite(name):
    torch.manual_seed(5)
    x = torch.randn(1, 4, 6, 6) * 14.6
    sigmas = karras(5, 0.03, 14.6)
    model = Analytic(lambda x, s: x / (1 + s * s))
    first = _run(name, model, x.clone(), sigmas, seed=11)
    again = _run(name, Analytic(lambda x, s: x / (1 + s * s)), x.clone(), sigmas, seed=11)
    other = _run(name, Analytic(lambda x, s: x / (1 + s * s)), x.clone(), sigmas, seed=12)
    assert torch.isfinite(first).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_gpu_names_run_the_same_algorithm_with_cpu_noise():
    torch.manual_seed(6)
    x = torch.randn(1, 4, 6, 6) * 14.6
    sigmas = karras(5, 0.03, 14.6)
    for name in ("dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"):
        plain = _run(name, Analytic(lambda x, s: x / (1 + s * s)), x.clone(), sigmas)
        gpu = _run(f"{name}_gpu", Analytic(lambda x, s: x / (1 + s * s)), x.clone(), sigmas)
        assert torch.equal(plain, gpu)


def test_noise_is_each_jobs_own():
    """Two jobs in one batch draw what each draws alone (Gaussian and Brownian)."""
    like = torch.zeros(3, 4, 5, 5)
    both = GaussianNoise([7, 8], [1, 2], like)(2.0, 1.0)
    assert torch.equal(both[:1], GaussianNoise([7], [1], like[:1])(2.0, 1.0))
    assert torch.equal(both[1:], GaussianNoise([8], [2], like[1:])(2.0, 1.0))
    tree = BrownianNoise([7, 8], [1, 2], like, 0.1, 10.0)(5.0, 2.0)
    alone = BrownianNoise([8], [2], like[1:], 0.1, 10.0)(5.0, 2.0)
    torch.testing.assert_close(tree[1:], alone)
    assert 0.5 < float(tree.std()) < 1.5  # unit variance (the increment is normalised)


def test_brownian_noise_is_consistent_across_step_sizes():
    """A Brownian path: the increment over [2, 5] is the sum of those over [2, 3] and [3, 5]."""
    like = torch.zeros(1, 4, 8, 8)
    noise = BrownianNoise([9], [1], like, 0.1, 10.0)
    whole = noise(5.0, 2.0) * math.sqrt(3.0)
    parts = noise(5.0, 3.0) * math.sqrt(2.0) + noise(3.0, 2.0) * math.sqrt(1.0)
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-4)


def test_cfg_pp_steps_along_the_unconditional_estimate():
    """CFG++ Euler: ``x' = D_cfg + sigma' (x - D_uncond) / sigma``, written out for one step."""
    x = torch.full((1, 1, 2, 2), 4.0)

    class TwoSided:
        needs_uncond = False
        uncond = None

        def __call__(self, x, s):
            self.uncond = x * 0.5
            return x * 0.25

    out = k_samplers.get_sampler("euler_cfg_pp").function(
        TwoSided(), x.clone(), torch.tensor([2.0, 1.0]), noise=None
    )
    torch.testing.assert_close(out, x * 0.25 + 1.0 * (x - x * 0.5) / 2.0)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="unknown sampler 'euler_turbo'.*dpmpp_2m"):
        k_samplers.get_sampler("euler_turbo")
