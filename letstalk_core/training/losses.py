"""The LetsTalk training loss: epsilon MSE plus the variational-bound term for the learned variance.

The forward process is the 1000-step DDPM with linear betas (1e-4 .. 0.02): the betas of
``sampling.schedules.training_betas`` in float64 as the authors keep them (diffusers' ``DDPMScheduler``
holds the same schedule in float32; :func:`training_scheduler` builds it, and the tests check both agree). The model outputs ``[B, F, 2C, H, W]``: epsilon, then ``v`` in [-1, 1] (not
enforced) that places the log-variance between the clipped posterior log-variance and ``log beta_t``:
``log var = (v + 1) / 2 * log beta_t + (1 - v) / 2 * log posterior_var_clipped``.

The variance term is improved DDPM's: per sample, the KL divergence (in bits per dimension) between the
true posterior ``q(x_{t-1} | x_t, x_0)`` and the model's ``p(x_{t-1} | x_t)``, and at ``t = 0`` the
negative log-likelihood of ``x_0`` under a discretised Gaussian decoder. As the authors do, the mean of
``p`` is built from a *detached* epsilon, so the bound only trains the variance values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from ..sampling.schedules import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, training_betas


def training_scheduler() -> DDPMScheduler:
    """The training noise schedule: diffusers DDPM, 1000 linear betas from 1e-4 to 0.02."""
    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear",
                         beta_start=BETA_START, beta_end=BETA_END, prediction_type="epsilon", variance_type="learned_range")


@dataclass
class DiffusionSchedule:
    """Per-timestep constants of the training schedule, float64 ``[T]`` tensors."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # times x_0
    posterior_mean_coef2: torch.Tensor  # times x_t

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def training(cls) -> "DiffusionSchedule":
        """The 1000-step linear-beta training schedule."""
        betas = torch.from_numpy(training_betas())  # [T] float64
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # [T], in float64 like the authors
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # the variance at t=0 is 0; the clipped log uses the t=1 value there
        posterior_log_variance_clipped = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        return cls(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            alphas_cumprod_prev=alphas_cumprod_prev,
            posterior_variance=posterior_variance,
            posterior_log_variance_clipped=posterior_log_variance_clipped,
            posterior_mean_coef1=betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
        )

    def _at(self, table: torch.Tensor, timestep: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[timestep]`` shaped to broadcast over ``like`` (``[B, 1, ...]``) in its dtype."""
        values = table.to(timestep.device)[timestep.long()]
        return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x_start: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse ``x_start [B, ...]`` to ``timestep [B]`` with ``noise`` (same shape)."""
        check_timesteps(timestep, x_start.shape[0], self.num_timesteps)
        acp = self._at(self.alphas_cumprod, timestep, x_start)
        return acp.sqrt() * x_start + (1.0 - acp).sqrt() * noise

    def predict_x_start(self, x_t: torch.Tensor, timestep: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        acp = self._at(self.alphas_cumprod, timestep, x_t)
        return (x_t - (1.0 - acp).sqrt() * eps) / acp.sqrt()

    def posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return (self._at(self.posterior_mean_coef1, timestep, x_t) * x_start
                + self._at(self.posterior_mean_coef2, timestep, x_t) * x_t)

    def model_log_variance(self, variance_values: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Learned-range log-variance from the model's variance values ``v`` (same shape as ``v``)."""
        min_log = self._at(self.posterior_log_variance_clipped, timestep, variance_values)
        max_log = self._at(self.betas.log(), timestep, variance_values)
        fraction = (variance_values + 1.0) / 2.0
        return fraction * max_log + (1.0 - fraction) * min_log


def check_timesteps(timestep: torch.Tensor, batch: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> None:
    if not torch.is_tensor(timestep) or timestep.shape != (batch,):
        raise ValueError(f"timestep must be a [B]={batch} tensor, got {getattr(timestep, 'shape', type(timestep))}")
    if timestep.numel() and (int(timestep.min()) < 0 or int(timestep.max()) >= num_timesteps):
        raise ValueError(f"timesteps must lie in 0..{num_timesteps - 1}; got {timestep.tolist()}")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood (nats, elementwise) of data ``x`` in [-1, 1] quantised to 256 bins of width 2/255
    under a Gaussian with ``means`` and ``log_scales`` (log standard deviations); the outermost bins
    extend to infinity."""
    centred = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_minus = _standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_bin = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_bin))


def _mean_over_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)  # [B]


def variational_bound_terms(
    schedule: DiffusionSchedule,
    eps: torch.Tensor,
    variance_values: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
) -> torch.Tensor:
    """Per-sample variational-bound term in bits per dimension, ``[B]``.

    ``eps`` and ``variance_values`` are the two halves of the model output (pass a detached ``eps`` to
    train only the variance, as the training loss does). For ``timestep > 0`` the term is the KL between
    the true and the model posterior; for ``timestep == 0`` the discretised decoder's NLL of ``x_start``.
    """
    check_timesteps(timestep, x_start.shape[0], schedule.num_timesteps)
    true_mean = schedule.posterior_mean(x_start, x_t, timestep)
    true_log_variance = schedule._at(schedule.posterior_log_variance_clipped, timestep, x_t)
    model_mean = schedule.posterior_mean(schedule.predict_x_start(x_t, timestep, eps), x_t, timestep)
    model_log_variance = schedule.model_log_variance(variance_values, timestep)
    kl = _mean_over_sample(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)) / math.log(2.0)
    decoder_nll = -_mean_over_sample(
        discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_variance)) / math.log(2.0)
    return torch.where(timestep == 0, decoder_nll, kl)  # [B]


@dataclass
class DiffusionLoss:
    loss: torch.Tensor  # scalar, what is optimised
    mse: torch.Tensor  # [B]
    vb: torch.Tensor  # [B]
    audio_mouth: torch.Tensor | None = None  # scalar, recipe.audio_mouth_loss_weight's objective (already in loss)


def diffusion_loss(
    schedule: DiffusionSchedule,
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    timestep: torch.Tensor,
    weights: torch.Tensor | None = None,
    snr_gamma: float = 0.0,
    snr_floor: float = 0.0,
    max_weight: float = math.inf,
) -> DiffusionLoss:
    """Epsilon MSE plus the variance bound for a learned-sigma output.

    ``model_output [B, F, 2C, H, W]``, ``x_start``/``x_t``/``noise [B, F, C, H, W]``, ``timestep [B]``;
    ``weights`` (broadcastable to the latents, e.g. ``[B, 1, 1, H, W]``) make the epsilon MSE a weighted
    mean per sample; the variance bound stays unweighted. ``snr_gamma`` > 0 scales each sample's epsilon
    MSE by ``min(SNR_t, gamma) / SNR_t`` (Min-SNR-gamma), with ``SNR_t = abar_t / (1 - abar_t)``.

    The epsilon error of a sample is its x0 error times ``SNR_t``, so at high noise an epsilon loss hardly
    trains x0 at all. ``snr_floor`` > 0 raises each sample's weight to at least ``snr_floor / SNR_t``:
    where ``SNR_t < snr_floor`` the x0 error counts ``snr_floor`` times (as a v-prediction loss would count
    it once). ``max_weight`` caps the weight, so that the noisiest steps, where an epsilon model can hardly
    express x0 (at t=950 it is 1% of the input), do not dominate.
    """
    if model_output.dim() != x_start.dim() or model_output.shape[2] != 2 * x_start.shape[2] or (
            model_output.shape[:2] + model_output.shape[3:] != x_start.shape[:2] + x_start.shape[3:]):
        raise ValueError(f"model_output {tuple(model_output.shape)} must be [B, F, 2C, H, W] for latents "
                         f"{tuple(x_start.shape)} (a learn_sigma model)")
    eps, variance_values = model_output.float().chunk(2, dim=2)  # each [B, F, C, H, W]
    squared = (noise.float() - eps) ** 2  # [B, F, C, H, W]
    if weights is None:
        mse = _mean_over_sample(squared)  # [B]
    else:  # a weighted mean: the loss keeps its scale whatever the weights
        weights = weights.to(squared).expand_as(squared)
        mse = _mean_over_sample(weights * squared) / _mean_over_sample(weights)
    if snr_gamma or snr_floor:
        abar = schedule.alphas_cumprod.to(timestep.device)[timestep]  # [B], float64
        snr = abar / (1.0 - abar)
        weight = snr.clamp(max=float(snr_gamma)) / snr if snr_gamma else torch.ones_like(snr)
        if snr_floor:
            weight = torch.maximum(weight, float(snr_floor) / snr)
        mse = mse * weight.clamp(max=float(max_weight)).to(mse)
    vb = variational_bound_terms(schedule, eps.detach(), variance_values, x_start.float(), x_t.float(), timestep)
    return DiffusionLoss(loss=(mse + vb).mean(), mse=mse, vb=vb)
