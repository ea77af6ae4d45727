"""How a discrete-time (DDPM-trained) UNet maps onto noise levels: ComfyUI's
``ModelSamplingDiscrete``, for the sigma-based samplers of :mod:`runner.diffusion.k_samplers`.

A checkpoint trained on ``T`` timesteps with betas ``beta_t`` has
``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` and the noise level (Karras et al. 2022, "EDM",
variance-exploding form) ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``. A sampler
works on ``x = x0 + sigma * eps``; the UNet sees ``c_in(sigma) * x`` with
``c_in = 1 / sqrt(sigma^2 + 1)`` (the variance-preserving input it was trained on) at its
timestep ``t(sigma)``, and its output becomes the denoised estimate ``x0`` by the model's
prediction type:

* ``eps``: ``x0 = x - sigma * out`` (Ho et al. 2020);
* ``v_prediction``: ``x0 = x / (sigma^2 + 1) - out * sigma / sqrt(sigma^2 + 1)``
  (Salimans & Ho 2022, in EDM's ``c_skip``/``c_out`` form with ``sigma_data = 1``);
* ``x0``: ``x0 = out``;
* ``lcm``: latent consistency models (Luo et al. 2023): the eps estimate is mixed with the
  input by the consistency boundary conditions ``c_skip = 0.25 / ((10 t)^2 + 0.25)``,
  ``c_out = 10 t / sqrt((10 t)^2 + 0.25)``, on the 50 distilled timesteps
  ``19, 39, ..., 999`` (ComfyUI's ModelSamplingDiscreteDistilled).

``zsnr`` rescales the schedule to zero terminal SNR (Lin et al. 2023, "Common Diffusion
Noise Schedules and Sample Steps are Flawed", Algorithm 1), with ComfyUI's finite last
value ``alpha_bar_T = 4.8973451890853435e-08`` so that ``sigma_max`` stays finite.

``t(sigma)`` is the continuous inverse of ``sigma(t)`` (log-sigma interpolated between the
two nearest training timesteps), the timestep diffusers' schedulers pass to the UNet, so
a sigma path and a diffusers scheduler on the same sigmas call the UNet identically
(ComfyUI rounds to the nearest integer timestep; the difference is below the UNet's
sensitivity to a fraction of a timestep). The LCM sampling keeps ComfyUI's rounding to the
nearest distilled timestep, which its ``c_skip``/``c_out`` depend on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

PREDICTIONS = ("eps", "v_prediction", "lcm", "x0")
"""ComfyUI's ModelSamplingDiscrete sampling types that easel runs."""

_FROM_DIFFUSERS = {"epsilon": "eps", "v_prediction": "v_prediction", "sample": "x0"}
_TO_DIFFUSERS = {v: k for k, v in _FROM_DIFFUSERS.items()}
ZSNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08
"""ComfyUI's ``alpha_bar`` at the last timestep after the zero-terminal-SNR rescale."""
LCM_ORIGINAL_TIMESTEPS = 50


def prediction_of_config(config: dict[str, Any]) -> str:
    """The prediction type (``eps``, ``v_prediction``, ``x0``) a diffusers scheduler config says."""
    kind = config.get("prediction_type", "epsilon")
    if kind not in _FROM_DIFFUSERS:
        raise ValueError(f"unknown prediction_type {kind!r} in the scheduler config")
    return _FROM_DIFFUSERS[kind]


def diffusers_prediction(prediction: str) -> str | None:
    """diffusers' ``prediction_type`` for one of ours, or None where diffusers has none (lcm)."""
    return _TO_DIFFUSERS.get(prediction)


def training_alphas_cumprod(config: dict[str, Any]) -> torch.Tensor:
    """``alpha_bar_t`` for every training timestep of a diffusers scheduler config (float64),
    computed by diffusers' own DDPMScheduler from the config's betas."""
    import diffusers

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    kwargs = {k: config[k] for k in keys if config.get(k) is not None}
    return diffusers.DDPMScheduler(**kwargs).alphas_cumprod.double()


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``alpha_bar`` shifted and scaled in ``sqrt(alpha_bar)`` so that the last timestep has
    zero SNR and the first keeps its value (Lin et al. 2023, Algorithm 1); the last value is
    then set to ComfyUI's small positive ``ZSNR_TERMINAL_ALPHA_BAR``."""
    root = alphas_cumprod.double().sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root**2
    out[-1] = ZSNR_TERMINAL_ALPHA_BAR
    return out


@dataclass(frozen=True)
class ModelSampling:
    """A model's noise levels and prediction type (ComfyUI's ``model_sampling`` object).

    ``sigmas[i]`` is the noise level of training timestep ``timesteps[i]`` (both ascending);
    float64 on the CPU."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    prediction: str = "eps"

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def log_sigmas(self) -> torch.Tensor:
        return self.sigmas.log()

    def sigma(self, timestep) -> torch.Tensor:
        """The noise level at a (fractional) training timestep: log-sigma interpolated
        between the neighbouring entries."""
        t = torch.as_tensor(timestep, dtype=torch.float64)
        steps = self.timesteps
        idx = torch.searchsorted(steps, t.clamp(steps[0], steps[-1])).clamp(1, len(steps) - 1)
        low, high = idx - 1, idx
        w = ((t - steps[low]) / (steps[high] - steps[low])).clamp(0, 1)
        logs = self.log_sigmas
        return ((1 - w) * logs[low] + w * logs[high]).exp()

    def timestep(self, sigma) -> torch.Tensor:
        """The UNet timestep for a noise level: the continuous inverse of :meth:`sigma`
        (diffusers' ``_sigma_to_t``), or for LCM the nearest distilled timestep."""
        s = torch.as_tensor(sigma, dtype=torch.float64)
        log_s = s.clamp_min(1e-10).log()
        logs = self.log_sigmas
        if self.prediction == "lcm":
            nearest = (log_s.reshape(-1, 1) - logs.reshape(1, -1)).abs().argmin(dim=1)
            return self.timesteps[nearest].reshape(s.shape)
        idx = torch.searchsorted(logs, log_s.clamp(logs[0], logs[-1])).clamp(1, len(logs) - 1)
        low, high = idx - 1, idx
        w = ((log_s - logs[low]) / (logs[high] - logs[low])).clamp(0, 1)
        steps = self.timesteps
        return (1 - w) * steps[low] + w * steps[high]

    def percent_to_sigma(self, percent: float) -> float:
        """The noise level a fraction of the way through sampling (0 the start, 1 the end),
        ComfyUI's ``percent_to_sigma``: beyond the ends, a huge sigma and 0."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma((1.0 - percent) * 999.0))

    @staticmethod
    def c_in(sigma: torch.Tensor) -> torch.Tensor:
        """The UNet input scale ``1 / sqrt(sigma^2 + 1)``."""
        return 1.0 / (sigma**2 + 1.0) ** 0.5

    def denoised(self, output: torch.Tensor, x: torch.Tensor, sigma) -> torch.Tensor:
        """The denoised estimate ``x0`` from the UNet's ``output`` for input ``x`` at ``sigma``."""
        s = float(sigma)
        if self.prediction == "eps":
            return x - output * s
        if self.prediction == "v_prediction":
            return x / (s * s + 1.0) - output * (s / math.sqrt(s * s + 1.0))
        if self.prediction == "x0":
            return output
        if self.prediction == "lcm":
            scaled = float(self.timestep(s)) * 10.0
            c_skip = 0.25 / (scaled**2 + 0.25)
            c_out = scaled / math.sqrt(scaled**2 + 0.25)
            return c_out * (x - output * s) + c_skip * x
        raise ValueError(f"unknown prediction {self.prediction!r}; one of {', '.join(PREDICTIONS)}")

    def noise_scaling(
        self, sigma: float, noise: torch.Tensor, latent: torch.Tensor, max_denoise: bool
    ) -> torch.Tensor:
        """The sampler's starting point: ``latent + noise * sigma``, or with
        ``max_denoise`` (the schedule starts at the model's largest sigma)
        ``latent + noise * sqrt(1 + sigma^2)``, as ComfyUI starts."""
        scale = math.sqrt(1.0 + sigma * sigma) if max_denoise else sigma
        return latent + noise * scale

    def is_max_denoise(self, sigma: float) -> bool:
        """Whether a schedule starting at ``sigma`` starts from pure noise."""
        return math.isclose(sigma, self.sigma_max, rel_tol=1e-5) or sigma > self.sigma_max


def model_sampling(
    config: dict[str, Any], prediction: str | None = None, zsnr: bool | None = None
) -> ModelSampling:
    """The :class:`ModelSampling` of a checkpoint from its diffusers scheduler ``config``,
    with ModelSamplingDiscrete's overrides: ``prediction`` (None keeps the config's) and
    ``zsnr`` (None keeps the config's ``rescale_betas_zero_snr``)."""
    if prediction is None:
        prediction = prediction_of_config(config)
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown sampling {prediction!r}; one of {', '.join(PREDICTIONS)}")
    if zsnr is None:
        zsnr = bool(config.get("rescale_betas_zero_snr", False))
    alphas = training_alphas_cumprod(config)
    if zsnr:
        alphas = rescale_zero_terminal_snr(alphas)
    sigmas = ((1 - alphas) / alphas) ** 0.5
    timesteps = torch.arange(len(sigmas), dtype=torch.float64)
    if prediction == "lcm":
        skip = len(sigmas) // LCM_ORIGINAL_TIMESTEPS
        keep = torch.arange(skip - 1, len(sigmas), skip)[-LCM_ORIGINAL_TIMESTEPS:]
        sigmas, timesteps = sigmas[keep], timesteps[keep]
    return ModelSampling(sigmas=sigmas, timesteps=timesteps, prediction=prediction)


__all__ = [
    "PREDICTIONS",
    "ModelSampling",
    "diffusers_prediction",
    "model_sampling",
    "prediction_of_config",
    "rescale_zero_terminal_snr",
    "training_alphas_cumprod",
]
