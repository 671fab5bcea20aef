"""The authors' conditioning recipe, plus condition dropout for guidance.

* Reference (portrait) frame: pixel noise of standard deviation ``sigma = exp(N(-3, 0.5))`` (one sigma
  per sample) before it is encoded.
* Memory frames (noise-regularised memory bank): the same kind of pixel noise, encoding, then the
  latents are diffused to a random ``t`` in ``[0, 50)`` and about 25% of the spatial positions are
  zeroed (one mask per sample, shared by all memory frames and channels).
* Condition dropout: per sample, with the configured rates, the audio only, the portrait only, or both
  are replaced by their null values (zero audio windows; a zero portrait latent), so that
  classifier-free guidance has the unconditional predictions it needs.

Every random draw takes an explicit ``torch.Generator`` (on the CPU), so a training step's randomness
depends only on its seed, not on the device or on what ran before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import DiffusionSchedule

DROP_NONE, DROP_AUDIO, DROP_PORTRAIT, DROP_BOTH = 0, 1, 2, 3


def pixel_noise_sigmas(batch: int, generator: torch.Generator, log_mean: float = -3.0, log_std: float = 0.5) -> torch.Tensor:
    """Per-sample pixel-noise standard deviations ``exp(N(log_mean, log_std))``, ``[B]``."""
    return torch.exp(log_mean + log_std * torch.randn(batch, generator=generator))  # [B]


def add_pixel_noise(pixels: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``pixels [B, ...]`` (on any device) plus Gaussian noise of per-sample ``sigmas [B]``."""
    noise = torch.randn(pixels.shape, generator=generator).to(pixels.device, pixels.dtype)
    return pixels + sigmas.to(pixels.device, pixels.dtype).view(-1, *([1] * (pixels.dim() - 1))) * noise


def memory_position_mask(batch: int, height: int, width: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``[B, 1, 1, H, W]`` float mask, 0 at about ``fraction`` of the positions of each sample, else 1."""
    return (torch.rand(batch, 1, 1, height, width, generator=generator) >= fraction).float()


@dataclass
class CorruptedMemory:
    latents: torch.Tensor  # [B, K, C, H, W]
    timesteps: torch.Tensor  # [B], the diffusion step each sample was taken to
    mask: torch.Tensor  # [B, 1, 1, H, W], 0 where positions were zeroed


def corrupt_memory_latents(
    memory_latents: torch.Tensor,
    schedule: DiffusionSchedule,
    generator: torch.Generator,
    *,
    max_timestep: int = 50,
    mask_fraction: float = 0.25,
    drop: float = 0.0,
) -> CorruptedMemory:
    """Diffuse clean memory latents ``[B, K, C, H, W]`` to ``t ~ U{0..max_timestep-1}`` and zero about
    ``mask_fraction`` of their spatial positions (one mask per sample); with probability ``drop`` a
    sample's whole memory is zeroed (beyond the authors' recipe; 0 draws no extra random numbers)."""
    if memory_latents.dim() != 5:
        raise ValueError(f"memory_latents must be [B, K, C, H, W], got {tuple(memory_latents.shape)}")
    batch, _, _, height, width = memory_latents.shape
    timesteps = torch.randint(0, max_timestep, (batch,), generator=generator)  # [B]
    noise = torch.randn(memory_latents.shape, generator=generator).to(memory_latents)  # [B, K, C, H, W]
    mask = memory_position_mask(batch, height, width, mask_fraction, generator)  # [B, 1, 1, H, W]
    if drop > 0:
        dropped = torch.rand(batch, generator=generator) < drop  # [B]
        mask = mask * (~dropped).to(mask.dtype)[:, None, None, None, None]
    noisy = schedule.q_sample(memory_latents, timesteps.to(memory_latents.device), noise)
    return CorruptedMemory(latents=noisy * mask.to(noisy), timesteps=timesteps, mask=mask)


def draw_condition_dropout(batch: int, generator: torch.Generator, *, audio: float, portrait: float, both: float) -> torch.Tensor:
    """Per sample one of DROP_NONE, DROP_AUDIO, DROP_PORTRAIT, DROP_BOTH with the given rates, ``[B]`` long."""
    if min(audio, portrait, both) < 0 or audio + portrait + both > 1.0 + 1e-9:
        raise ValueError(f"dropout rates must be >= 0 and add up to at most 1; got audio={audio}, "
                         f"portrait={portrait}, both={both}")
    u = torch.rand(batch, generator=generator)  # [B]
    choice = torch.full((batch,), DROP_NONE, dtype=torch.long)
    choice[u < audio + portrait + both] = DROP_BOTH
    choice[u < audio + portrait] = DROP_PORTRAIT
    choice[u < audio] = DROP_AUDIO
    return choice


def apply_condition_dropout(
    choice: torch.Tensor, audio_windows: torch.Tensor, portrait_latents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Null conditions where ``choice`` says: zero audio windows ``[B, F, W, L, D]`` for DROP_AUDIO/BOTH,
    a zero portrait latent ``[B, C, H, W]`` for DROP_PORTRAIT/BOTH."""
    choice = choice.to(audio_windows.device)
    keep_audio = ~((choice == DROP_AUDIO) | (choice == DROP_BOTH))  # [B]
    keep_portrait = ~((choice == DROP_PORTRAIT) | (choice == DROP_BOTH))  # [B]
    audio_windows = audio_windows * keep_audio.to(audio_windows.dtype).view(-1, *([1] * (audio_windows.dim() - 1)))
    portrait_latents = portrait_latents * keep_portrait.to(portrait_latents).view(
        -1, *([1] * (portrait_latents.dim() - 1)))
    return audio_windows, portrait_latents


def sample_generator(seed: int, position: int) -> torch.Generator:
    """A CPU generator for the training sample at ``position`` of the data order: every random draw of
    that sample (clip start, noise, timestep, dropout...) comes from it, whichever process trains it."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + position * 2_654_435_761 + 97) % (2**63 - 1))
    return generator


def step_generator(seed: int, step: int, process_index: int = 0, stream: int = 0) -> torch.Generator:
    """A CPU generator for one (step, process, stream), independent of everything that ran before."""
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + step * 7919 + process_index * 104_729 + stream * 15_485_863) % (2**63 - 1))
    return generator

