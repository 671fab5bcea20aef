"""Speech -> per-frame audio features for LetsTalk, padded to whole clips."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch

from .encoder_base import AudioEncoder
from ..video.timing import frame_count
from .frames import as_fps, frame_windows, padded_frame_count
from .loading import MonoAudio, load_audio


@dataclass(frozen=True)
class AudioFeatures:
    """Encoder features for a speech track.

    ``features`` covers ``padded_frames`` frames (silence after the speech up to a whole number of
    clips); ``num_frames`` is the speech's own frame count, to which the video is trimmed.
    """

    features: torch.Tensor  # [F_padded, L, D]
    num_frames: int
    fps: Fraction
    source: str

    @property
    def padded_frames(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    def windows(self, radius: int = 2) -> torch.Tensor:
        """Windows of ``2 * radius + 1`` frames around each frame, clamped at the ends -> ``[F_padded, 2r+1, L, D]``."""
        return frame_windows(self.features, radius)


def speech_frame_count(speech: MonoAudio, fps) -> int:
    """The video frames ``speech`` spans at ``fps`` (``ceil(seconds * fps)``); speech shorter than one
    frame is refused, naming its source."""
    fps = as_fps(fps)
    if speech.num_samples * fps < speech.sample_rate:
        raise ValueError(
            f"{speech.source} lasts {speech.seconds * 1000:.1f} ms, shorter than one video frame at {float(fps):g} fps "
            f"({1000 / float(fps):.1f} ms); give at least one frame of speech"
        )
    return frame_count(speech.num_samples, speech.sample_rate, fps)


def encode_audio(
    audio,
    encoder: AudioEncoder,
    *,
    fps=25,
    frames_per_clip: int | None = None,
    sample_rate: int | None = None,
    loudness_lufs: float | None = None,
) -> AudioFeatures:
    """Load ``audio`` (ComfyUI AUDIO dict, file path, array with ``sample_rate``) and encode it.

    The speech spans ``ceil(seconds * fps)`` frames; with ``frames_per_clip`` the features are padded
    with silence (encoded as silence, not repeated) to a multiple of it.
    """
    speech = audio if isinstance(audio, MonoAudio) else load_audio(
        audio, sample_rate, target_sample_rate=encoder.sample_rate, loudness_lufs=loudness_lufs
    )
    fps = as_fps(fps)
    num_frames = speech_frame_count(speech, fps)
    features = encoder.encode(speech, fps, padded_frame_count(num_frames, frames_per_clip))  # [F_padded, L, D]
    return AudioFeatures(features=features, num_frames=num_frames, fps=fps, source=speech.source)
