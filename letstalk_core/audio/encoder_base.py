"""What every audio encoder offers: ``encode`` -> ``[F, L, D]`` and its layer count and width."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..video.timing import frame_count
from .frames import as_fps, samples_for_frames
from .loading import MonoAudio


class AudioEncoder(ABC):
    """Turns 16 kHz mono speech into per-video-frame features ``[F, L, D]``.

    ``num_layers`` (L) and ``feature_dim`` (D) say what a checkpoint's audio projection must accept.
    """

    kind: str = ""
    sample_rate: int = 16_000

    def __init__(self, source: str):
        self.source = source
        # kept here by an application that moves the weights between devices (the ComfyUI nodes: the
        # ModelPatcher they wrap around them), so it lives and dies with the encoder
        self.device_manager = None

    @property
    @abstractmethod
    def num_layers(self) -> int: ...

    @property
    @abstractmethod
    def feature_dim(self) -> int: ...

    def check_compatible(self, num_layers: int, feature_dim: int, expected_by: str = "the LetsTalk checkpoint") -> None:
        """Raise ValueError naming both sides when ``expected_by`` wants other layers/width than this encoder gives."""
        if (int(num_layers), int(feature_dim)) != (self.num_layers, self.feature_dim):
            raise ValueError(
                f"Audio encoder {self.source} ({self.kind}) gives {self.num_layers} layers x {self.feature_dim} "
                f"features per frame, but {expected_by} expects {num_layers} layers x {feature_dim} features. "
                "Use the audio encoder the checkpoint was trained with (official LetsTalk: wav2vec2-base-960h, "
                "12 x 768)."
            )

    @property
    def weights(self) -> torch.nn.Module | None:
        """The network whose weights the encoder runs (for whoever moves models between devices, such as
        ComfyUI's model management); None for a weightless encoder (the log-mel filterbank)."""
        return None

    def encode(self, audio: MonoAudio, fps=25, num_frames: int | None = None) -> torch.Tensor:
        """Features ``[num_frames, L, D]`` (float32, CPU) for ``audio``.

        ``num_frames`` defaults to ``ceil(seconds * fps)``; a larger value appends silence so that the
        extra frames are encoded as a silent face (padding to whole clips).
        """
        if audio.sample_rate != self.sample_rate:
            raise ValueError(
                f"{audio.source} is at {audio.sample_rate} Hz but {self.kind} expects {self.sample_rate} Hz; "
                "load it with letstalk_core.audio.load_audio"
            )
        fps = as_fps(fps)
        true_frames = frame_count(audio.num_samples, audio.sample_rate, fps)
        if true_frames < 1:
            raise ValueError(f"{audio.source} is empty; give at least one video frame of speech")
        if num_frames is None:
            num_frames = true_frames
        if num_frames < true_frames:
            raise ValueError(
                f"num_frames={num_frames} is fewer than the {true_frames} frames {audio.source} spans at {fps} fps; "
                "trim the audio instead"
            )
        pad_samples = samples_for_frames(num_frames - true_frames, audio.sample_rate, fps)
        with torch.inference_mode():
            features = self._encode(audio.samples.to(torch.float32), pad_samples, fps, num_frames)
        return features

    @abstractmethod
    def _encode(self, samples: torch.Tensor, pad_samples: int, fps, num_frames: int) -> torch.Tensor:
        """``samples [T]`` of true audio, ``pad_samples`` of silence to append -> ``[num_frames, L, D]``."""
