"""Which conditions does a model use? A probe for training runs.

A model can fit the training loss while ignoring a condition: demo runs copied identity from the
memory frames and never looked at the portrait, then drifted at inference. The probe noises a batch of
clean clips to a timestep, predicts x0 from the model's epsilon, and compares the x0 error with each
sample's own conditions against the error with one condition taken from another sample of the batch
(rolled by one). A ratio near 1 means the model ignores that condition.
"""

from __future__ import annotations

from typing import Optional

import torch

from .losses import DiffusionSchedule

PROBE_TIMESTEP = 200  # noisy enough that the conditions matter, clean enough that x0 is recoverable
# the timesteps a training run logs the probe at: 200, and 500, where samplers settle the mouth's opening
# (an 8000-step demo run used the audio 10% at t=500 and 3% at t=850, against 16% at t=200)
PROBE_TIMESTEPS = (PROBE_TIMESTEP, 500)
# clips a training run probes (in batches of its batch size): with one batch of 4 clips the audio-swap
# ratio over the mouth moved by +-3% from batch to batch, as much as the effects it is meant to show
PROBE_CLIPS = 16


def conditioning_probe(
    model,
    audio_projection,
    schedule: DiffusionSchedule,
    latents: torch.Tensor,
    portrait_latents: torch.Tensor,
    audio_windows: torch.Tensor,
    memory_latents: Optional[torch.Tensor] = None,
    *,
    timestep: int = PROBE_TIMESTEP,
    mouth_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> dict[str, float]:
    """Mean absolute x0 error with the own conditions and with each one swapped.

    ``latents [B, F, C, h, w]`` clean clips (B >= 2), ``portrait_latents [B, C, h, w]``,
    ``audio_windows [B, F, W, L, D]``, ``memory_latents [B, K, C, h, w]`` or None; ``mouth_mask``
    (broadcastable to the latents, 1 over the mouth) adds the audio-swap error over the mouth only.
    Returns ``own``, ``portrait_swapped``, ``memory_swapped`` (when there is memory), ``audio_swapped``,
    ``audio_token_variation`` (clips of 2+ frames: the audio tokens' standard deviation over frames,
    averaged, over their overall one) and, with a mask, ``own_mouth`` / ``audio_swapped_mouth``.
    """
    if latents.dim() != 5 or latents.shape[0] < 2:
        raise ValueError(f"the probe needs clean latents [B, F, C, h, w] with B >= 2 (it swaps conditions "
                         f"between samples), got {tuple(latents.shape)}")
    if not 0 <= int(timestep) < schedule.num_timesteps:
        raise ValueError(f"timestep must be in 0..{schedule.num_timesteps - 1}, got {timestep}")
    batch = latents.shape[0]
    steps = torch.full((batch,), int(timestep), dtype=torch.long, device=latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    noisy = schedule.q_sample(latents, steps, noise)
    abar = float(schedule.alphas_cumprod[int(timestep)])
    channels = latents.shape[2]

    def x0_error(portrait, windows, memory, mask=None) -> float:
        eps = model(noisy, steps, portrait, audio_projection(windows), memory)[:, :, :channels].float()
        error = ((noisy.float() - (1.0 - abar) ** 0.5 * eps) / abar ** 0.5 - latents.float()).abs()
        if mask is None:
            return float(error.mean())
        mask = mask.to(error).expand_as(error)
        return float((error * mask).sum() / mask.sum().clamp_min(1.0))

    def swap(x: torch.Tensor) -> torch.Tensor:
        return x.roll(1, dims=0)

    with torch.no_grad():
        result = {
            "own": x0_error(portrait_latents, audio_windows, memory_latents),
            "portrait_swapped": x0_error(swap(portrait_latents), audio_windows, memory_latents),
            "audio_swapped": x0_error(portrait_latents, swap(audio_windows), memory_latents),
        }
        if memory_latents is not None and memory_latents.shape[1] > 0:
            result["memory_swapped"] = x0_error(portrait_latents, audio_windows, swap(memory_latents))
        # how much the audio tokens change from frame to frame, as a fraction of their spread: near 0,
        # the projection has flattened the speech away (the demo runs fell from 0.55 at init to 0.03)
        tokens = audio_projection(audio_windows).float()  # [B, F, M, D]
        if tokens.shape[1] > 1:
            result["audio_token_variation"] = float(tokens.std(dim=1).mean() / tokens.std().clamp_min(1e-12))
        if mouth_mask is not None:
            result["own_mouth"] = x0_error(portrait_latents, audio_windows, memory_latents, mouth_mask)
            result["audio_swapped_mouth"] = x0_error(portrait_latents, swap(audio_windows), memory_latents, mouth_mask)
    return result


def describe_probe(result: dict[str, float], timestep: int) -> str:
    """One log line: the own error and each swap as a ratio to it."""
    own = result["own"]
    parts = [f"x0 L1 at t={timestep}: own {own:.4f}"]
    for name in ("portrait", "memory", "audio"):
        key = f"{name}_swapped"
        if key in result:
            parts.append(f"{name} swapped x{result[key] / own:.3f}")
    if "own_mouth" in result:
        parts.append(f"audio swapped over the mouth x{result['audio_swapped_mouth'] / result['own_mouth']:.3f}")
    if "audio_token_variation" in result:
        parts.append(f"audio tokens vary over frames by {result['audio_token_variation']:.3f} of their spread")
    return ", ".join(parts) + " (x1.000: that condition is ignored)"
