"""Every sigma schedule, and the model's noise levels, against their formulas written out
here independently (numpy, float64) from the papers and ComfyUI's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch

from runner.diffusion import schedules as S
from runner.diffusion.model_sampling import model_sampling
from runner.models.tiny import SD1_SCHEDULER


def _table() -> np.ndarray:
    """SD1's training sigmas: scaled-linear betas 0.00085..0.012 over 1000 steps."""
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2
    alphas = np.cumprod(1 - betas)
    return np.sqrt((1 - alphas) / alphas)


SIGMAS = _table()


def _sigma_at(t: np.ndarray) -> np.ndarray:
    """ComfyUI's sigma(t): log-sigma interpolated between integer timesteps."""
    return np.exp(np.interp(t, np.arange(1000), np.log(SIGMAS)))


@pytest.fixture(scope="module")
def ms():
    return model_sampling(SD1_SCHEDULER)


def _close(ours: torch.Tensor, expected, rtol=1e-5):
    np.testing.assert_allclose(
        ours.double().numpy(), np.asarray(expected, float), rtol=rtol, atol=1e-6
    )


def test_model_sigmas_come_from_the_betas(ms):
    _close(ms.sigmas, SIGMAS)
    assert ms.sigma_min == pytest.approx(0.0291675, rel=1e-4)
    assert ms.sigma_max == pytest.approx(14.614642, rel=1e-5)


def test_timestep_inverts_sigma(ms):
    ts = torch.tensor([0.0, 10.5, 333.25, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(ms.timestep(ms.sigma(ts)), ts, rtol=1e-9, atol=1e-7)
    _close(ms.sigma(ts), _sigma_at(ts.numpy()))


@pytest.mark.parametrize("n", [1, 4, 9])
def test_karras(n):
    ramp = np.linspace(0, 1, n)
    lo, hi, rho = 0.1, 10.0, 7.0
    expected = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    _close(S.karras(n, lo, hi, rho), [*expected, 0.0])


def test_exponential_and_polyexponential():
    _close(S.exponential(5, 0.1, 10.0), [*np.geomspace(10.0, 0.1, 5), 0.0])
    ramp = np.linspace(1, 0, 5) ** 2.0
    expected = np.exp(np.log(0.1) + ramp * (np.log(10.0) - np.log(0.1)))
    _close(S.polyexponential(5, 0.1, 10.0, rho=2.0), [*expected, 0.0])
    _close(S.polyexponential(5, 0.1, 10.0, rho=1.0), S.exponential(5, 0.1, 10.0))


def test_kl_optimal():
    n, lo, hi = 6, 0.03, 14.6
    expected = [
        math.tan(math.atan(hi) + i / (n - 1) * (math.atan(lo) - math.atan(hi))) for i in range(n)
    ]
    _close(S.kl_optimal(n, lo, hi), [*expected, 0.0])
    _close(S.kl_optimal(1, lo, hi), [hi, 0.0])


@pytest.mark.parametrize("n", [1, 4, 7])
def test_normal_and_sgm_uniform(ms, n):
    _close(S.normal(ms, n), [*_sigma_at(np.linspace(999, 0, n)), 0.0])
    _close(
        S.calculate_sigmas(ms, "sgm_uniform", n), [*_sigma_at(np.linspace(999, 0, n + 1)[:-1]), 0.0]
    )


@pytest.mark.parametrize("n", [1, 3, 7])
def test_simple(ms, n):
    picks = [999 - math.floor(i * 1000 / n) for i in range(n)]
    _close(S.simple(ms, n), [*SIGMAS[picks], 0.0])


@pytest.mark.parametrize("n", [2, 4, 7])
def test_ddim_uniform(ms, n):
    picks = list(range(1, 1000, 1000 // n))
    _close(S.ddim_uniform(ms, n), [*SIGMAS[picks][::-1], 0.0])


def test_beta(ms):
    """Training sigmas at Beta(0.6, 0.6) quantiles (the inverse regularized incomplete beta)."""
    n = 6
    ts = np.rint(scipy.special.betaincinv(0.6, 0.6, 1 - np.arange(n) / n) * 999).astype(int)
    _close(S.beta(ms, n), [*SIGMAS[ts], 0.0])


@pytest.mark.parametrize("n", [1, 6, 9])
def test_linear_quadratic(ms, n):
    """``u = 1 - sigma/sigma_max``: linear to 0.025 over the first n // 2 steps, then the
    quadratic with the same value and slope there that reaches 1 at step n."""
    if n == 1:
        u = [0.0, 1.0]
    else:
        lin, thr = n // 2, 0.025
        slope, quad = thr / lin, n - lin
        curve = (1 - thr - slope * quad) / quad**2
        u = [thr * i / lin for i in range(lin)]
        u += [thr + slope * (i - lin) + curve * (i - lin) ** 2 for i in range(lin, n)]
        u += [1.0]
    _close(S.linear_quadratic(ms, n), (1 - np.array(u)) * SIGMAS[-1])


@pytest.mark.parametrize(
    ("steps", "denoise", "ts"), [(1, 1.0, [999]), (3, 1.0, [999, 899, 799]), (2, 0.5, [499, 399])]
)
def test_sdturbo(ms, steps, denoise, ts):
    _close(S.sdturbo(ms, steps, denoise), [*SIGMAS[ts], 0.0])


def test_denoise_keeps_the_end_of_a_longer_schedule(ms):
    full = S.normal(ms, 10)
    _close(S.denoise_sigmas(ms, "normal", 4, 0.4), full[-5:])
    assert len(S.denoise_sigmas(ms, "karras", 4, 0.0)) == 0
    _close(S.denoise_sigmas(ms, "karras", 4, 1.0), S.karras(4, ms.sigma_min, ms.sigma_max))


def test_every_scheduler_name_gives_steps_plus_one_decreasing_sigmas(ms):
    assert S.SCHEDULER_NAMES == (
        "simple",
        "sgm_uniform",
        "karras",
        "exponential",
        "ddim_uniform",
        "beta",
        "normal",
        "linear_quadratic",
        "kl_optimal",
    )  # ComfyUI's SCHEDULER_NAMES, in its order
    for name in S.SCHEDULER_NAMES:
        sig = S.calculate_sigmas(ms, name, 8)
        assert len(sig) == 9 and float(sig[-1]) == 0.0, name
        assert (sig[:-1] > sig[1:]).all(), name


def test_bad_steps_and_names_are_clear_errors(ms):
    with pytest.raises(ValueError, match="unknown scheduler 'cosine'.*karras"):
        S.calculate_sigmas(ms, "cosine", 4)
    with pytest.raises(ValueError, match="at least 1 step, got 0"):
        S.karras(0, 0.1, 10)


def test_zero_terminal_snr(ms):
    """Lin et al. 2023, Algorithm 1 on sqrt(alpha_bar), the last alpha_bar set to ComfyUI's 4.897e-8."""
    z = model_sampling(SD1_SCHEDULER, zsnr=True)
    root = np.sqrt(1 / (1 + SIGMAS**2))
    scaled = (root - root[-1]) * root[0] / (root[0] - root[-1])
    alphas = scaled**2
    alphas[-1] = 4.8973451890853435e-08
    _close(z.sigmas, np.sqrt((1 - alphas) / alphas))
    assert z.sigma_min == pytest.approx(ms.sigma_min, rel=1e-6)
    assert z.sigma_max == pytest.approx(
        math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08)
    )


def test_lcm_sampling_uses_the_50_distilled_timesteps():
    lcm = model_sampling(SD1_SCHEDULER, prediction="lcm")
    _close(lcm.sigmas, SIGMAS[19::20])
    assert float(lcm.timestep(torch.tensor(SIGMAS[519] * 1.001))) == 519.0
    # the normal schedule runs from timestep 999 to 19, interpolating on that table
    middle = math.sqrt(SIGMAS[499] * SIGMAS[519])  # 509: halfway between 499 and 519 in log
    _close(S.normal(lcm, 3), [SIGMAS[999], middle, SIGMAS[19], 0.0])


def test_prediction_conversions():
    """x0 from the UNet output: eps, v (Salimans & Ho: x0 = alpha x_vp - sigma_vp v) and x0."""
    x, out, s = torch.tensor([3.0]), torch.tensor([0.5]), 2.0
    for kind, expected in [
        ("eps", 3.0 - 2.0 * 0.5),
        # in VP terms: x_vp = x / sqrt(1 + s^2), alpha = 1/sqrt(1+s^2), sigma_vp = s/sqrt(1+s^2)
        ("v_prediction", (3.0 / math.sqrt(5)) / math.sqrt(5) - (2 / math.sqrt(5)) * 0.5),
        ("x0", 0.5),
    ]:
        ms = model_sampling(SD1_SCHEDULER, prediction=kind)
        assert float(ms.denoised(out, x, s)) == pytest.approx(expected), kind
    with pytest.raises(ValueError, match="unknown sampling 'flow'"):
        model_sampling(SD1_SCHEDULER, prediction="flow")
