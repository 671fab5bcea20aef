"""Sound input, read one way: every audio the package accepts becomes ``[C, T]`` float32 at its own rate.

:func:`read_sound` is the one normaliser of audio input (the speech a model hears, the track an mp4
carries, the audio of a training video, the sound the synthetic animator follows), and
:func:`mix_and_resample` the one way to turn it into mono at another rate. Files are read with
soundfile (wav, flac, ogg, aiff) and otherwise with the ffmpeg binary of imageio-ffmpeg (mp3, m4a/aac,
opus, and the audio track of mp4/mov/mkv/webm/flv/mpg videos).

Low layer: imports only :mod:`letstalk_core.files` from the package.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import ffmpeg_exe

__all__ = ["ACCEPTED_INPUTS", "Sound", "decode_with_ffmpeg", "describe_source", "mix_and_resample", "read_sound"]

# Extensions soundfile reads; anything else (and a mislabelled file) goes to ffmpeg.
SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".aiff", ".aif"}
FFMPEG_EXTENSIONS = {".mp3", ".m4a", ".aac", ".opus", ".wma", ".mp4", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg"}
MAX_CHANNELS = 8
MIN_RATE, MAX_RATE = 1_000, 384_000
ACCEPTED_FILES = f"an audio or video file ({', '.join(sorted(SOUNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS))})"
ACCEPTED_INPUTS = (
    "a ComfyUI AUDIO dict {'waveform': tensor [B, C, T], 'sample_rate': int}, a path to "
    f"{ACCEPTED_FILES}, or a numpy array / torch tensor "
    f"[T], [C, T] or [T, C] (at most {MAX_CHANNELS} channels; float in -1..1, or int16/int32 PCM) together "
    f"with its sample rate ({MIN_RATE}..{MAX_RATE} Hz)"
)


@dataclass(frozen=True)
class Sound:
    """Audio as given: ``samples [C, T]`` float32 at ``sample_rate``; ``source`` names it in messages."""

    samples: torch.Tensor
    sample_rate: int
    source: str


def describe_source(audio, name: str = "audio") -> str:
    """How messages name an input: the file, the ComfyUI input, or ``name`` and the array's type."""
    if isinstance(audio, (str, os.PathLike)):
        return f"{name} file '{os.fspath(audio)}'"
    if isinstance(audio, dict):
        return f"ComfyUI AUDIO input ({name})" if name != "audio" else "ComfyUI AUDIO input"
    return f"{name} {type(audio).__name__}"


def read_sound(audio, sample_rate: int | None = None, *, name: str = "audio") -> Sound:
    """Any accepted audio input -> :class:`Sound` (``[C, T]`` float32, its own rate), checked once.

    ``audio``: a ComfyUI AUDIO dict, a file path (its rate comes from the file: ``sample_rate`` must be
    None), an ``(array, sample_rate)`` tuple, or an array/tensor with ``sample_rate``. A 2-D array's
    channel axis is the shorter one, of at most 8. Refused with a message naming ``name``: an unknown
    type or format, a missing or bad rate, empty audio, NaN/inf samples, a batch of several clips.
    """
    source = describe_source(audio, name)
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError(f"{source}: a file's sample rate comes from the file; pass sample_rate=None")
        samples, rate = _read_file(Path(audio), source)
    elif isinstance(audio, dict):
        samples, rate = _from_comfy_dict(audio, source)
    elif isinstance(audio, tuple) and len(audio) == 2 and sample_rate is None:
        source = describe_source(audio[0], name)
        samples, rate = _channels_first(audio[0], source), _check_rate(audio[1], source)
    elif isinstance(audio, (np.ndarray, torch.Tensor)):
        if sample_rate is None:
            raise ValueError(f"{source} was given without its sample_rate; pass sample_rate=... (e.g. 16000)")
        samples, rate = _channels_first(audio, source), _check_rate(sample_rate, source)
    else:
        raise TypeError(f"{name}: unsupported input of type {type(audio).__name__}; accepted: {ACCEPTED_INPUTS}")
    samples = samples.detach().to(device="cpu", dtype=torch.float32).contiguous()
    _check_samples(samples, rate, source)
    return Sound(samples, rate, source)


def mix_and_resample(samples: torch.Tensor, rate: int, target_rate: int | None = None, *, mono: bool = True
                     ) -> tuple[torch.Tensor, int]:
    """``[C, T]`` -> ``([1 or C, T'], rate')``: the mean of the channels (``mono``), then torchaudio's
    band-limited sinc resampler to ``target_rate`` (None: keep the rate). The one down-mix and
    resampler of the package, so that training data and inference hear the same features."""
    import torchaudio.functional as AF

    if mono:
        samples = samples.mean(dim=0, keepdim=True)
    if target_rate is not None and int(target_rate) != rate:
        samples, rate = AF.resample(samples, rate, int(target_rate)), int(target_rate)
    return samples, rate


def decode_with_ffmpeg(path: Path, source: str | None = None) -> tuple[torch.Tensor, int]:
    """Decode the first audio track with ffmpeg to float WAV on a pipe -> ``(samples [C, T], rate)``,
    keeping rate and channels (down-mixing and resampling are :func:`mix_and_resample`'s)."""
    source = source or f"audio file '{path}'"
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
               "-map_metadata", "-1", "-fflags", "+bitexact", "-acodec", "pcm_f32le", "-f", "wav", "-"]
    decoded = subprocess.run(command, capture_output=True)
    message = decoded.stderr.decode(errors="replace").strip()
    if decoded.returncode != 0 or not decoded.stdout:
        if "matches no streams" in message:
            raise ValueError(f"{source} has no audio track; give {ACCEPTED_FILES} with speech")
        raise ValueError(
            f"{source} is not a readable audio or video file (unknown format): {message[-300:]}; give {ACCEPTED_FILES}"
        )
    return _parse_float_wav(decoded.stdout, source)


# ---------------------------------------------------------------------------------------------- checks
def _check_rate(sample_rate, source: str) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise ValueError(f"{source}: sample_rate must be an integer number of Hz (e.g. 16000), got {sample_rate!r}")
    if not MIN_RATE <= int(sample_rate) <= MAX_RATE:
        raise ValueError(f"{source}: sample_rate {sample_rate} is outside {MIN_RATE}..{MAX_RATE} Hz")
    return int(sample_rate)


def _channels_first(array, source: str) -> torch.Tensor:
    """[T], [C, T], [T, C] or [1, C, T] -> [C, T] float32; int16/int32 PCM scaled to -1..1."""
    tensor = array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (torch.int16, torch.int32)):
        raise ValueError(f"{source}: samples have dtype {tensor.dtype}; accepted: float samples in -1..1 "
                         "or int16/int32 PCM")
    if tensor.dtype == torch.int16:
        tensor = tensor.to(torch.float32) / 32768.0
    elif tensor.dtype == torch.int32:
        tensor = tensor.to(torch.float32) / 2147483648.0
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() == 1:
        return tensor[None]  # [1, T]
    if tensor.dim() == 2:
        rows, cols = tensor.shape
        if rows <= MAX_CHANNELS and cols > rows:
            return tensor  # [C, T]
        if cols <= MAX_CHANNELS and rows > cols:
            return tensor.T  # [T, C] -> [C, T]
        raise ValueError(f"{source} has shape {tuple(tensor.shape)}; a 2-D audio array is [channels, samples] or "
                         f"[samples, channels] with at most {MAX_CHANNELS} channels, fewer than its samples")
    raise ValueError(f"{source} has shape {tuple(tensor.shape)}; accepted: [T], [C, T], [T, C] or [1, C, T]")


def _from_comfy_dict(audio: dict, source: str) -> tuple[torch.Tensor, int]:
    missing = {"waveform", "sample_rate"} - set(audio)
    if missing:
        raise ValueError(f"{source} lacks {sorted(missing)}; expected {{'waveform': [B, C, T], 'sample_rate': int}}")
    waveform = audio["waveform"]
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 3:
        shape = tuple(waveform.shape) if hasattr(waveform, "shape") else type(waveform).__name__
        raise ValueError(f"{source}: 'waveform' must be a tensor [B, C, T], got {shape}")
    if waveform.shape[0] != 1:
        raise ValueError(
            f"{source} holds a batch of {waveform.shape[0]} clips; LetsTalk takes one speech track, pass a batch of 1"
        )
    return _channels_first(waveform[0], source), _check_rate(audio["sample_rate"], source)


def _check_samples(samples: torch.Tensor, sample_rate: int, source: str) -> None:
    if samples.shape[-1] == 0:
        raise ValueError(f"{source} is empty (0 samples); give at least one video frame of speech")
    finite = torch.isfinite(samples)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = int((~finite).flatten().nonzero()[0]) % samples.shape[-1]
        raise ValueError(
            f"{source} has {bad} NaN/inf samples of {samples.numel()} (first at {first / sample_rate:.3f} s); "
            "audio must be finite (silence is fine)"
        )


# ----------------------------------------------------------------------------------------------- files
def _read_file(path: Path, source: str) -> tuple[torch.Tensor, int]:
    if not path.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if path.is_dir():
        raise ValueError(f"{source} is a folder; give an audio or video file")
    if path.suffix.lower() in SOUNDFILE_EXTENSIONS:
        import soundfile

        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [T, C]
            return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)
        except (soundfile.LibsndfileError, RuntimeError):
            pass  # a mislabelled file: let ffmpeg try
    return decode_with_ffmpeg(path, source)


def _parse_float_wav(data: bytes, source: str) -> tuple[torch.Tensor, int]:
    """RIFF/WAVE bytes with float32 samples (as ffmpeg streams them, sizes possibly unset) -> [C, T], rate."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{source}: ffmpeg did not return WAV data")
    position, channels, rate = 12, None, None
    while position + 8 <= len(data):
        chunk, size = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(data[position + 10 : position + 12], "little")
            rate = int.from_bytes(data[position + 12 : position + 16], "little")
        elif chunk == b"data":
            if not channels or not rate:
                break
            payload = data[position + 8 :]
            usable = len(payload) - len(payload) % (4 * channels)
            samples = np.frombuffer(payload[:usable], dtype="<f4").reshape(-1, channels).T.copy()  # [C, T]
            return torch.from_numpy(samples), rate
        position += 8 + size + (size & 1)
    raise ValueError(f"{source}: could not find the audio format and samples in ffmpeg's output")
