"""Checking the audio handed to the mp4 writer: an array with its rate, or a file path."""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from .reader import decode_audio

__all__ = ["AudioLike", "load_audio_input"]

AudioLike = Union[np.ndarray, "torch.Tensor", str, os.PathLike]  # noqa: F821

_MAX_CHANNELS = 8


def load_audio_input(audio: AudioLike, sample_rate: Optional[int], *, name: str = "audio") -> tuple[np.ndarray, int]:
    """Return ``(samples [S, C] float32, sample_rate)`` for an array or an audio file.

    Arrays may be 1-D ``[S]`` or 2-D ``[C, S]`` / ``[S, C]`` (the axis of length <= 8 is the
    channel axis), numpy or torch, float (-1..1). Paths are decoded with ffmpeg at their
    own sample rate; ``sample_rate`` must then be None.
    """
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError(
                f"{name} is a file path ({str(audio)!r}); its sample rate comes from the file, so pass sample_rate=None"
            )
        return decode_audio(audio)
    if type(audio).__module__.split(".")[0] == "torch":
        audio = audio.detach().float().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array, a torch tensor or an audio file path, got {type(audio).__name__}"
        )
    if sample_rate is None or isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ValueError(f"{name} is an array, so sample_rate must be given as an int (e.g. 16000), got {sample_rate!r}")
    if not 1000 <= int(sample_rate) <= 384000:
        raise ValueError(f"sample_rate {sample_rate} for {name} is outside 1000..384000 Hz")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"{name} has dtype {audio.dtype}; accepted: a float array with samples in -1..1")
    if audio.ndim == 1:
        samples = audio[:, None]  # [S, 1]
    elif audio.ndim == 2:
        rows, cols = audio.shape
        if rows <= _MAX_CHANNELS and cols > rows:
            samples = audio.T  # [C, S] -> [S, C]
        elif cols <= _MAX_CHANNELS and rows > cols:
            samples = audio  # [S, C]
        else:
            raise ValueError(
                f"{name} has shape {audio.shape}; a 2-D audio array must be [channels, samples] or "
                f"[samples, channels] with at most {_MAX_CHANNELS} channels"
            )
    else:
        raise ValueError(f"{name} has shape {audio.shape}; accepted: [samples] or [channels, samples]")
    if samples.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if not np.isfinite(samples).all():
        raise ValueError(f"{name} contains NaN or inf samples")
    return np.ascontiguousarray(samples, dtype=np.float32), int(sample_rate)
