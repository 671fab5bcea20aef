"""The LetsTalk noise schedule, the authors' timestep respacing, and diffusers schedulers built on it.

Training used a 1000-step DDPM with linear betas (1e-4 to 0.02), epsilon prediction and a learned-range
variance. Sampling uses a *respaced* schedule: a subset of the 1000 timesteps, with the betas
recomputed so that the respaced chain has the same cumulative alphas at the kept timesteps
(``beta_i = 1 - acp[t_i] / acp[t_{i-1}]``). The model is always called with the original timestep.

How this maps onto diffusers: every scheduler here is a stock diffusers scheduler constructed on the
*respaced* betas (``num_train_timesteps = steps``, ``trained_betas = respaced betas``), so its own
timesteps are the respaced indices ``steps-1 .. 0``, and :class:`RespacedSampler` maps each index to
the original timestep for the model call. This is one mechanism for all four samplers; it is needed
because ``DDIMScheduler`` cannot take custom (non-uniform) timesteps, and it reproduces the authors'
posterior exactly (``DDPMScheduler``'s mean/variance formulas on the respaced betas are the authors').
Two small additions close the remaining gaps to the authors' numbers: the DDPM and DDIM schedulers
get their schedule in float64 as the authors compute it (diffusers stores it in float32, which
costs ~1e-4 relative accuracy in the posterior near t=0), and :class:`LearnedRangeDDPMScheduler` takes the log-variance at respaced
index 0 from the clipped posterior variance as the authors do (diffusers clamps it to 1e-20; this
never affects samples since no noise is added at that step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from ..checks import check_int

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "euler")
TIMESTEP_SPACINGS = ("auto", "even", "stride")


def training_betas() -> np.ndarray:
    """The 1000 linear training betas, float64 ``[1000]`` (as the authors compute them)."""
    return np.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=np.float64)


def training_alphas_cumprod() -> np.ndarray:
    """Cumulative products of ``1 - beta`` over the 1000 training steps, float64 ``[1000]``."""
    return np.cumprod(1.0 - training_betas())


def _check_steps(steps) -> int:
    return check_int("steps", steps, 1, NUM_TRAIN_TIMESTEPS)


def even_timesteps(steps: int) -> list[int]:
    """The authors' respacing string ``"N"``: N timesteps evenly spread over 0..999, both ends included.

    Follows their algorithm step by step (a float position advanced by ``999 / (N - 1)`` and rounded
    half to even at each step). The closed form ``round(i * 999 / (N - 1))`` gives the same list for
    250 and 25 steps but differs by one at a single timestep for some counts (e.g. 21), because the
    accumulated position is not exactly ``.5`` where the closed form is.
    """
    steps = _check_steps(steps)
    stride = 1.0 if steps <= 1 else (NUM_TRAIN_TIMESTEPS - 1) / (steps - 1)
    position = 0.0
    taken = []
    for _ in range(steps):
        taken.append(round(position))
        position += stride
    return sorted(set(taken))


def stride_timesteps(steps: int) -> list[int] | None:
    """The authors' respacing string ``"ddimN"``: ``range(0, 1000, s)`` for the smallest integer stride
    ``s`` that gives exactly N timesteps, or None when no integer stride does (e.g. N = 37)."""
    steps = _check_steps(steps)
    for stride in range(1, NUM_TRAIN_TIMESTEPS):
        if len(range(0, NUM_TRAIN_TIMESTEPS, stride)) == steps:
            return list(range(0, NUM_TRAIN_TIMESTEPS, stride))
    return None


def check_sampler(sampler) -> str:
    """``sampler``, when it is one of :data:`SAMPLERS`; else ValueError naming the accepted ones."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is not known; accepted: {', '.join(SAMPLERS)}")
    return sampler


def respaced_timesteps(steps: int, timestep_spacing: str = "auto", sampler: str = "ddpm") -> list[int]:
    """Original timesteps (ascending, 0..999) kept by a respacing of ``steps`` steps.

    ``timestep_spacing``: ``"even"`` is the authors' ``"N"`` respacing (their default for DDPM),
    ``"stride"`` their ``"ddimN"`` (an error when no integer stride gives exactly ``steps``), and
    ``"auto"`` picks ``"stride"`` for the ``ddim`` sampler when it exists and ``"even"`` otherwise.
    """
    steps = _check_steps(steps)
    check_sampler(sampler)
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(
            f"timestep_spacing {timestep_spacing!r} is not known; accepted: {', '.join(TIMESTEP_SPACINGS)}"
        )
    if timestep_spacing == "even":
        return even_timesteps(steps)
    strided = stride_timesteps(steps)
    if timestep_spacing == "stride":
        if strided is None:
            reachable = sorted({len(range(0, NUM_TRAIN_TIMESTEPS, s)) for s in range(1, NUM_TRAIN_TIMESTEPS)})
            below = max((n for n in reachable if n < steps), default=None)
            above = min((n for n in reachable if n > steps), default=None)
            raise ValueError(
                f"timestep_spacing 'stride' cannot give exactly {steps} steps with an integer stride over "
                f"{NUM_TRAIN_TIMESTEPS} timesteps; nearest counts that can: {below} and {above} "
                "(or use timestep_spacing 'even', which accepts any count)"
            )
        return strided
    if sampler == "ddim" and strided is not None:
        return strided
    return even_timesteps(steps)


def respaced_betas(timesteps: list[int]) -> np.ndarray:
    """Betas of the respaced chain, float64 ``[len(timesteps)]``: ``1 - acp[t_i] / acp[t_{i-1}]``
    (with ``acp[t_{-1}] = 1``), so the respaced cumulative alphas equal the originals at the kept steps."""
    if not timesteps or any(b <= a for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError(f"timesteps must be a non-empty strictly increasing list; got {timesteps!r}")
    if timesteps[0] < 0 or timesteps[-1] >= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"timesteps must lie in 0..{NUM_TRAIN_TIMESTEPS - 1}; got {timesteps[0]}..{timesteps[-1]}")
    alphas_cumprod = training_alphas_cumprod()[np.asarray(timesteps)]  # [S]
    previous = np.concatenate([[1.0], alphas_cumprod[:-1]])  # [S]
    return 1.0 - alphas_cumprod / previous


def _keep_schedule_in_float64(scheduler) -> None:
    """Replaces a scheduler's float32 ``betas``/``alphas``/``alphas_cumprod`` with float64 ones.

    The authors compute every schedule coefficient in float64 and apply it to float32 tensors. Stock
    diffusers stores the schedule in float32, where ``1 - alphas_cumprod`` keeps few digits near t=0
    (a 1e-4 relative error in the posterior at the first respaced steps). With float64 0-dim
    coefficients, diffusers' own step arithmetic gives float32 results as the authors' (0-dim tensors
    do not promote the float32 latents)."""
    if scheduler.config.trained_betas is None:
        raise ValueError("the scheduler was built without trained_betas; build it on the respaced betas")
    betas = torch.from_numpy(np.asarray(scheduler.config.trained_betas, dtype=np.float64))  # [S]
    scheduler.betas = betas
    scheduler.alphas = 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


class LearnedRangeDDPMScheduler(DDPMScheduler):
    """``DDPMScheduler`` whose learned-range log-variance at the last step (timestep 0) follows the
    authors: the posterior variance there is 0, so they clip it to that of timestep 1 before taking
    the log; stock diffusers clamps it to 1e-20 instead. Only the reported log-variance changes: no
    noise is added at timestep 0 in either code."""

    def _get_variance(self, t, predicted_variance=None, variance_type=None):
        kind = variance_type if variance_type is not None else self.config.variance_type
        if kind != "learned_range" or int(t) != 0 or len(self.alphas_cumprod) < 2:
            return super()._get_variance(t, predicted_variance=predicted_variance, variance_type=variance_type)
        # posterior variance of index 1: (1 - acp_0) / (1 - acp_1) * beta_1
        acp = self.alphas_cumprod
        clipped_log = torch.log((1 - acp[0]) / (1 - acp[1]) * self.betas[1])
        beta_log = torch.log(self.betas[0])
        fraction = (predicted_variance + 1) / 2
        return fraction * beta_log + (1 - fraction) * clipped_log

    def log_variance(self, timestep: int, variance_values: torch.Tensor) -> torch.Tensor:
        """Log-variance of the reverse step at a (respaced) ``timestep`` for the model's variance values
        in [-1, 1]: interpolates between the clipped posterior log-variance (-1) and log(beta) (+1)."""
        return self._get_variance(timestep, predicted_variance=variance_values, variance_type="learned_range")


@dataclass
class RespacedSampler:
    """A diffusers scheduler on a respaced LetsTalk schedule, with latents in ``[B, F, C, H, W]``.

    ``timesteps`` are the original timesteps (ascending) of the respaced indices; ``scheduler`` runs
    on the indices. Use :meth:`begin` before each new sample, then for each ``(index, timestep)`` of
    :meth:`plan`: call the model on ``scale_model_input(latents, index)`` at the original ``timestep``
    and pass its output to :meth:`step`.
    """

    name: str
    timesteps: tuple[int, ...]
    scheduler: DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler | EulerDiscreteScheduler

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def begin(self) -> list[tuple[torch.Tensor, int]]:
        """Resets the scheduler state; returns ``(index, original timestep)`` pairs in sampling order."""
        descending = list(range(self.steps - 1, -1, -1))
        if self.name == "ddim":
            # DDIM has no custom timesteps; over `steps` train steps, `steps` inference steps are the
            # indices steps-1..0 with stride 1 ("leading" spacing, no offset)
            self.scheduler.set_timesteps(self.steps)
        else:
            self.scheduler.set_timesteps(timesteps=descending)
        indices = list(self.scheduler.timesteps)
        if [int(i) for i in indices] != descending:
            raise RuntimeError(f"{type(self.scheduler).__name__} produced timesteps {indices}, expected {descending}")
        return [(index, self.timesteps[int(index)]) for index in indices]

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the starting noise in the scheduler's parametrisation."""
        return float(self.scheduler.init_noise_sigma)

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, index) -> torch.Tensor:
        """``clean`` latents diffused to respaced ``index`` with ``noise`` (same shape), in the form this
        sampler's latents take at that index: ``sqrt(acp) x0 + sqrt(1 - acp) noise`` for ddpm, ddim and
        dpmpp_2m, ``x0 + sigma noise`` (``sigma = sqrt((1 - acp) / acp)``) for euler; ``acp`` is the training
        schedule's cumulative alpha at the original timestep of ``index``."""
        timestep = self.timesteps[int(index)]
        alpha_bar = float(training_alphas_cumprod()[timestep])
        if self.name == "euler":
            return clean + math.sqrt((1.0 - alpha_bar) / alpha_bar) * noise
        return math.sqrt(alpha_bar) * clean + math.sqrt(1.0 - alpha_bar) * noise

    def scale_model_input(self, latents: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``[B, F, C, H, W]`` latents as the model should see them at ``index`` (Euler works on
        ``x0 + sigma * eps`` and divides by ``sqrt(sigma^2 + 1)``; the others pass them through)."""
        return self.scheduler.scale_model_input(latents, index)

    def step(
        self,
        model_output: torch.Tensor,
        index: torch.Tensor,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One reverse step. ``model_output [B, F, 2C, H, W]`` (noise, then variance values; a
        ``[B, F, C, H, W]`` noise-only output is accepted by all samplers but DDPM), ``latents
        [B, F, C, H, W]`` -> latents at the next (lower) index, ``[B, F, C, H, W]``. ``generator`` draws
        the DDPM noise, as diffusers does: ``torch.randn([B, C, F, H, W])`` (channels first)."""
        channels = latents.shape[2]
        if model_output.ndim != 5 or model_output.shape[0] != latents.shape[0] or model_output.shape[3:] != latents.shape[3:]:
            raise ValueError(
                f"model_output must be [B, F, 2C, H, W] for latents of shape {tuple(latents.shape)}; "
                f"got {tuple(model_output.shape)}"
            )
        if self.name == "ddpm":
            if model_output.shape[2] != 2 * channels:
                raise ValueError(
                    f"the ddpm sampler needs the learned variance: model_output must have 2C={2 * channels} "
                    f"channels, got {model_output.shape[2]}"
                )
            # diffusers splits noise and variance along dim 1: step in [B, C, F, H, W] layout
            result = self.scheduler.step(
                model_output.transpose(1, 2), index, latents.transpose(1, 2), generator=generator
            )
            return result.prev_sample.transpose(1, 2)
        if model_output.shape[2] not in (channels, 2 * channels):
            raise ValueError(f"model_output must have C or 2C channels (C={channels}); got {model_output.shape[2]}")
        noise_prediction = model_output[:, :, :channels]  # [B, F, C, H, W]
        if self.name == "ddim":
            return self.scheduler.step(noise_prediction, index, latents, eta=0.0).prev_sample
        return self.scheduler.step(noise_prediction, index, latents).prev_sample


def make_sampler(sampler: str = "ddpm", steps: int = 250, timestep_spacing: str = "auto") -> RespacedSampler:
    """A :class:`RespacedSampler` for one of :data:`SAMPLERS` with ``steps`` model evaluations.

    ``ddpm``: ancestral sampling with the learned-range variance (the authors' default, 250 steps);
    ``ddim``: DDIM with eta 0; ``dpmpp_2m``: DPM-Solver++ (2M, midpoint, first order at the last
    steps when fewer than 15); ``euler``: Euler on the probability-flow ODE. All four end at sigma 0.
    """
    check_sampler(sampler)
    timesteps = respaced_timesteps(steps, timestep_spacing, sampler)
    betas = respaced_betas(timesteps)
    common = {"num_train_timesteps": len(timesteps), "trained_betas": betas, "prediction_type": "epsilon"}
    if sampler == "ddpm":
        scheduler = LearnedRangeDDPMScheduler(
            **common, variance_type="learned_range", clip_sample=False, thresholding=False
        )
    elif sampler == "ddim":
        scheduler = DDIMScheduler(
            **common, clip_sample=False, thresholding=False, set_alpha_to_one=True, steps_offset=0,
            timestep_spacing="leading",
        )
    elif sampler == "dpmpp_2m":
        scheduler = DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
            lower_order_final=True, final_sigmas_type="zero", thresholding=False,
        )
    else:
        # with custom timesteps the spacing only decides init_noise_sigma; "leading" makes it the exact
        # sqrt(sigma_max^2 + 1) instead of the sigma_max approximation
        scheduler = EulerDiscreteScheduler(
            **common, timestep_spacing="leading", final_sigmas_type="zero", interpolation_type="linear"
        )
    if sampler in ("ddpm", "ddim"):
        _keep_schedule_in_float64(scheduler)  # the two samplers with the authors' exact numbers
    return RespacedSampler(name=sampler, timesteps=tuple(timesteps), scheduler=scheduler)

