"""Multimodal classifier-free guidance with separate audio and portrait scales.

With ``e_full`` (audio and portrait), ``e_portrait`` (portrait only, null audio) and ``e_none``
(neither), the guided noise prediction is

    e = e_none + portrait_scale * (e_portrait - e_none) + audio_scale * (e_full - e_portrait)
      = (1 - portrait_scale) * e_none + (portrait_scale - audio_scale) * e_portrait + audio_scale * e_full

The null audio condition is the audio projection of all-zero audio windows (not zero tokens: the
projection ends in a LayerNorm with bias), the null portrait a zero portrait latent. Only the passes
with a non-zero weight are run, together in one model call along the batch dimension; with both scales
at 1 that is the single full-condition pass. The variance channels always come from the full pass.

Guidance only means something for a checkpoint trained with condition dropout; the authors' published
training never drops a condition, so their checkpoints do not support it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

@dataclass(frozen=True)
class GuidanceScales:
    """Audio and portrait guidance scales: finite and >= 0; 1 and 1 means no guidance."""

    audio_scale: float = 1.0
    portrait_scale: float = 1.0

    def __post_init__(self):
        for name in ("audio_scale", "portrait_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number >= 0 (1 = no guidance), got {value!r}")
            if math.isnan(value) or math.isinf(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (1 = no guidance), got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def is_guided(self) -> bool:
        return self.audio_scale != 1.0 or self.portrait_scale != 1.0

    def pass_weights(self) -> dict[str, float]:
        """Weight of each pass that must run, in the order full (audio and portrait), portrait (null
        audio), none (both null); the full pass always runs (it gives the variance) even at weight 0."""
        weights = {
            "full": self.audio_scale,
            "portrait": self.portrait_scale - self.audio_scale,
            "none": 1.0 - self.portrait_scale,
        }
        return {name: weight for name, weight in weights.items() if name == "full" or weight != 0.0}

    def check_supported(self, guidance_supported: bool) -> None:
        """Raises ValueError when guidance is asked for but the checkpoint was not trained for it."""
        if self.is_guided and not guidance_supported:
            raise ValueError(
                f"audio_scale={self.audio_scale:g} and portrait_scale={self.portrait_scale:g} ask for guidance, "
                "but this checkpoint does not support guidance (it was not trained with audio/portrait "
                "condition dropout, like the authors' published training); set both scales to 1"
            )


def guided_model_output(
    model: Callable[..., torch.Tensor],
    latents: torch.Tensor,
    timestep: torch.Tensor,
    portrait_latent: torch.Tensor,
    audio_tokens: torch.Tensor,
    memory_latents: torch.Tensor | None,
    scales: GuidanceScales,
    null_audio_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Runs the model for the passes ``scales`` needs in one batched call and combines them.

    ``latents [B, F, C, H, W]``, ``timestep [B]`` (original 0..999), ``portrait_latent [B, C, H, W]``,
    ``audio_tokens [B, F, M, D]``, ``memory_latents [B, K, C, H, W]`` or None, ``null_audio_tokens``
    broadcastable to ``audio_tokens`` (needed when guided). Returns float32 ``[B, F, 2C, H, W]``: the
    guided noise prediction, then the full-condition variance values.
    """
    weights = scales.pass_weights()
    batch = latents.shape[0]
    channels = latents.shape[2]
    if len(weights) == 1:
        output = model(latents, timestep, portrait_latent, audio_tokens, memory_latents=memory_latents)
        return _check_output(output, latents).float()

    if null_audio_tokens is None:
        raise ValueError(
            "guidance needs null_audio_tokens (the audio projection of all-zero audio windows); pass "
            "audio windows with an audio projection, or null_audio_tokens with the audio tokens"
        )
    try:
        null_audio = torch.broadcast_to(null_audio_tokens.to(audio_tokens), audio_tokens.shape)  # [B, F, M, D]
    except RuntimeError:
        raise ValueError(
            f"null_audio_tokens of shape {tuple(null_audio_tokens.shape)} do not broadcast to the audio "
            f"tokens' shape {tuple(audio_tokens.shape)}; give [M, D], [1, 1, M, D] or [B, F, M, D]"
        ) from None
    null_portrait = torch.zeros_like(portrait_latent)  # [B, C, H, W]
    conditions = {
        "full": (portrait_latent, audio_tokens),
        "portrait": (portrait_latent, null_audio),
        "none": (null_portrait, null_audio),
    }
    names = list(weights)  # "full" first
    passes = len(names)
    output = model(
        latents.repeat(passes, 1, 1, 1, 1),  # [P*B, F, C, H, W]
        timestep.repeat(passes),  # [P*B]
        torch.cat([conditions[name][0] for name in names]),  # [P*B, C, H, W]
        torch.cat([conditions[name][1] for name in names]),  # [P*B, F, M, D]
        memory_latents=None if memory_latents is None else memory_latents.repeat(passes, 1, 1, 1, 1),
    )
    output = _check_output(output, latents.repeat(passes, 1, 1, 1, 1)).float()
    per_pass = output.split(batch)  # P x [B, F, 2C, H, W]
    noise = sum(weights[name] * per_pass[i][:, :, :channels] for i, name in enumerate(names))  # [B, F, C, H, W]
    return torch.cat([noise, per_pass[0][:, :, channels:]], dim=2)  # [B, F, 2C, H, W]


def _check_output(output, latents: torch.Tensor) -> torch.Tensor:
    batch, frames, channels, height, width = latents.shape
    if not torch.is_tensor(output) or tuple(output.shape) != (batch, frames, 2 * channels, height, width):
        got = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise ValueError(
            f"the model must return [B, F, 2C, H, W] = {(batch, frames, 2 * channels, height, width)} (noise, then "
            f"learned-range variance values); got {got}"
        )
    return output
