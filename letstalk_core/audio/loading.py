"""Speech input: ComfyUI AUDIO dicts, audio/video files and arrays -> mono float32 at 16 kHz.

What is accepted and how it is read is :func:`letstalk_core.sound.read_sound` (the package's one audio
normaliser); this module mixes it to mono at the encoders' rate and keeps the track as given for the
made video's sound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

from ..sound import ACCEPTED_INPUTS, describe_source as _describe, mix_and_resample, read_sound

__all__ = ["ACCEPTED_INPUTS", "MonoAudio", "TARGET_SAMPLE_RATE", "describe_source", "load_audio", "normalize_loudness"]

TARGET_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class MonoAudio:
    """Mono speech ready for an audio encoder, and the track it came from (for the video's sound)."""

    samples: torch.Tensor  # [T] float32
    sample_rate: int
    source: str  # what the audio came from, for messages
    track: torch.Tensor | None = None  # [C, T'] float32: the input at its own rate and channels
    track_rate: int | None = None

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def original(self) -> tuple[torch.Tensor, int]:
        """The track as the user gave it, ``([C, T], rate)``: what a made video should sound like.
        The mono samples themselves when no other track was kept."""
        if self.track is None:
            return self.samples[None], self.sample_rate
        return self.track, int(self.track_rate)


def describe_source(audio) -> str:
    return audio.source if isinstance(audio, MonoAudio) else _describe(audio)


def load_audio(
    audio,
    sample_rate: int | None = None,
    *,
    target_sample_rate: int = TARGET_SAMPLE_RATE,
    loudness_lufs: float | None = None,
) -> MonoAudio:
    """Any accepted speech input -> :class:`MonoAudio` at ``target_sample_rate`` (16 kHz).

    ``audio``: a ComfyUI AUDIO dict, a file path, a ``(array, sample_rate)`` tuple, or an array/tensor
    with ``sample_rate`` given. ``loudness_lufs``: if set (e.g. -23.0), the speech is scaled to that
    integrated loudness (ITU-R BS.1770, ``torchaudio.functional.loudness``) and then, if needed, scaled
    down so no sample exceeds full scale. Silence is valid and returned as zeros.
    """
    if isinstance(audio, MonoAudio):
        track, track_rate = audio.original()
        source, mono, rate = audio.source, audio.samples[None], audio.sample_rate
    else:
        sound = read_sound(audio, sample_rate)
        source, track, track_rate = sound.source, sound.samples, sound.sample_rate  # kept as given
        mono, rate = sound.samples, sound.sample_rate
    mono, _ = mix_and_resample(mono, rate, target_sample_rate)  # [1, T]
    mono = mono[0]
    if loudness_lufs is not None:
        mono = normalize_loudness(mono, target_sample_rate, loudness_lufs)
    return MonoAudio(samples=mono.contiguous(), sample_rate=target_sample_rate, source=source, track=track,
                     track_rate=track_rate)


def normalize_loudness(samples: torch.Tensor, sample_rate: int, target_lufs: float = -23.0) -> torch.Tensor:
    """Scale mono ``samples [T]`` to ``target_lufs`` integrated loudness, never past full scale.

    Silence and clips too short to measure (under 0.4 s) are returned unchanged.
    """
    if not math.isfinite(target_lufs):
        raise ValueError(f"loudness target must be a finite LUFS value such as -23.0, got {target_lufs!r}")
    if samples.numel() < int(0.4 * sample_rate):
        return samples
    measured = float(AF.loudness(samples[None].to(torch.float32), sample_rate))
    if not math.isfinite(measured):
        return samples
    scaled = samples * (10.0 ** ((target_lufs - measured) / 20.0))
    peak = float(scaled.abs().max())
    return scaled / peak if peak > 1.0 else scaled
